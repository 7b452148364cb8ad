"""Shells on the lab's virtio-serial ports: the admin's and root's shells that survive a snapshot revert.

An SSH connection dies with every revert (the guest's TCP state goes back to the snapshot's), and a
new login after a revert costs 3-8 s on TCG (measured: sshd's fork and key exchange, a new PAM and
logind session, sudo's PAM stack, all of it in code QEMU must translate again after the load). So
lab.up starts two shells *inside the admin's SSH login session* before it takes the baseline
snapshot, reading their commands from virtio-serial ports instead of the SSH channel:

    lab.admin  (stdin and stdout)  lab.admin.err (stderr)  bash, as the admin, in its login session
    lab.root   (stdin and stdout)  lab.root.err  (stderr)  sudo -n bash, started from that session

The snapshot holds them waiting for input, so after a revert (QEMU loadvm in the same process: the
host side of each port stays connected) the next command runs at once, in the same session, cgroup
and environment as a command typed over SSH: a revert and the first command take about 0.5 s
(measured, against 4.7-8.3 s with a new SSH login). Measured on bookworm-unified under TCG.

The host side of each port is a unix socket of QEMU (libvirt's channel, source mode bind), on the
libvirt host: reached directly here, or through the libvirt host's SSH (an exec channel running a
perl relay: perl-base, with IO::Socket::UNIX, is essential on Debian). The guest reads EOF from a
port whose host side is not connected, so the host must be connected before a revert and while the
shells are started; a shell whose host side went away ends, and the next revert brings it back.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lab.remote.shell import frame
from lab.remote.ssh import CommandResult, command_failed

PORTS = ("lab.admin", "lab.admin.err", "lab.root", "lab.root.err")
GUEST_DIR = "/dev/virtio-ports"
# Debian's perl-base (essential) has IO::Socket::UNIX: the relay copies stdin to the socket and (a
# child) the socket to stdout; when stdin ends (the SSH channel closed) it ends both, exit 0.
PERL_RELAY = ("use IO::Socket::UNIX; $|=1; my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die \"connect: $!\\n\";"
              " my $b; my $p = fork(); if (!$p) { while (sysread($s, $b, 65536)) { syswrite(STDOUT, $b) } "
              "kill 'TERM', getppid(); exit 0 } while (sysread(STDIN, $b, 65536)) { syswrite($s, $b) } "
              "kill 'TERM', $p; exit 0")


class Stream(Protocol):
    """A byte stream both ways with a file descriptor for select: a socket or a paramiko Channel."""

    def sendall(self, data: bytes) -> None:
        """Send all of data (bytes), blocking until it is sent; OSError (or paramiko's SSHException) when
        the other end is gone."""

    def recv(self, size: int) -> bytes:
        """Up to size bytes that arrived; b"" when the other end closed."""

    def fileno(self) -> int:
        """A file descriptor select() reports readable when recv() has something (or the end closed)."""

    def close(self) -> None:
        """Close this end."""


@dataclass
class Ports:
    """The four connected host ends, by port name; close() closes them all."""

    streams: dict[str, Stream]

    def close(self) -> None:
        """Close every stream (an OSError while closing one is ignored) and forget them."""
        for stream in self.streams.values():
            with contextlib.suppress(OSError):
                stream.close()
        self.streams = {}


def connect_local(paths: dict[str, str], timeout: float = 10) -> Ports:
    """Connect to each port's unix socket on this machine ({port name: socket path}).
    Raises OSError when one cannot be reached (the others are closed again)."""
    streams: dict[str, Stream] = {}
    try:
        for name, path in paths.items():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(path)
            sock.setblocking(False)
            streams[name] = sock
    except OSError:
        Ports(streams).close()
        raise
    return Ports(streams)


def relay_command(path: str) -> str:
    """The command a libvirt host runs over SSH to relay one port's socket (perl, see PERL_RELAY)."""
    quoted = "'" + PERL_RELAY.replace("'", "'\\''") + "'"
    return f"exec perl -e {quoted} '{path}'"


class PortShell:
    """One persistent bash on a port pair: commands framed like lab.remote.shell.Shell's (a random
    token, the exit code and the guest's own microseconds on stdout; the token on stderr), so results
    are cut exactly; the same run() as Shell."""

    IDLE_CHECK_S = 5.0

    def __init__(self, ports: Ports, *, as_root: bool, user: str, label: str = "the lab",
                 liveness: Callable[[], None] | None = None) -> None:
        prefix = "lab.root" if as_root else "lab.admin"
        self.out = ports.streams[prefix]
        self.err = ports.streams[f"{prefix}.err"]
        self.as_root = as_root
        self.user = "root" if as_root else user
        self.label = label
        self.liveness = liveness

    def close(self) -> None:
        """Nothing to do per shell: the ports are closed with their Ports."""
        return None

    def run(self, command: str, *, stdin: str | None = None, timeout: float = 300, step: str = "") -> CommandResult:
        """Run command (stdin: fed to it as a here-document); raises TestbedError (via
        lab.remote.ssh.command_failed) when the shell does not answer within timeout seconds or its
        port closed."""
        token = "__LAB_" + uuid.uuid4().hex
        started = time.monotonic()
        try:
            self._drain()
            self.out.sendall(frame(command, token, stdin).encode())
            out, err = self._read_until(token, started + timeout)
        except (OSError, EOFError) as exc:  # TimeoutError is an OSError
            raise command_failed(exc, command, step, timeout, f"{self.label} (its {self.user} port shell)") from None
        m = re.search(rf"\n{token} (-?\d+) (\d+)\n", out)
        assert m is not None
        return CommandResult(command=command, user=self.user, exit_code=int(m.group(1)),
                             stdout=out[: m.start()], stderr=err[: err.index(f"\n{token}\n")],
                             seconds=time.monotonic() - started, guest_seconds=int(m.group(2)) / 1e6)

    def _drain(self) -> None:
        """Drop what the streams hold from before (nothing, unless a command was cut off)."""
        for stream in (self.out, self.err):
            while select.select([stream], [], [], 0)[0]:
                data = _recv(stream)
                if data is None:
                    break
                if not data:
                    raise EOFError("the port shell's host end closed")

    def _read_until(self, token: str, deadline: float) -> tuple[str, str]:
        out, err = bytearray(), bytearray()
        out_end = re.compile(rf"\n{token} -?\d+ \d+\n".encode())
        err_end = f"\n{token}\n".encode()
        quiet_since = time.monotonic()
        while not (out_end.search(out) and err_end in err):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.out, self.err], [], [], min(remaining, 1.0))
            for stream in ready:
                data = _recv(stream)
                if data == b"":
                    raise EOFError("the port shell ended before the command finished")
                if data:
                    (out if stream is self.out else err).extend(data)
            if ready:
                quiet_since = time.monotonic()
            elif self.liveness is not None and time.monotonic() - quiet_since >= self.IDLE_CHECK_S:
                self.liveness()
                quiet_since = time.monotonic()
        return out.decode(errors="replace"), err.decode(errors="replace")


def _recv(stream: Stream) -> bytes | None:
    """What the stream holds now: bytes, b"" at its end, None when a non-blocking socket had
    nothing after all (select can say readable spuriously)."""
    try:
        return stream.recv(65536)
    except BlockingIOError:
        return None


def start_command(admin: str, chown: bool = True) -> str:
    """The command the admin runs over SSH (in its login session, before the baseline snapshot)
    to start both port shells in the background: its own bash on lab.admin, root's `sudo -n bash`
    on lab.root; exit 0 once both are started (whether they answer is proven on the ports). chown:
    first give the admin its two ports with sudo (a layer's saved state has them given already,
    lab.images.layer). The host ends must be connected first (a port without its host end reads
    EOF at once)."""
    a, ae, r, re_ = (f"{GUEST_DIR}/{p}" for p in PORTS)
    return ((f"sudo -n chown {admin} {a} {ae} && " if chown else "")
            + f"{{ nohup bash --noprofile --norc <>{a} >&0 2>{ae} & }} && "
            f"{{ nohup sudo -n bash -c 'exec bash --noprofile --norc <>{r} >&0 2>{re_}' >/dev/null 2>&1 "
            "</dev/null & }")
