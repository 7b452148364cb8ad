"""One paramiko connection per lab; every command's result, with host and guest-side seconds.

The guest measures each command itself (bash's EPOCHREALTIME around the command), so reports can
tell the guest's own work from connection overhead. Host keys live in the lab's own known_hosts:
the first contact pins the key, a changed key is refused with a clear error.

On a remote libvirt host the guest's address is only reachable from that host: the connection then
runs inside a direct-tcpip channel of an SSH connection to the host (a jump, like `ssh -J`), with the
host's key checked against the tool's own file (lab.host.sshhost), never ~/.ssh/known_hosts.

A guest that does not answer is said in one line: why the last attempt failed (no route, port
closed, no SSH banner, ...), after a diagnose() callback (the machine layer asks libvirt: is the
domain running, is its network there) had its say. paramiko's own log never reaches the terminal:
it goes to the lab's log file, or nowhere.
"""

from __future__ import annotations

import errno
import getpass
import logging
import re
import select
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import paramiko
from paramiko.ssh_exception import NoValidConnectionsError

from lab.core.errors import LabError, TestbedError
from lab.core.wait import NotYet, wait_until

MARKER = "__LAB_GUEST_SECONDS__"
MARKER_RE = re.compile(rf"\n?{MARKER} (\d+)\n?$")
DIAGNOSE_S = 5.0  # while a guest does not answer, how often diagnose() is asked (seconds)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# paramiko logs a failed handshake at ERROR with its traceback; Python's last-resort handler would
# print that on the terminal. Nothing of paramiko's goes there: only into a lab's log (log_to()).
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False
_log_files: dict[Path, str] = {}


def log_to(log_file: Path | None) -> str:
    """The paramiko log channel whose lines go to log_file (appended; made once per file), or the
    silent "paramiko.lab" channel without one."""
    if log_file is None:
        return "paramiko.lab"
    path = log_file.resolve()
    if path not in _log_files:
        name = f"paramiko.lab.f{len(_log_files)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        _log_files[path] = name
    return _log_files[path]


def unreachable_why(exc: BaseException, port: int) -> str:
    """One phrase for why an SSH connection attempt failed: port closed, no route, no answer, no
    SSH banner, the jump host's connection to the guest refused, or the exception as it is."""
    if isinstance(exc, NoValidConnectionsError) and exc.errors:
        return unreachable_why(next(iter(exc.errors.values())), port)
    code = getattr(exc, "errno", None)
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return f"port {port} is closed (connection refused)"
    if code == errno.EHOSTUNREACH:
        return "no route to host (nothing answers for its address)"
    if code == errno.ENETUNREACH:
        return "no route to its network (no interface here reaches it)"
    if isinstance(exc, socket.timeout | TimeoutError):
        return f"no answer to a TCP connection to port {port} (the packets go nowhere)"
    if isinstance(exc, paramiko.ChannelException):
        return f"the libvirt host could not connect to it ({exc.text})"
    if "protocol banner" in str(exc):
        return f"sshd does not answer its banner (port {port} accepts, but nothing speaks SSH)"
    if "No existing session" in str(exc):  # paramiko: the handshake's time ran out before a key exchange
        return f"sshd does not answer its banner or key exchange in time (port {port} accepts, but no SSH comes)"
    if isinstance(exc, EOFError | paramiko.SSHException):
        return f"the SSH handshake broke off ({type(exc).__name__}: {exc or 'end of file'})"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class CommandResult:
    """What one command did, like testinfra's CommandResult."""

    command: str
    user: str
    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    guest_seconds: float | None

    @property
    def succeeded(self) -> bool:
        """The command exited 0."""
        return self.exit_code == 0

    @property
    def failed(self) -> bool:
        """The command exited non-zero (or -1: paramiko's value when no exit status came)."""
        return self.exit_code != 0


@dataclass(frozen=True)
class Jump:
    """The SSH host the guest is reached through (a remote libvirt host). key_file None: the
    user's agent and default keys. strict: the host must already be in known_hosts; else the first
    contact pins it there."""

    host: str
    port: int
    user: str
    key_file: Path | None
    known_hosts: Path
    strict: bool
    timeout: float
    label: str


@dataclass(frozen=True)
class Endpoint:
    """Where the guest's sshd listens and how the lab logs in: host (an address, as seen from this
    machine, or from the jump host when there is one), TCP port, user (the scenario's admin, or root for
    a layer's build VM), key_file (the private key, e.g. <lab>/ssh/id_ed25519), jump (None: reached
    directly)."""

    host: str
    port: int
    user: str
    key_file: Path
    jump: Jump | None = None


def timed(command: str) -> str:
    """Wrap a command so the guest prints its own duration (microseconds) as the last stderr line."""
    now = "${EPOCHREALTIME:-$(date +%s.%6N)}"
    return (
        f"s={now}; bash -c {shlex.quote(command)}; rc=$?; e={now}; "
        f"printf '\\n{MARKER} %s\\n' \"$(( ${{e/./}} - ${{s/./}} ))\" >&2; exit $rc"
    )


def command_failed(exc: BaseException, command: str, step: str, timeout: float, label: str) -> LabError:
    """The one wording for a command that timed out or lost its connection (exec or shell)."""
    what = f" during step {step!r}" if step else ""
    if isinstance(exc, socket.timeout | TimeoutError):
        return TestbedError(f"command did not finish within {timeout:.0f}s{what}: {command[:200]}",
                        hint="raise command_timeout if the guest is just slow")
    return TestbedError(f"the SSH connection to {label} dropped{what} ({type(exc).__name__}: {exc})",
                    hint=f"command: {command[:200]}; check the VM with: invoke lab.status")


def split_marker(stderr: str) -> tuple[str, float | None]:
    """(stderr without the line timed() appended, the guest's seconds from it), or (stderr, None) when it
    carries no such line (the command ended the shell, the connection broke)."""
    m = MARKER_RE.search(stderr)
    if not m:
        return stderr, None
    return stderr[: m.start()], int(m.group(1)) / 1e6


class Remote:
    """A persistent SSH connection to the lab's admin account."""

    def __init__(self, endpoint: Endpoint, known_hosts: Path, *, connect_timeout: float = 300,
                 command_timeout: float = 300, label: str = "the lab", diagnose: Callable[[], None] | None = None,
                 log_file: Path | None = None,
                 hint: str = "is the VM running? see: invoke lab.status; raise ssh_timeout if it is just slow") -> None:
        """endpoint: where sshd listens; known_hosts: the lab's own pinned host keys; connect_timeout
        and command_timeout in seconds; label: how messages name the machine. diagnose: asked every
        DIAGNOSE_S while the guest does not answer; raises TestbedError when it knows why (the
        domain stopped, its network is gone), which then ends the wait at once. log_file: where
        paramiko's own log goes (else nowhere). hint: the next step when the guest does not answer."""
        self.endpoint = endpoint
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.label = label
        self.diagnose = diagnose
        self.log_channel = log_to(log_file)
        self.hint = hint
        self._client: paramiko.SSHClient | None = None
        self._jump: paramiko.SSHClient | None = None

    def __enter__(self) -> Remote:
        if self._client is None:  # a Remote connected earlier (lab.up's early login) is kept
            self.connect()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection to the guest and the one to the jump host; the next run() or transport()
        connects again. No-op when nothing is open."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._jump is not None:
            self._jump.close()
            self._jump = None

    def _jump_transport(self) -> paramiko.Transport | None:
        """The live SSH transport to the jump host (opened on first use); None without a jump.
        Raises TestbedError naming the host when it cannot be reached, refuses the key, or its
        host key is unknown (strict) or changed: never retried, a jump host does not boot."""
        jump = self.endpoint.jump
        if jump is None:
            return None
        if self._jump is not None:
            transport = self._jump.get_transport()
            if transport is not None and transport.is_active():
                return transport
            self._jump.close()
            self._jump = None
        client = paramiko.SSHClient()
        client.set_log_channel(self.log_channel)
        client.load_host_keys(str(jump.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy() if jump.strict else paramiko.AutoAddPolicy())
        where = f"libvirt host {jump.label}"
        try:
            client.connect(jump.host, port=jump.port, username=jump.user or getpass.getuser(),
                           key_filename=str(jump.key_file) if jump.key_file else None, timeout=jump.timeout,
                           banner_timeout=jump.timeout, auth_timeout=jump.timeout,
                           allow_agent=jump.key_file is None, look_for_keys=jump.key_file is None)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise TestbedError(f"the host key of {where} changed (expected "
                               f"{exc.expected_key.get_fingerprint().hex()}, got {exc.key.get_fingerprint().hex()})",
                               hint=f"check the host, then fix {jump.known_hosts}") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise TestbedError(f"{where} refused the key ({exc})",
                               hint="put the key in the host's authorized_keys, or set keyfile= in the URI") from None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            client.close()
            unknown = "not found in known_hosts" in str(exc)
            raise TestbedError(f"{where} " + (f"is not in {jump.known_hosts} (strict host-key checking)" if unknown
                               else f"is unreachable over SSH ({type(exc).__name__}: {exc})"),
                               hint="add its key to that file" if unknown else
                               "is the host up and sshd running? see: invoke lab.doctor --libvirt-uri URI") from None
        if not jump.strict:
            client.save_host_keys(str(jump.known_hosts))
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(5)
        # a refused direct-tcpip channel (the guest still booting) is retried and reported by connect();
        # paramiko would also log each refusal at ERROR on stderr
        transport.set_log_channel(self.log_channel)
        self._jump = client
        return transport

    def host_exec(self, command: str, timeout: float = 30) -> paramiko.Channel:
        """An exec channel on the jump host (the remote libvirt host) running command, its stdin
        and stdout the channel's; raises TestbedError when there is no jump or it cannot be reached."""
        transport = self._jump_transport()
        if transport is None:
            raise TestbedError(f"{self.label} is not reached through a libvirt host: no host to run {command[:40]} on")
        try:
            channel = transport.open_session(timeout=timeout)
            channel.exec_command(command)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            raise TestbedError(f"could not run a command on the libvirt host of {self.label} ({exc})") from None
        return channel

    def _new_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.set_log_channel(self.log_channel)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        self.known_hosts.touch(mode=0o600, exist_ok=True)
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # first contact: pin into lab file
        return client

    def connect(self) -> None:
        """Connect, trying again until connect_timeout (seconds): a refused, unanswered or broken-off
        attempt is tried again within a second, and diagnose() is asked every DIAGNOSE_S meanwhile.
        Raises TestbedError at once for a changed host key or a refused lab key (never retried) or
        when diagnose() knows why; after connect_timeout, one naming why the last attempt failed."""
        ep = self.endpoint
        deadline = time.monotonic() + self.connect_timeout
        asked = [0.0]

        def attempt() -> bool:
            jump = self._jump_transport()
            client = self._new_client()
            left = max(1.0, deadline - time.monotonic())
            try:  # the banner's wait ends first: a silent server is named as such, not as a failed negotiation
                sock = None
                if jump is not None:  # the guest's sshd, reached from the libvirt host
                    sock = jump.open_channel("direct-tcpip", (ep.host, ep.port), ("127.0.0.1", 0),
                                             timeout=min(15.0, left))
                client.connect(ep.host, port=ep.port, username=ep.user, key_filename=str(ep.key_file),
                               timeout=min(15.0, left), banner_timeout=max(1.0, min(15.0, left) - 1),
                               auth_timeout=min(30.0, left), allow_agent=False, look_for_keys=False, sock=sock)
            except paramiko.BadHostKeyException as exc:
                client.close()
                self.close()
                raise TestbedError(
                    f"the host key of {self.label} at {ep.host}:{ep.port} changed "
                    f"(expected {exc.expected_key.get_fingerprint().hex()}, got {exc.key.get_fingerprint().hex()})",
                    hint=f"if the VM was re-created, run lab.destroy and lab.up; else investigate. "
                         f"Pinned keys: {self.known_hosts}",
                ) from None
            except paramiko.AuthenticationException as exc:
                client.close()
                self.close()
                raise TestbedError(f"{ep.user}@{ep.host}:{ep.port} refused the lab's key ({exc})",
                                   hint="re-provision with: invoke lab.up") from None
            except (OSError, paramiko.SSHException, EOFError) as exc:
                client.close()
                why = unreachable_why(exc, ep.port)
                if self.diagnose is not None and time.monotonic() - asked[0] >= DIAGNOSE_S:
                    asked[0] = time.monotonic()
                    try:
                        self.diagnose()
                    except LabError:
                        self.close()
                        raise
                raise NotYet(why) from None
            client.save_host_keys(str(self.known_hosts))
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(15)
            self._client = client
            return True

        try:
            wait_until(f"{self.label} to answer SSH at {ep.host}:{ep.port}", attempt, self.connect_timeout,
                       interval=0.25, max_interval=1.0, hint=self.hint)
        except TestbedError:
            if self._client is None:
                self.close()
            raise

    def transport(self) -> paramiko.Transport:
        """The live transport, reconnecting (with the same host key checks) when it has gone."""
        if self._client is None:
            self.connect()
        assert self._client is not None
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            self.close()
            self.connect()
            assert self._client is not None
            transport = self._client.get_transport()
            assert transport is not None
        return transport

    def run(self, command: str, *, as_root: bool = False, stdin: str | None = None,
            timeout: float | None = None, step: str = "") -> CommandResult:
        """Run one command as the admin (or as root through sudo -n); never waits past timeout."""
        if self._client is None:
            self.connect()
        assert self._client is not None
        timeout = timeout or self.command_timeout
        inner = f"sudo -n bash -c {shlex.quote(command)}" if as_root else command
        if as_root and stdin is not None:
            inner = "sudo -n bash -s"
        wrapped = timed(inner)
        started = time.monotonic()
        try:
            transport = self._client.get_transport()
            if transport is None or not transport.is_active():
                raise paramiko.SSHException("connection is closed")
            channel = transport.open_session(timeout=30)
            channel.settimeout(timeout)
            channel.exec_command(wrapped)
            if stdin is not None:
                channel.sendall(stdin.encode())
            channel.shutdown_write()
            out, err = self._collect(channel, started + timeout)
            exit_code = channel.recv_exit_status()
            if exit_code == -1 and not transport.is_active():
                raise paramiko.SSHException("connection closed before the command finished")
            channel.close()
        except (OSError, paramiko.SSHException, EOFError) as exc:
            self.close()
            raise command_failed(exc, command, step, timeout, self.label) from None
        seconds = time.monotonic() - started
        stderr, guest = split_marker(err)
        return CommandResult(command=command, user="root" if as_root else self.endpoint.user,
                             exit_code=exit_code, stdout=out, stderr=stderr, seconds=seconds, guest_seconds=guest)

    @staticmethod
    def _collect(channel: paramiko.Channel, deadline: float) -> tuple[str, str]:
        out, err = bytearray(), bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("deadline")
            select.select([channel], [], [], min(remaining, 1.0))
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                return out.decode(errors="replace"), err.decode(errors="replace")
