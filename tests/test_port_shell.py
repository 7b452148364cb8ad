"""lab.remote.port.PortShell against a real bash whose stdin/stdout and stderr are the far ends of
socket pairs: what QEMU's virtio-serial ports are to the guest's shells (the ports themselves, and
a shell surviving a snapshot revert, are exercised in a real VM by tests/test_e2e_isolation.py)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

from lab.core import errors
from lab.remote.port import Ports, PortShell


@pytest.fixture
def ports() -> Iterator[tuple[Ports, list[subprocess.Popen[bytes]]]]:
    streams, procs = {}, []
    for who in ("lab.admin", "lab.root"):
        out_host, out_guest = socket.socketpair()
        err_host, err_guest = socket.socketpair()
        procs.append(subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=out_guest, stdout=out_guest,
                                      stderr=err_guest))
        out_guest.close()  # the shell holds its own copies: when it ends, the host end reads EOF
        err_guest.close()
        out_host.setblocking(False)
        err_host.setblocking(False)
        streams[who], streams[f"{who}.err"] = out_host, err_host
    held = Ports(streams)  # type: ignore[arg-type]
    try:
        yield held, procs
    finally:
        held.close()
        for p in procs:
            p.wait(timeout=10)


def test_streams_exit_codes_and_stdin(ports) -> None:
    held, _ = ports
    shell = PortShell(held, as_root=False, user="labadmin")
    res = shell.run("echo out; echo err >&2; exit 3", step="x")
    assert (res.exit_code, res.stdout, res.stderr, res.user) == (3, "out\n", "err\n", "labadmin")
    assert res.guest_seconds is not None and 0 <= res.guest_seconds <= res.seconds
    script = "#!/bin/bash\nset -eu\nwho=$(id -un)\necho \"script ran as $who\"\n"
    fed = shell.run(script, stdin=script)
    assert fed.exit_code == 0 and "script ran" in fed.stdout
    big = shell.run("head -c 300000 /dev/zero | tr '\\0' x")
    assert len(big.stdout) == 300000
    root = PortShell(held, as_root=True, user="labadmin")
    assert root.user == "root" and root.run("echo $$").stdout.strip() != shell.run("echo $$").stdout.strip()


def test_a_shell_that_ends_is_a_testbed_error_at_once(ports) -> None:
    held, procs = ports
    shell = PortShell(held, as_root=False, user="labadmin")
    procs[0].kill()  # the guest's shell is gone (its host end then reads EOF)
    procs[0].wait(timeout=10)
    with pytest.raises(errors.TestbedError, match="port shell"):
        shell.run("echo never", timeout=20)


def test_a_command_that_does_not_finish_times_out(ports) -> None:
    held, _ = ports
    with pytest.raises(errors.TestbedError, match="did not finish within 1s"):
        PortShell(held, as_root=False, user="labadmin").run("sleep 5", timeout=1)


@pytest.mark.integration
def test_the_perl_relay_carries_both_ways(tmp_path) -> None:
    """The relay a remote libvirt host runs (over SSH) between the channel and a port's unix
    socket: here a local unix socket server and the relay as a local process (what sshd would run)."""
    import threading

    from lab.remote.port import relay_command

    path = tmp_path / "port.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            got.append(conn.recv(100))
            conn.sendall(b"from the port\n")
            conn.recv(100)  # until the relay closes

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    relay = subprocess.Popen(["bash", "-c", relay_command(str(path))], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert relay.stdin is not None and relay.stdout is not None
    relay.stdin.write(b"to the port\n")
    relay.stdin.flush()
    assert relay.stdout.readline() == b"from the port\n"
    relay.stdin.close()  # the SSH channel closes: the relay ends
    assert relay.wait(timeout=10) == 0
    thread.join(5)
    assert got == [b"to the port\n"]
    server.close()
