"""One paramiko connection per lab; every command's result, with host and guest-side seconds.

The guest measures each command itself (bash's EPOCHREALTIME around the command), so reports can
tell the guest's own work from connection overhead. Host keys live in the lab's own known_hosts:
the first contact pins the key, a changed key is refused with a clear error.
"""

from __future__ import annotations

import re
import select
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import paramiko

from lab.core.errors import LabError, TestbedError

MARKER = "__LAB_GUEST_SECONDS__"
MARKER_RE = re.compile(rf"\n?{MARKER} (\d+)\n?$")


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
        return self.exit_code == 0

    @property
    def failed(self) -> bool:
        return self.exit_code != 0


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    key_file: Path


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
    m = MARKER_RE.search(stderr)
    if not m:
        return stderr, None
    return stderr[: m.start()], int(m.group(1)) / 1e6


class Remote:
    """A persistent SSH connection to the lab's admin account."""

    def __init__(self, endpoint: Endpoint, known_hosts: Path, *, connect_timeout: float = 300,
                 command_timeout: float = 300, label: str = "the lab") -> None:
        self.endpoint = endpoint
        self.known_hosts = known_hosts
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.label = label
        self._client: paramiko.SSHClient | None = None

    def __enter__(self) -> Remote:
        if self._client is None:  # a Remote connected earlier (lab.up's early login) is kept
            self.connect()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _new_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        self.known_hosts.touch(mode=0o600, exist_ok=True)
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # first contact: pin into lab file
        return client

    def connect(self) -> None:
        """Connect with bounded retries until connect_timeout; a changed host key is never retried."""
        ep = self.endpoint
        deadline = time.monotonic() + self.connect_timeout
        delay, last = 0.25, "no attempt"
        attempts = 0
        while True:
            attempts += 1
            client = self._new_client()
            left = max(1.0, deadline - time.monotonic())
            try:
                client.connect(ep.host, port=ep.port, username=ep.user, key_filename=str(ep.key_file),
                               timeout=min(15.0, left), banner_timeout=min(30.0, left),
                               auth_timeout=min(30.0, left), allow_agent=False, look_for_keys=False)
            except paramiko.BadHostKeyException as exc:
                client.close()
                raise TestbedError(
                    f"the host key of {self.label} at {ep.host}:{ep.port} changed "
                    f"(expected {exc.expected_key.get_fingerprint().hex()}, got {exc.key.get_fingerprint().hex()})",
                    hint=f"if the VM was re-created, run lab.destroy and lab.up; else investigate. "
                         f"Pinned keys: {self.known_hosts}",
                ) from None
            except paramiko.AuthenticationException as exc:
                client.close()
                raise TestbedError(f"{ep.user}@{ep.host}:{ep.port} refused the lab's key ({exc})",
                               hint="re-provision with: invoke lab.up") from None
            except (OSError, paramiko.SSHException, EOFError) as exc:
                client.close()
                last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    raise TestbedError(
                        f"could not reach {self.label} over SSH at {ep.host}:{ep.port} within "
                        f"{self.connect_timeout:.0f}s ({attempts} attempts; last: {last})",
                        hint="is the VM running? see: invoke lab.status; raise ssh_timeout if it is just slow",
                    ) from None
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 1.0)  # a refused or unanswered attempt costs little; come back soon
                continue
            client.save_host_keys(str(self.known_hosts))
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(15)
            self._client = client
            return

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
