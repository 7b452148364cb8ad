"""A Debian target's base image, with no VM booted to make it: mmdebstrap installs the target's
packages and the scenario's for that target into a directory (an essential hook first keeps its initramfs to
the VM's root drivers, templates/images/debian-initramfs.sh.j2), a customize hook prepares it to boot
(templates/images/debian-rootfs.sh.j2: hostname, fstab, network, sshd, the guest agent's list of
key files), mkfs.ext4 -d turns it into a filesystem image without loop mounts, and the kernel and
initrd are kept next to it: the VMs boot the kernel directly (libvirt <kernel>/<initrd>/<cmdline>),
so no bootloader is installed and no VM is needed to install one.

Kept in $XDG_CACHE_HOME/cgroup-lab/images/<target>-<key>/ (disk.qcow2, vmlinuz, initrd.img,
inputs.json), keyed by a hash of everything the build reads; built in a temporary directory
renamed into place when complete, so an interrupted build leaves no half image behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from lab.config.targets import Target
from lab.core import console
from lab.core.errors import TestbedError
from lab.core.files import write_files
from lab.core.paths import cache_dir
from lab.host import proc, tools
from lab.render.templates import environment

RECIPE = "base-1"  # bump when the build steps change in a way the hashed inputs do not show
DISK_SIZE_MB = 4096
TOOLS = ("mmdebstrap", "mkfs.ext4", "qemu-img")


@dataclass(frozen=True)
class BaseImage:
    """A built (or to be built) base image in the cache. cmdline: the kernel command line its VMs
    boot with (root by filesystem UUID, the target's own options)."""

    target: str
    key: str
    dir: Path
    cmdline: str

    @property
    def disk(self) -> Path:
        """The root filesystem image (ext4, DISK_SIZE_MB MiB, qcow2): <dir>/disk.qcow2."""
        return self.dir / "disk.qcow2"

    @property
    def kernel(self) -> Path:
        """The kernel the VMs boot directly (the newest /boot/vmlinuz-* mmdebstrap installed): <dir>/vmlinuz."""
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        """The initrd that goes with kernel (the newest /boot/initrd.img-*): <dir>/initrd.img."""
        return self.dir / "initrd.img"

    @property
    def built(self) -> bool:
        """The cache holds the image: disk, kernel and initrd are all files (a build renames its whole
        folder into place, so there is no half image)."""
        return self.disk.is_file() and self.kernel.is_file() and self.initrd.is_file()


def images_dir() -> Path:
    """The cache folder of the base images: $XDG_CACHE_HOME/cgroup-lab/images (one <target>-<key>/ each)."""
    return cache_dir() / "images"


def root_uuid(target: Target) -> str:
    """A stable filesystem UUID per target, so fstab and the kernel command line name the root."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cgroup-lab:{target.name}"))


def hook_script(target: Target) -> str:
    """The mmdebstrap customize hook for the target, rendered."""
    return environment().get_template("images/debian-rootfs.sh.j2").render(t=target, root_uuid=root_uuid(target))


def initramfs_hook(target: Target) -> str:
    """The mmdebstrap essential hook for the target, rendered: a small initramfs (the VM's root
    drivers only), set up before the kernel's package builds it."""
    return environment().get_template("images/debian-initramfs.sh.j2").render(t=target)


def inputs(target: Target, packages: tuple[str, ...], mirror: str) -> dict[str, str]:
    """Everything the base build reads: the recipe, the target, the mirror, the package set, the
    rendered hooks and the kernel command line. Its hash is the image's key."""
    return {"recipe": RECIPE, "target": target.name, "release": target.release, "mirror": mirror,
            "packages": " ".join(packages), "hook": hook_script(target), "initramfs": initramfs_hook(target),
            "cmdline": target.kernel_cmdline, "disk_mb": str(DISK_SIZE_MB)}


def key_of(values: dict[str, str]) -> str:
    """16 hex digits of a sha256 over the sorted key/value pairs."""
    h = hashlib.sha256()
    for k in sorted(values):
        h.update(k.encode() + b"\0" + values[k].encode() + b"\0")
    return h.hexdigest()[:16]


def base_image(target: Target, packages: tuple[str, ...], mirror: str) -> BaseImage:
    """Where the base image of this target and package set lives (or would live) in the cache."""
    key = key_of(inputs(target, packages, mirror))
    cmdline = f"root=UUID={root_uuid(target)} ro {target.kernel_cmdline}".strip()
    return BaseImage(target=target.name, key=key, dir=images_dir() / f"{target.name}-{key}", cmdline=cmdline)


def build(target: Target, packages: tuple[str, ...], mirror: str, timeout: float, verbose: bool = False,
          force: bool = False) -> BaseImage:
    """Build the base image unless the cache has it; return it either way. Raises ToolMissing, and
    TestbedError when mmdebstrap (the mirror), mkfs or qemu-img fails (exit 3)."""
    image = base_image(target, packages, mirror)
    if image.built and not force:
        return image
    tools.require(*TOOLS)
    images_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{image.dir.name}-", dir=images_dir()))
    try:
        staged = work / "final"
        staged.mkdir()
        _build(target, packages, mirror, timeout, verbose, work, staged)
        (staged / "inputs.json").write_text(json.dumps(inputs(target, packages, mirror), indent=1))
        if image.dir.exists():
            shutil.rmtree(image.dir)
        os.replace(staged, image.dir)
    finally:
        remove_build_dir(work)
    size = sum(p.stat().st_size for p in image.dir.iterdir()) >> 20
    console.info(f"[green]✓[/] base image {image.dir.name} built ({size} MiB, no VM booted)")
    return image


def _build(target: Target, packages: tuple[str, ...], mirror: str, timeout: float, verbose: bool,
           work: Path, out: Path) -> None:
    write_files(work, {"rootfs-hook.sh": hook_script(target), "initramfs-hook.sh": initramfs_hook(target)})
    rootfs = work / "rootfs"
    with console.step(f"mmdebstrap {target.release}: {len(packages)} packages from {mirror}",
                      "the packages to download and unpack (~1 min)", verbose, usual_s=90) as on_line:
        proc.run(["mmdebstrap", "--mode=root", "--variant=minbase", "--include=" + ",".join(packages),
                  "--dpkgopt=force-unsafe-io", f"--essential-hook={work / 'initramfs-hook.sh'}",
                  f"--customize-hook={work / 'rootfs-hook.sh'}", target.release,
                  str(rootfs), mirror], step="mmdebstrap", timeout=timeout, waiting_for="mmdebstrap",
                 on_line=on_line)
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise TestbedError(f"mmdebstrap produced no kernel or initrd in {rootfs / 'boot'}",
                           hint=f"is {target.kernel_package} in the target's packages?")
    shutil.copy2(kernels[-1], out / "vmlinuz")
    shutil.copy2(initrds[-1], out / "initrd.img")
    raw = work / "disk.raw"
    with console.step("the disk image (mkfs.ext4 -d, no loop mounts; qcow2)", "mkfs (~5 s)", verbose,
                      usual_s=10) as on_line:
        with raw.open("wb") as fh:
            fh.truncate(DISK_SIZE_MB << 20)
        proc.run(["mkfs.ext4", "-F", "-q", "-U", root_uuid(target), "-d", str(rootfs), str(raw)],
                 step="mkfs.ext4", timeout=600, on_line=on_line)
        shutil.rmtree(rootfs)
        proc.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(out / "disk.qcow2")],
                 step="qemu-img convert", timeout=600, on_line=on_line)
        raw.unlink()
    for path in out.iterdir():  # qemu (libvirt-qemu) reads them on the libvirt host after upload
        path.chmod(0o644)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below path (mmdebstrap mounts /proc, /sys, /dev inside the root)."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point == prefix or mount_point.startswith(prefix + "/"):
            found.append(mount_point)
    return found


def remove_build_dir(work: Path) -> None:
    """Delete an unfinished build, never following into a mount left behind (it could be /dev)."""
    for mount_point in sorted(mounts_under(work), reverse=True):
        proc.run(["umount", "--lazy", mount_point], step="umount", timeout=30, check=False)
    left = mounts_under(work)
    if left:
        console.error(f"not deleting {work}: still mounted: {', '.join(left)}; unmount them, then delete it")
        return
    shutil.rmtree(work, ignore_errors=True)
