"""Decide KVM or TCG by running a real 512-byte guest, because /dev/kvm existing proves nothing.

The guest writes to qemu's isa-debug-exit port; qemu then exits with code 3. Any other result
(an abort such as "failed to set MSR", a hang, a missing binary) means the accelerator is unusable.
"""

from __future__ import annotations

import shutil
import tempfile
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


@cache
def kvm_usable() -> bool:
    return probe("kvm")[0]


@cache
def _remote_kvm_usable(access: HostAccess) -> bool:
    return probe_remote(access, "kvm")[0]


def libvirt_driver(access: HostAccess | None = None) -> str:
    """vagrant-libvirt's driver: "kvm" only when a real guest ran under KVM (on the libvirt host:
    this machine, or the remote one given by access), else "qemu" (TCG)."""
    if access is not None:
        return "kvm" if _remote_kvm_usable(access) else "qemu"
    return "kvm" if kvm_usable() else "qemu"


def packer_accelerator() -> str:
    return "kvm" if kvm_usable() else "tcg"
