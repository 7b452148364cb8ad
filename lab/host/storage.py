"""Volumes in the libvirt host's `default` pool: the images' disks, kernels and saved states, the
labs' own disks, and per-VM copies of a saved state. Every call goes to the current lab's libvirt
host (lab.host.libvirt.use), so a remote host keeps its images and states itself: nothing large
travels back to this machine.

Names: cgroup-lab-base-<target>-<key>.{qcow2,vmlinuz,initrd,state} (a target's packages, booted
once), cgroup-lab-layer-<key>.{qcow2,state} (a scenario's provisioning on a base), and lab-<name>.qcow2
for a lab's own disk (a qcow2 overlay on its layer).
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
from pathlib import Path

from lab.core.errors import TestbedError
from lab.host import libvirt

POOL = libvirt.POOL


def pool_path() -> str:
    """The pool's directory on the libvirt host (from its XML; /var/lib/libvirt/images by default)."""
    xml = libvirt.virsh("pool-dumpxml", POOL, check=True).stdout
    m = re.search(r"<target>\s*<path>([^<]+)</path>", xml)
    if not m:
        raise TestbedError(f"libvirt pool {POOL} has no target path", hint="see: virsh pool-dumpxml default")
    return m.group(1).strip()


def path(name: str) -> str:
    """Where the volume `name` lives on the libvirt host."""
    return f"{pool_path()}/{name}"


def exists(name: str) -> bool:
    """Whether the volume `name` is in the default pool of the current libvirt host: False only when
    libvirt says "Storage volume not found" (libvirt.lookup); raises TestbedError quoting virsh for
    any other failure (permissions, libvirtd not answering, a lost remote connection, a timeout of
    libvirt_timeout), ToolMissing without virsh."""
    return libvirt.lookup("volume", "vol-info", "--pool", POOL, name) is not None


def refresh() -> None:
    """Let libvirt see files written into the pool's directory by others (virsh save)."""
    libvirt.virsh("pool-refresh", POOL, check=True, timeout=120)


def delete(name: str) -> bool:
    """Delete the volume if it exists; True when it was there."""
    if not exists(name):
        return False
    libvirt.virsh("vol-delete", "--pool", POOL, name, check=True, timeout=120)
    return True


def upload(name: str, source: Path, fmt: str, timeout: float) -> None:
    """Create the volume `name` (format qcow2 or raw) and copy the local file into it (through the
    libvirt connection, so a remote host gets it too); an existing one is replaced."""
    delete(name)
    size = str(source.stat().st_size)
    libvirt.virsh("vol-create-as", POOL, name, size, "--format", fmt, check=True, timeout=120)
    try:
        libvirt.virsh("vol-upload", "--pool", POOL, name, str(source), check=True, timeout=timeout)
    except BaseException:
        delete(name)
        raise


def create_overlay(name: str, backing: str, capacity: int) -> str:
    """A new qcow2 volume `name` whose backing file is the volume at path `backing` (qcow2), with
    capacity bytes; an existing one is replaced. Returns its path."""
    delete(name)
    libvirt.virsh("vol-create-as", POOL, name, str(capacity), "--format", "qcow2", "--backing-vol", backing,
                  "--backing-vol-format", "qcow2", check=True, timeout=120)
    return path(name)


def read_head(name: str, length: int) -> bytes:
    """The first `length` bytes of a volume (fewer when it is shorter)."""
    host = libvirt.current()
    if not host.remote:
        with open(path(name), "rb") as fh:
            return fh.read(length)
    with tempfile.TemporaryDirectory(prefix="cgroup-lab-head-") as tmp:
        out = Path(tmp) / "head"
        libvirt.virsh("vol-download", "--pool", POOL, name, str(out), "--offset", "0", "--length", str(length),
                      check=True, timeout=120)
        return out.read_bytes()


def copy_with_head(source: str, name: str, head: bytes, timeout: float) -> str:
    """A copy of the volume `source` named `name` whose first len(head) bytes are `head` (a saved
    state with another domain XML in its header); returns its path. On this machine: a file copy in
    the pool directory (~0.25 s for 230 MB, measured); on a remote host: libvirt copies it there
    (vol-clone, ~0.8 s) and the head is written with vol-upload."""
    host = libvirt.current()
    delete(name)
    if not host.remote:
        target = path(name)
        src = path(source)
        try:
            shutil.copyfile(src, target)
            with open(target, "r+b") as fh:
                fh.write(head)
        except OSError as exc:
            Path(target).unlink(missing_ok=True)
            raise TestbedError(f"could not copy the saved state {src} to {target}: {exc.strerror or exc}",
                               hint="is the disk of the libvirt pool full?") from None
        Path(target).chmod(0o600)
        return target
    libvirt.virsh("vol-clone", "--pool", POOL, source, name, check=True, timeout=timeout)
    with tempfile.NamedTemporaryFile(prefix="cgroup-lab-head-") as fh:
        fh.write(head)
        fh.flush()
        libvirt.virsh("vol-upload", "--pool", POOL, name, fh.name, "--offset", "0", "--length", str(len(head)),
                      check=True, timeout=120)
    return path(name)


def delete_file(file_path: str) -> None:
    """Remove a file that libvirt wrote into the pool directory but may not list yet (a partial
    save): on this machine directly, on a remote one through the pool."""
    host = libvirt.current()
    if not host.remote:
        Path(file_path).unlink(missing_ok=True)
        return
    refresh()
    delete(Path(file_path).name)


def tail(file_path: str, size: int = 65536) -> str:
    """The last `size` bytes of a file on the libvirt host, as text ("" when it does not exist);
    on a remote host read over SSH (tail -c)."""
    host = libvirt.current()
    if not host.remote:
        try:
            with open(file_path, "rb") as fh:
                fh.seek(0, 2)
                end = fh.tell()
                fh.seek(max(0, end - size))
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""
    assert host.access is not None
    result = host.access.run(f"tail -c {int(size)} {shlex.quote(file_path)} 2>/dev/null || true", timeout=30)
    return result.stdout


def volumes() -> list[str]:
    """The names of every volume in the pool (whoever made it). Raises TestbedError when libvirt
    cannot list them."""
    listed = libvirt.virsh("vol-list", POOL, check=True).stdout.splitlines()[2:]
    return [line.split()[0] for line in listed if line.strip()]


def backing_of(name: str, pool: str | None = None) -> str:
    """The backing file of the pool's volume `name`, as a path on the host ("" for none, or not a
    qcow2). On this machine read from the file's qcow2 header; on a remote host from libvirt's volume
    XML. pool: the pool's directory (asked of libvirt when not given)."""
    pool = pool or pool_path()
    if libvirt.current().remote:
        xml = libvirt.virsh("vol-dumpxml", "--pool", POOL, name).stdout
        m = re.search(r"<backingStore>\s*<path>([^<]+)</path>", xml)
        parent = m.group(1) if m else ""
    else:
        parent = qcow2_backing(Path(pool) / name)
    return f"{pool}/{parent}" if parent and not parent.startswith("/") else parent


def backed_by(backing: str) -> list[str]:
    """Names of the pool's qcow2 volumes whose backing file is `backing` (a path on the host): a
    layer still in use by a lab's disk, or a base by a layer's (backing_of each)."""
    pool = pool_path()
    return [name for name in volumes() if name.endswith(".qcow2") and backing_of(name, pool) == backing]


def allocation(name: str) -> int:
    """The bytes the volume `name` takes on the host's disk (libvirt's Allocation; a sparse file
    counts what it holds); 0 when it is gone."""
    found = libvirt.lookup("volume", "vol-info", "--pool", POOL, "--bytes", name)
    m = re.search(r"^Allocation:\s+(\d+)", found.stdout, re.MULTILINE) if found else None
    return int(m.group(1)) if m else 0


def qcow2_backing(file: Path) -> str:
    """The backing file a qcow2 image names in its header ("" for none or not a qcow2): the header
    keeps its name's offset (8 bytes at 8) and length (4 bytes at 16), big-endian (QEMU's
    docs/interop/qcow2.txt)."""
    try:
        with file.open("rb") as fh:
            head = fh.read(20)
            if len(head) < 20 or head[:4] != b"QFI\xfb":
                return ""
            offset = int.from_bytes(head[8:16], "big")
            size = int.from_bytes(head[16:20], "big")
            if not offset or not size or size > 4096:
                return ""
            fh.seek(offset)
            return fh.read(size).decode(errors="replace")
    except OSError:
        return ""
