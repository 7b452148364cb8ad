"""A guest that does not answer, on loopback (issue 19, item 6): one line saying why (port closed, no
SSH banner, the machine behind it gone as the diagnose callback finds), within the wait; paramiko's
own log never on the terminal, in the lab's log instead. The VM case (the lab's libvirt network
removed under a running lab) is tests/test_vm_exits.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_remote_sshd import free_port

from lab.core import errors
from lab.remote.keys import ensure_keypair
from lab.remote.ssh import Endpoint, Remote, unreachable_why

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def key(tmp_path: Path) -> Path:
    private = tmp_path / "key" / "id_ed25519"
    ensure_keypair(private, private.with_suffix(".pub"), "lab-test")
    return private


@pytest.fixture
def not_ssh() -> Iterator[int]:
    """A loopback port that accepts and answers like a web server: no SSH banner ever comes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    time.sleep(0.1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def remote_to(port: int, key: Path, tmp_path: Path, **kw: object) -> Remote:
    return Remote(Endpoint("127.0.0.1", port, "root", key), tmp_path / "known_hosts", label="lab x", **kw)  # type: ignore[arg-type]


@pytest.mark.integration
def test_a_closed_port_is_named(key: Path, tmp_path: Path) -> None:
    r = remote_to(free_port(), key, tmp_path, connect_timeout=2, hint="next: invoke lab.up --name x")
    with pytest.raises(errors.TestbedError) as info:
        r.connect()
    assert info.value.message.startswith("gave up after 2s waiting for lab x to answer SSH at 127.0.0.1:")
    assert "last seen: port" in info.value.message and "is closed (connection refused)" in info.value.message
    assert info.value.hint == "next: invoke lab.up --name x"


@pytest.mark.integration
def test_a_port_that_speaks_no_ssh_is_named(key: Path, tmp_path: Path, not_ssh: int) -> None:
    r = remote_to(not_ssh, key, tmp_path, connect_timeout=3)
    with pytest.raises(errors.TestbedError, match=r"last seen: (sshd does not answer its banner|the SSH handshake)"):
        r.connect()


@pytest.mark.integration
def test_diagnose_ends_the_wait_as_soon_as_it_knows(key: Path, tmp_path: Path) -> None:
    """The machine layer's diagnosis (here: a stand-in for libvirt saying the network is gone) ends
    a 60 s wait at the first failed attempt, with its own line."""
    def network_gone() -> None:
        raise errors.TestbedError("the VM of lab x runs, but its libvirt network lab-x is gone",
                                  hint="next: invoke lab.up --name x")

    r = remote_to(free_port(), key, tmp_path, connect_timeout=60, diagnose=network_gone)
    started = time.monotonic()
    with pytest.raises(errors.TestbedError, match="its libvirt network lab-x is gone"):
        r.connect()
    assert time.monotonic() - started < 5


@pytest.mark.integration
def test_diagnose_is_asked_every_few_seconds_while_nothing_answers(key: Path, tmp_path: Path) -> None:
    asked: list[float] = []
    r = remote_to(free_port(), key, tmp_path, connect_timeout=7, diagnose=lambda: asked.append(time.monotonic()))
    with pytest.raises(errors.TestbedError, match="connection refused"):
        r.connect()
    assert len(asked) == 2 and 4.5 <= asked[1] - asked[0] <= 7


def test_each_cause_has_its_words() -> None:
    import errno

    import paramiko

    assert unreachable_why(OSError(errno.EHOSTUNREACH, "No route to host"), 22) == \
        "no route to host (nothing answers for its address)"
    assert unreachable_why(OSError(errno.ENETUNREACH, "Network is unreachable"), 22).startswith(
        "no route to its network")
    assert unreachable_why(TimeoutError("timed out"), 22).startswith("no answer to a TCP connection to port 22")
    assert unreachable_why(paramiko.ChannelException(2, "Connect failed"), 22) == \
        "the libvirt host could not connect to it (Connect failed)"


@pytest.mark.integration
def test_paramiko_never_writes_on_the_terminal(key: Path, tmp_path: Path, not_ssh: int) -> None:
    """In a fresh interpreter (no pytest log capture): paramiko logs the failed handshakes with
    their tracebacks; none of it reaches stderr, all of it the lab's log. main printed them."""
    log = tmp_path / "lab.log"
    code = textwrap.dedent(f"""
        from pathlib import Path
        from lab.core.errors import TestbedError
        from lab.remote.ssh import Endpoint, Remote
        r = Remote(Endpoint("127.0.0.1", {not_ssh}, "root", Path({str(key)!r})), Path({str(tmp_path / "kh")!r}),
                   connect_timeout=3, log_file=Path({str(log)!r}))
        try:
            r.connect()
        except TestbedError as exc:
            print("refused:", exc.message)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.stdout.startswith("refused: gave up after 3s waiting for")
    assert result.stderr == ""
    text = log.read_text()
    assert "ERROR paramiko.lab" in text and "Traceback" in text, "the handshake's failure, in the lab's log"
