"""Build a target's base box and keep it in the XDG cache, keyed by a hash of all its inputs.

Debian targets: mmdebstrap a root filesystem from the mirror, make a disk without loop mounts
(sfdisk + mkfs.ext4 -d), let Packer boot it (direct kernel, TCG when KVM is unusable), install
GRUB and package a libvirt box. Trusty: Packer from the Ubuntu ISO. A build happens in a temp
directory renamed into place when complete, so an interrupted build leaves no half box behind.
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

from lab.config.settings import Settings
from lab.config.targets import Target
from lab.core import console
from lab.core.errors import TestbedError
from lab.core.files import write_files
from lab.core.paths import cache_dir
from lab.core.resources import packer_file
from lab.host import accel, proc, tools
from lab.host.probes import sources_silent
from lab.images.common import free_port, vagrant_insecure_keys
from lab.images.trusty import build_trusty
from lab.render.lab import box_facts, box_provisioned, provision_plan, render_script
from lab.render.templates import environment

RECIPE_VERSION = "3"  # bump when the build steps change in a way the hashed inputs do not show
DISK_SIZE_MB = 4096
DEBIAN_BUILD_TOOLS = ("mmdebstrap", "sfdisk", "mkfs.ext4", "qemu-img", "packer", "qemu-system-x86_64")


@dataclass(frozen=True)
class Box:
    """A built box in the cache: its file, the name Vagrant knows it by, and its input hash."""

    path: Path
    name: str
    key: str


def _template(name: str, **ctx: object) -> str:
    return environment().get_template(name).render(ctx)


def box_packages(settings: Settings) -> tuple[str, ...]:
    """The target's base packages and the scenario's for that target, sorted: one box per set."""
    target = settings.target_data
    return tuple(sorted({*target.packages, *settings.scenario_data.packages(target.name)}))


def box_provision_scripts(settings: Settings) -> dict[str, str]:
    """{file name: text} of the provisioning scripts lab.build runs into the box, in order (empty
    when the lab provisions at up): rendered with box_facts, so nothing in them is per lab."""
    if not box_provisioned(settings):
        return {}
    facts = box_facts(settings)
    return {script.name.replace("/", "-"): render_script(settings, facts, script)
            for _, _, scripts in provision_plan(settings) for script in scripts}


def build_inputs(settings: Settings) -> dict[str, str]:
    """Everything that goes into the box (target, package set, mirror, build and provisioning
    scripts, the scenario's users); its hash is the cache key, so labs of one scenario and target
    share a box, and so do scenarios whose packages and provisioning are the same."""
    target = settings.target_data
    if target.box_builder != "mmdebstrap":
        template = packer_file(f"{target.family}.pkr.hcl")
        return {"recipe": RECIPE_VERSION, "target": target.name,
                "packer": template.read_text(encoding="utf-8") if template.exists() else ""}
    _, public = vagrant_insecure_keys()
    ctx = {"t": target, "s": settings, "root_uuid": root_uuid(target), "vagrant_pub": public.read_text().strip()}
    return {
        "recipe": RECIPE_VERSION,
        "target": target.name,
        "mirror": settings.debian_mirror,
        "packages": " ".join(box_packages(settings)),
        "cmdline": target.kernel_cmdline,
        "rootfs_hook": _template("packer/debian-rootfs.sh.j2", **ctx),
        "box_script": _template("packer/debian-box.sh.j2", **ctx),
        "seal_script": _template("packer/debian-seal.sh.j2", **ctx),
        "provision": "".join(f"# {name}\n{text}" for name, text in box_provision_scripts(settings).items()),
        "packer": packer_file("debian.pkr.hcl").read_text(encoding="utf-8"),
    }


def root_uuid(target: Target) -> str:
    """A stable filesystem UUID per target, so fstab can name the root without probing."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cgroup-lab:{target.name}"))


def box_key(inputs: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(inputs):
        h.update(k.encode() + b"\0" + inputs[k].encode() + b"\0")
    return h.hexdigest()[:16]


def boxes_dir() -> Path:
    return cache_dir() / "boxes"


def cached_box(settings: Settings) -> Box:
    """Where this target's box lives (or would live) in the cache."""
    key = box_key(build_inputs(settings))
    target = settings.target_data
    path = boxes_dir() / f"{target.name}-{key}" / f"{target.name}.box"
    return Box(path=path, name=f"cgroup-lab/{target.name}-{key}", key=key)


def build(settings: Settings, force: bool = False, verbose: bool = False) -> Box:
    """Build the target's box unless the cache already has it; return it either way."""
    target = settings.target_data
    box = cached_box(settings)
    if box.path.is_file() and not force:
        console.info(f"[green]✓[/] box for {target.name} is cached ({box.path}, key {box.key}); "
                     "nothing to build (use --force to rebuild)")
        return box
    if target.box_builder == "mmdebstrap":
        tools.require(*DEBIAN_BUILD_TOOLS)
    else:
        tools.require("packer")
        _check_iso_reachable(settings)
    boxes_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-{box.key}-", dir=boxes_dir()))
    try:
        if target.box_builder == "mmdebstrap":
            built = _build_debian(settings, work, verbose)
        else:
            built = _build_iso(settings, work, verbose)
        final_dir = box.path.parent
        staged = work / "final"
        staged.mkdir()
        os.replace(built, staged / box.path.name)
        (staged / "inputs.json").write_text(json.dumps(build_inputs(settings), indent=1))
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(staged, final_dir)
    finally:
        remove_build_dir(work)
    console.info(f"[green]✓[/] box {box.name} built: {box.path} ({box.path.stat().st_size >> 20} MiB)")
    return box


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
        proc.run(["umount", "--lazy", mount_point], step=f"umount {mount_point}", timeout=30, check=False)
    left = mounts_under(work)
    if left:
        console.error(f"not deleting {work}: still mounted: {', '.join(left)}; unmount them, then delete it")
        return
    shutil.rmtree(work, ignore_errors=True)


def _build_debian(settings: Settings, work: Path, verbose: bool) -> Path:
    target = settings.target_data
    inputs = build_inputs(settings)
    provision = box_provision_scripts(settings)
    write_files(work, {"rootfs-hook.sh": inputs["rootfs_hook"], "box.sh": inputs["box_script"],
                       "seal.sh": inputs["seal_script"], **{f"provision/{k}": v for k, v in provision.items()}})
    rootfs = work / "rootfs"
    timeout = settings.build_timeout
    with console.step(f"mmdebstrap {target.release} from {settings.debian_mirror}",
                      "the packages to download and unpack (~1 min)", verbose) as out:
        proc.run(["mmdebstrap", "--mode=root", "--variant=minbase", "--include=" + ",".join(box_packages(settings)),
                  f"--customize-hook={work / 'rootfs-hook.sh'}", target.release, str(rootfs),
                  settings.debian_mirror],
                 step="mmdebstrap", timeout=timeout, waiting_for="mmdebstrap", on_line=out)
    boot = rootfs / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if not kernels or not initrds:
        raise TestbedError(f"mmdebstrap produced no kernel/initrd in {boot}",
                           hint=f"is {target.kernel_package} installed?")
    shutil.copy2(kernels[-1], work / "vmlinuz")
    shutil.copy2(initrds[-1], work / "initrd.img")
    raw, disk = work / "disk.raw", work / "disk.qcow2"
    with console.step("making the disk image (sfdisk + mkfs.ext4 -d, no loop mounts)", "mkfs (~10 s)", verbose) as out:
        with raw.open("wb") as fh:
            fh.truncate(DISK_SIZE_MB << 20)
        proc.run(["sfdisk", "-q", str(raw)], step="sfdisk", timeout=60, input_text="start=2048, type=83, bootable\n",
                 on_line=out)
        proc.run(["mkfs.ext4", "-F", "-q", "-U", root_uuid(target), "-E", "offset=1048576", "-d", str(rootfs),
                  str(raw), f"{DISK_SIZE_MB * 1024 - 1024}k"], step="mkfs.ext4", timeout=600, on_line=out)
        shutil.rmtree(rootfs)
        proc.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(disk)], step="qemu-img convert",
                 timeout=600, on_line=out)
        raw.unlink()
    private, _ = vagrant_insecure_keys()
    key_copy = work / "vagrant-insecure-key"
    shutil.copy2(private, key_copy)
    key_copy.chmod(0o600)
    box_out = work / "out.box"
    variables = {
        "disk_image": str(disk), "kernel": str(work / "vmlinuz"), "initrd": str(work / "initrd.img"),
        "cmdline": f"root=UUID={root_uuid(target)} ro {target.kernel_cmdline}",
        "output_directory": str(work / "packer-out"), "box_output": str(box_out),
        "ssh_private_key_file": str(key_copy), "ssh_port": free_port(), "serial_log": str(work / "serial.log"),
        "scripts": [str(work / "box.sh"), *(str(work / "provision" / k) for k in provision), str(work / "seal.sh")],
        "accelerator": accel.packer_accelerator(),
        "cpus": settings.cpus, "memory": settings.memory,
    }
    var_file = work / "vars.json"
    var_file.write_text(json.dumps(variables, indent=1))
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1"}
    what = f"provision {settings.scenario_data.id}, " if provision else ""
    with console.step(f"packer build ({variables['accelerator']}): boot, install GRUB, {what}package the libvirt box",
                      "the VM to boot, SSH, provisioning and packaging (~1-3 min on TCG)", verbose) as out:
        proc.run(["packer", "build", "-color=false", "-var-file", str(var_file),
                  str(packer_file("debian.pkr.hcl"))],
                 step="packer build", timeout=timeout, waiting_for="packer", env=env, cwd=work, on_line=out)
    if not box_out.is_file():
        raise TestbedError(f"packer finished but wrote no box at {box_out}")
    return box_out


def _check_iso_reachable(settings: Settings) -> None:
    """Every source the build downloads answers now (lab.host.probes), else TestbedError (exit 3)."""
    why = sources_silent(settings.target_data.sources, lambda key: str(getattr(settings, key)), has_box=False)
    if why:
        raise TestbedError(
            f"target {settings.target} cannot be built here: {why}",
            hint="use a local box instead: set box = '/path/to/trusty.box' in lab.toml, "
                 "or try target = 'bookworm' which builds from Debian's mirror",
        )


def _build_iso(settings: Settings, work: Path, verbose: bool) -> Path:

    return build_trusty(settings, work, verbose)
