"""Decide KVM or TCG by running a real 512-byte guest, because /dev/kvm existing proves nothing.

The guest writes to qemu's isa-debug-exit port; qemu then exits with code 3. Any other result
(an abort such as "failed to set MSR", a hang, a missing binary) means the accelerator is unusable.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

from lab.core.errors import TestbedError
from lab.host import proc
from lab.host.sshhost import HostAccess

BOOT_SECTOR = bytes([0xB0, 0x01, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD])  # mov al,1; out 0xf4,al; hlt; jmp $
EXPECTED_EXIT = 3  # (1 << 1) | 1


def probe(accel: str, timeout: float = 10.0) -> tuple[bool, str]:
    """(usable, detail) for one qemu accelerator ("kvm" or "tcg")."""
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        return False, "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
    with tempfile.TemporaryDirectory(prefix="lab-accel-") as tmp:
        image = Path(tmp) / "probe.img"
        image.write_bytes(BOOT_SECTOR + bytes(510 - len(BOOT_SECTOR)) + b"\x55\xaa")
        cmd = [qemu, "-accel", accel, "-cpu", "max", "-m", "16", "-nodefaults", "-display", "none",
               "-no-reboot", "-serial", "none", "-monitor", "none",
               "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
               "-drive", f"file={image},format=raw,if=floppy"]
        try:
            result = proc.run(cmd, step=f"a 512-byte test guest under {accel}", timeout=timeout, check=False,
                              split_stderr=True)
        except TestbedError:  # the timeout passed
            return False, f"a 512-byte test guest did not finish within {timeout:.0f}s under {accel}"
    if result.returncode == EXPECTED_EXIT:
        return True, f"{accel} runs a test guest"
    last = (result.stderr.strip().splitlines() or ["no output"])[-1]
    return False, f"{accel} cannot run a test guest (exit {result.returncode}: {last})"


def probe_script(accel: str, timeout: float = 10.0) -> str:
    """The same probe as a POSIX shell script for a remote libvirt host; prints `rc=N`, and qemu's
    last stderr line."""
    octal = "".join(f"\\{b:03o}" for b in BOOT_SECTOR)
    qemu_args = (f"-accel {accel} -cpu max -m 16 -nodefaults -display none -no-reboot -serial none -monitor none "
                 "-device isa-debug-exit,iobase=0xf4,iosize=0x04")
    return (f'd=$(mktemp -d) || exit 1; printf "{octal}" > "$d/p.img"; truncate -s 510 "$d/p.img"; '
            f'printf "\\125\\252" >> "$d/p.img"; '
            f'timeout {timeout:.0f} qemu-system-x86_64 {qemu_args} -drive "file=$d/p.img,format=raw,if=floppy" '
            f'2>"$d/err"; rc=$?; echo "rc=$rc"; tail -n 1 "$d/err"; rm -rf "$d"')


def probe_remote(access: HostAccess, accel: str, timeout: float = 10.0) -> tuple[bool, str]:
    """(usable, detail) for one accelerator on a remote libvirt host, run there over SSH.
    Raises TestbedError (from HostAccess.run) when the host cannot be reached."""
    result = access.run(probe_script(accel, timeout), timeout=timeout + access.timeout * 2)
    lines = result.stdout.strip().splitlines()
    code = lines[0].removeprefix("rc=") if lines and lines[0].startswith("rc=") else "?"
    if code == str(EXPECTED_EXIT):
        return True, f"{accel} runs a test guest on {access.uri.host_label}"
    if code == "127":
        return False, f"qemu-system-x86_64 not found on {access.uri.host_label}"
    if code == "124":
        return False, f"a 512-byte test guest did not finish within {timeout:.0f}s under {accel}"
    last = lines[-1] if len(lines) > 1 else (result.stderr.strip() or "no output")
    return False, f"{accel} cannot run a test guest (exit {code}: {last})"


REMOTE_TTL_S = 24 * 3600  # a remote host's answer is asked again after a day


def _probe_cache() -> Path:
    from lab.core.paths import cache_dir

    return cache_dir() / "accel.json"


def _store(key: str, answer: bool) -> None:
    """Write one answer into the probe cache (a file that cannot be written is left as it is)."""
    path = _probe_cache()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    known[key] = {"kvm": answer, "at": time.time()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def _cached(key: str, ttl: float | None, ask: Callable[[], bool]) -> bool:
    """ask() once per key (and per ttl seconds): the probe costs a qemu start, and where KVM hangs
    (this kind of host) it waits out its 10 s timeout, on every lab.up. Kept in
    $XDG_CACHE_HOME/cgroup-lab/accel.json; a broken file is asked again."""
    path = _probe_cache()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(key) if isinstance(known, dict) else None
    if isinstance(entry, dict) and isinstance(entry.get("kvm"), bool) and \
            (ttl is None or time.time() - float(entry.get("at", 0)) < ttl):
        return bool(entry["kvm"])
    answer = ask()
    _store(key, answer)
    return answer


def _local_key() -> str:
    """This machine as it runs now: its boot (a reboot may change what KVM does) and its qemu."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    qemu = shutil.which("qemu-system-x86_64") or ""
    stamp = f"{Path(qemu).stat().st_mtime_ns}" if qemu else "none"
    return f"local:{boot}:{qemu}:{stamp}"


@cache
def kvm_usable() -> bool:
    """KVM runs a real guest on this machine (probed once per boot and qemu binary)."""
    return _cached(_local_key(), None, lambda: probe("kvm")[0])


@cache
def _remote_kvm_usable(access: HostAccess) -> bool:
    return _cached(f"remote:{access.uri.text}", REMOTE_TTL_S, lambda: probe_remote(access, "kvm")[0])


_KVM_FAILED: set[str] = set()  # hosts where a real guest did not boot under KVM, in this process


def libvirt_driver(access: HostAccess | None = None) -> str:
    """vagrant-libvirt's driver: "kvm" only when a real guest ran under KVM (on the libvirt host:
    this machine, or the remote one given by access), else "qemu" (TCG)."""
    if (access.uri.text if access is not None else "local") in _KVM_FAILED:
        return "qemu"
    if access is not None:
        return "kvm" if _remote_kvm_usable(access) else "qemu"
    return "kvm" if kvm_usable() else "qemu"


def kvm_failed(access: HostAccess | None = None) -> None:
    """A real guest did not boot under KVM although the 512-byte probe ran (seen here: the probe
    passes now and then where a Linux guest hangs with nothing on its console): use TCG on that
    host from now on (the cached answer becomes "no KVM" until the host reboots, or for a day)."""
    _KVM_FAILED.add(access.uri.text if access is not None else "local")
    _store(_local_key() if access is None else f"remote:{access.uri.text}", False)
    kvm_usable.cache_clear()
    _remote_kvm_usable.cache_clear()


def packer_accelerator() -> str:
    """Packer qemu builder's `accelerator` for an image built on this machine: "kvm" when a real guest
    ran under KVM here (kvm_usable, cached per boot and qemu binary; kvm_failed turns it off), else "tcg"."""
    return "kvm" if kvm_usable() else "tcg"
