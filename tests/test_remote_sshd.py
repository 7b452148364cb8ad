"""lab.remote against a real OpenSSH sshd that each test starts on loopback.

Everything sshd needs (config, host key, authorized_keys, pid file, log) lives in the test's tmp_path;
the only thing created outside it is sshd's privilege-separation directory /run/sshd. sshd runs in the
foreground (-D) as our child and is ended by its PID, together with any of its descendants, at teardown.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.core import errors
from lab.core.errors import LabError
from lab.remote.keys import ensure_keypair
from lab.remote.shell import Shell
from lab.remote.ssh import MARKER, CommandResult, Endpoint, Remote

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = shutil.which("ssh-keygen")
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 10.0

needs_sshd = pytest.mark.skipif(
    not SSHD.is_file() or SSH_KEYGEN is None or os.geteuid() != 0,
    reason="needs /usr/sbin/sshd and ssh-keygen (openssh-server) and root to run sshd on loopback",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """Direct children of pid (pgrep -P)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def kill_if_same(pids: dict[int, str]) -> None:
    """SIGKILL each pid that still runs the command line recorded for it (guards against PID reuse)."""
    for pid, line in pids.items():
        if line and cmdline(pid) == line:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class Sshd:
    """One sshd -D on 127.0.0.1:port whose files all live under root."""

    def __init__(self, root: Path, port: int, user: str) -> None:
        self.root = root
        self.port = port
        self.user = user
        self.config = root / "sshd_config"
        self.host_key = root / "host_ed25519"
        self.authorized_keys = root / "authorized_keys"
        self.pid_file = root / "sshd.pid"
        self.log = root / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.authorized_keys.write_text("", encoding="utf-8")
        self.config.write_text(
            "\n".join([
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"PidFile {self.pid_file}",
                f"HostKey {self.host_key}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "UseDNS no",
                "LogLevel VERBOSE",
                "",
            ]),
            encoding="utf-8",
        )
        self.new_host_key()

    def new_host_key(self) -> None:
        for p in (self.host_key, self.host_key.with_name(self.host_key.name + ".pub")):
            p.unlink(missing_ok=True)
        assert SSH_KEYGEN is not None
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "lab-test-host",
                        "-f", str(self.host_key)], check=True)

    @property
    def host_key_blob(self) -> str:
        """The base64 part of the host's public key, as it appears in a known_hosts line."""
        return self.host_key.with_name(self.host_key.name + ".pub").read_text(encoding="utf-8").split()[1]

    def authorize(self, public_line: str) -> None:
        with self.authorized_keys.open("a", encoding="utf-8") as fh:
            fh.write(public_line.strip() + "\n")

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
        except OSError:
            return "(no sshd log)"

    def start(self) -> None:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as probe:
                    probe.recv(64)  # wait for the banner: sshd is really serving, not just bound
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"sshd did not accept on port {self.port} within "
                                         f"{START_TIMEOUT:.0f}s:\n{self.log_tail()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """End our sshd by its PID, and whatever still descends from it (per-connection sessions)."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        left = {pid: cmdline(pid) for pid in descendants(proc.pid)}
        kill_if_same(left)  # sessions first, so that our sshd still reaps them itself
        deadline = time.monotonic() + 2
        while children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        kill_if_same(left)


@pytest.fixture
def ssh_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture
def client_key(tmp_path: Path) -> tuple[Path, str]:
    private = tmp_path / "client" / "id_ed25519"
    line = ensure_keypair(private, private.with_suffix(".pub"), "lab-test-client")
    return private, line


@pytest.fixture
def sshd(tmp_path: Path, ssh_user: str, client_key: tuple[Path, str]) -> Iterator[Sshd]:
    root = tmp_path / "sshd"
    root.mkdir()
    server = Sshd(root, free_port(), ssh_user)
    server.authorize(client_key[1])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def known_hosts(tmp_path: Path) -> Path:
    return tmp_path / "state" / "known_hosts"


def make_remote(sshd: Sshd, key: Path, known_hosts: Path, **kw: float) -> Remote:
    return Remote(Endpoint("127.0.0.1", sshd.port, sshd.user, key), known_hosts, label="the test sshd", **kw)


@pytest.fixture
def remote(sshd: Sshd, client_key: tuple[Path, str], known_hosts: Path) -> Iterator[Remote]:
    r = make_remote(sshd, client_key[0], known_hosts, connect_timeout=20, command_timeout=30)
    r.connect()
    try:
        yield r
    finally:
        r.close()


# --- 1. one command: exit code, streams, timings ------------------------------------------------

@pytest.mark.integration
@needs_sshd
def test_run_reports_exit_code_streams_and_guest_seconds(remote: Remote) -> None:
    res = remote.run("echo hi; echo err >&2; exit 3")
    assert isinstance(res, CommandResult)
    assert res.exit_code == 3
    assert res.stdout == "hi\n"
    assert res.stderr == "err\n"
    assert MARKER not in res.stderr
    assert res.failed and not res.succeeded
    assert isinstance(res.guest_seconds, float)
    assert 0 <= res.guest_seconds <= res.seconds
    assert res.command == "echo hi; echo err >&2; exit 3"
    assert res.user == remote.endpoint.user

    ok = remote.run("true")
    assert ok.exit_code == 0 and ok.succeeded and not ok.failed
    assert ok.stdout == "" and ok.stderr == ""


# --- 2. many commands, one connection -----------------------------------------------------------

@pytest.mark.integration
@needs_sshd
def test_many_commands_reuse_one_transport(remote: Remote) -> None:
    assert remote._client is not None
    transport = remote._client.get_transport()
    assert transport is not None and transport.is_active()
    seconds = []
    for _ in range(20):
        res = remote.run("true")
        assert res.succeeded
        seconds.append(res.seconds)
        assert remote._client is not None
        assert remote._client.get_transport() is transport
    print(f"median seconds per command over one connection: {statistics.median(seconds):.4f} "
          f"(min {min(seconds):.4f}, max {max(seconds):.4f})")


# --- 3. as root with a stdin script -------------------------------------------------------------

@pytest.mark.integration
@needs_sshd
@pytest.mark.skipif(shutil.which("sudo") is None,
                    reason="sudo is not installed here; as_root=True runs 'sudo -n bash -s' even for root")
def test_as_root_runs_stdin_script_through_sudo(remote: Remote) -> None:
    res = remote.run("ignored", as_root=True, stdin="echo $((6*7))")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "42\n"
    assert res.user == "root"


# --- 4. host key pinning ------------------------------------------------------------------------

@pytest.mark.integration
@needs_sshd
def test_host_key_is_pinned_and_a_changed_key_is_refused_at_once(
        sshd: Sshd, client_key: tuple[Path, str], known_hosts: Path) -> None:
    first_key = sshd.host_key_blob
    with make_remote(sshd, client_key[0], known_hosts, connect_timeout=20) as r:
        assert r.run("true").succeeded
    pinned = known_hosts.read_text(encoding="utf-8")
    assert first_key in pinned
    assert f"[127.0.0.1]:{sshd.port}" in pinned

    with make_remote(sshd, client_key[0], known_hosts, connect_timeout=20) as r:  # same key: fine
        assert r.run("echo again").stdout == "again\n"
    assert known_hosts.read_text(encoding="utf-8") == pinned

    sshd.stop()
    sshd.new_host_key()
    assert sshd.host_key_blob != first_key
    sshd.start()

    r = make_remote(sshd, client_key[0], known_hosts, connect_timeout=60)
    started = time.monotonic()
    with pytest.raises(errors.TestbedError) as info:
        r.connect()
    took = time.monotonic() - started
    print(f"changed host key refused after {took:.2f}s")
    assert "host key" in info.value.message and "changed" in info.value.message
    assert info.value.hint is not None and str(known_hosts) in info.value.hint
    assert took < 5
    assert r._client is None
    assert known_hosts.read_text(encoding="utf-8") == pinned  # the new key was not pinned


# --- 5. nothing listening -----------------------------------------------------------------------

def connect_to_closed_port(ssh_user: str, key: Path, known_hosts: Path) -> tuple[LabError, float]:
    r = Remote(Endpoint("127.0.0.1", free_port(), ssh_user, key), known_hosts, connect_timeout=3)
    started = time.monotonic()
    with pytest.raises(errors.TestbedError) as info:
        r.connect()
    took = time.monotonic() - started
    print(f"refused connection, connect_timeout=3: gave up after {took:.2f}s: {info.value.message}")
    return info.value, took


@pytest.mark.integration
@needs_sshd
def test_refused_connection_fails_with_attempts_and_does_not_hang(
        ssh_user: str, client_key: tuple[Path, str], known_hosts: Path) -> None:
    err, took = connect_to_closed_port(ssh_user, client_key[0], known_hosts)
    assert "waiting for" in err.message and "port" in err.message and "closed (connection refused)" in err.message
    m = re.search(r"\((\d+) tries", err.message)
    assert m is not None, err.message
    assert int(m.group(1)) >= 2
    assert err.hint is not None and "lab.status" in err.hint
    assert took < 15


@pytest.mark.integration
@needs_sshd
def test_refused_connection_keeps_trying_for_the_whole_connect_timeout(
        ssh_user: str, client_key: tuple[Path, str], known_hosts: Path) -> None:
    _, took = connect_to_closed_port(ssh_user, client_key[0], known_hosts)
    assert 2.9 <= took < 8


# --- 6. a server that accepts and never speaks ----------------------------------------------------

@pytest.mark.integration
@needs_sshd
def test_stalled_server_is_given_up_on_in_bounded_time(
        ssh_user: str, client_key: tuple[Path, str], known_hosts: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stall() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                held.append(conn)  # never send a banner

    thread = threading.Thread(target=accept_and_stall, daemon=True)
    thread.start()
    try:
        r = Remote(Endpoint("127.0.0.1", listener.getsockname()[1], ssh_user, client_key[0]), known_hosts,
                   connect_timeout=5)
        started = time.monotonic()
        with pytest.raises(errors.TestbedError) as info:
            r.connect()
        took = time.monotonic() - started
        print(f"stalled server given up after {took:.2f}s: {info.value.message}")
        assert "sshd does not answer its banner" in info.value.message
        assert took < 15
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


# --- 7. the connection drops while a command runs ----------------------------------------------

@pytest.mark.integration
@needs_sshd
def test_dropped_connection_mid_command_raises_naming_the_step(sshd: Sshd, remote: Remote) -> None:
    assert sshd.proc is not None
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = remote.run("sleep 30", timeout=60, step="demo-step")
        except LabError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    sessions: list[int] = []
    while time.monotonic() < deadline and not any("sleep 30" in cmdline(p) for p in descendants(sshd.proc.pid)):
        time.sleep(0.1)
    sessions = children(sshd.proc.pid)
    assert sessions, "the session's sshd process should exist"
    killed_at = time.monotonic()
    kill_if_same({pid: cmdline(pid) for pid in sessions})
    thread.join(timeout=15)
    print(f"dropped connection noticed {time.monotonic() - killed_at:.2f}s after killing {sessions}; {outcome}")
    assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, errors.TestbedError), outcome  # exit code 3: the testbed, not the bug
    assert "dropped" in error.message and "demo-step" in error.message


# --- 8. a command that outlives its timeout -----------------------------------------------------

@pytest.mark.integration
@needs_sshd
def test_command_timeout_is_enforced(remote: Remote) -> None:
    started = time.monotonic()
    with pytest.raises(errors.TestbedError) as info:
        remote.run("sleep 20", timeout=2, step="slow-step")
    took = time.monotonic() - started
    assert "did not finish within 2s" in info.value.message and "slow-step" in info.value.message
    assert took < 10
    assert remote._client is None  # the connection was closed, the next run reconnects


# --- 9. a key the server does not know ---------------------------------------------------------

@pytest.mark.integration
@needs_sshd
def test_unknown_key_is_refused_quickly(sshd: Sshd, tmp_path: Path, known_hosts: Path) -> None:
    stranger = tmp_path / "stranger" / "id_ed25519"
    ensure_keypair(stranger, stranger.with_suffix(".pub"), "stranger")
    r = make_remote(sshd, stranger, known_hosts, connect_timeout=60)
    started = time.monotonic()
    with pytest.raises(errors.TestbedError) as info:
        r.connect()
    assert "refused" in info.value.message and f"{sshd.user}@127.0.0.1:{sshd.port}" in info.value.message
    assert time.monotonic() - started < 5


# --- 10. the persistent shell verify uses ----------------------------------------------------------

@pytest.mark.integration
@needs_sshd
def test_persistent_shell_frames_each_command(remote: Remote) -> None:
    shell = Shell(remote, as_root=False, user=remote.endpoint.user, label="the test sshd")
    try:
        first = shell.run("printf 'no newline'; echo oops >&2; exit 4")
        assert (first.exit_code, first.stdout, first.stderr) == (4, "no newline", "oops\n")
        assert first.guest_seconds is not None and 0 <= first.guest_seconds <= first.seconds
        # a command that reads stdin must not swallow the next command
        reader = shell.run("cat; echo after")
        assert reader.stdout == "after\n"
        script = shell.run("ignored", stdin="x=$((6*7))\necho \"$x\"\nexit 0\n")
        assert script.stdout == "42\n" and script.exit_code == 0
        echo = shell.run("echo $$")
        assert shell.run("echo $$").stdout != echo.stdout  # each command in its own bash -c
        times = [shell.run("true").seconds for _ in range(20)]
        print(f"persistent shell: median {statistics.median(times) * 1000:.1f} ms per command")
    finally:
        shell.close()


@pytest.mark.integration
@needs_sshd
@pytest.mark.skipif(shutil.which("sudo") is None, reason="sudo is not installed here")
def test_root_shell_runs_through_sudo(remote: Remote) -> None:
    shell = Shell(remote, as_root=True, user=remote.endpoint.user)
    try:
        assert shell.run("id -u").stdout == "0\n"
        assert shell.user == "root"
    finally:
        shell.close()


@pytest.mark.integration
@needs_sshd
def test_persistent_shell_timeout_then_recovers(remote: Remote) -> None:
    shell = Shell(remote, as_root=False, user=remote.endpoint.user)
    try:
        started = time.monotonic()
        with pytest.raises(errors.TestbedError, match="did not finish within 1s during step 'hang'"):
            shell.run("sleep 30", timeout=1, step="hang")
        assert time.monotonic() - started < 5
        assert shell.run("echo back").stdout == "back\n"
    finally:
        shell.close()
