"""The lab's port shells (lab.remote.port) on the machine side: reach the host ends of the lab's
virtio-serial ports (here, or through the remote libvirt host), start the shells in the admin's SSH
login session before the baseline snapshot, and say whether a lab has them."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lab.core.errors import TestbedError
from lab.core.files import write_files
from lab.host import libvirt
from lab.remote.port import PORTS, Ports, PortShell, connect_local, relay_command, start_command
from lab.remote.ssh import Remote

MARKER = "port-shells"  # in .lab/<name>/: lab.up started the port shells before its baseline snapshot


def has_port_shells(lab_root: Path) -> bool:
    """Whether lab.up started port shells in this lab's baseline snapshot."""
    return (lab_root / MARKER).is_file()


def open_ports(domain: str, remote: Remote, timeout: float = 30) -> Ports:
    """Connect to the host ends of the domain's four ports: the unix sockets here, or through the
    remote libvirt host (remote's jump; a perl relay on that host). Raises TestbedError when the
    domain lacks a port or a socket cannot be reached."""
    paths = libvirt.channel_paths(domain, PORTS)
    missing = [p for p in PORTS if p not in paths]
    if missing:
        raise TestbedError(f"domain {domain} has no virtio-serial port {', '.join(missing)}",
                           hint="a lab brought up before port shells: lab.destroy, then lab.up")
    if not libvirt.current().remote:
        try:
            return connect_local(paths, timeout)
        except OSError as exc:
            raise TestbedError(f"could not connect to the port shells of {domain} ({exc})") from None
    streams = {name: remote.host_exec(relay_command(path), timeout) for name, path in paths.items()}
    return Ports(streams)  # type: ignore[arg-type]


def start(remote: Remote, ports: Ports, admin: str, lab_root: Path, timeout: float) -> None:
    """Start the admin's and root's port shells from the admin's SSH session (remote, connected;
    the admin's ports given to it with sudo first) and prove each answers (prove()). Raises
    TestbedError."""
    result = remote.run(start_command(admin), step="start the port shells")
    if result.failed:
        raise TestbedError(f"starting the port shells failed: {result.stderr.strip() or result.stdout.strip()}")
    prove(ports, admin, lab_root, timeout)


def prove(ports: Ports, admin: str, lab_root: Path, timeout: float) -> None:
    """Prove that the shells start_command() started answer as who they should (`id -un` in both
    at once: root's waits for its sudo, the admin's does not), within timeout seconds; then mark the
    lab as having them. Raises TestbedError."""
    deadline = time.monotonic() + timeout

    def ask(as_root: bool) -> str:
        shell = PortShell(ports, as_root=as_root, user=admin, label="the lab")
        return shell.run("id -un", timeout=max(1.0, deadline - time.monotonic()), step="port shell").stdout.strip()

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(ask, (False, True)))
    for want, answer in zip((admin, "root"), answers, strict=True):
        if answer != want:
            raise TestbedError(f"the {want} port shell answered {answer!r}")
    write_files(lab_root, {MARKER: "started with the baseline snapshot\n"})
