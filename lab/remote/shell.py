"""A long-lived bash on one SSH channel: many commands, no new channel, PAM session or sudo each.

Opening an SSH channel costs a login session in the guest (PAM, logind), which on TCG is
~0.1 s per command; verify runs ~40 commands, so a persistent shell (one as the admin, one
`sudo bash` as root) keeps the overhead to a few milliseconds per command. Each command is framed
by a random token: the shell prints the token, the exit code and the guest-side seconds on stdout
and the token on stderr when the command is done, so both streams are cut exactly.
"""

from __future__ import annotations

import re
import select
import shlex
import time
import uuid
from collections.abc import Callable

import paramiko

from lab.remote.ssh import CommandResult, command_failed

NOW = "${EPOCHREALTIME:-$(date +%s.%6N)}"  # bash >= 5 has it built in: no fork to read the clock


def frame(command: str, token: str, stdin: str | None = None) -> str:
    """The text sent to the shell for one command."""
    if stdin is not None:
        body = f"bash -s <<'{token}_IN'\n{stdin.rstrip(chr(10))}\n{token}_IN\n"
    else:
        body = f"bash -c {shlex.quote(command)} </dev/null\n"
    return (
        f"__s={NOW}\n{body}__rc=$?\n__e={NOW}\n"
        f"printf '\\n{token} %s %s\\n' \"$__rc\" \"$(( ${{__e/./}} - ${{__s/./}} ))\"\n"
        f"printf '\\n{token}\\n' >&2\n"
    )


class Shell:
    """One bash (as the SSH user, or as root through `sudo -n`) kept open over one channel."""

    IDLE_CHECK_S = 5.0  # seconds of silence after which liveness() is asked

    def __init__(self, transport_source: object, *, as_root: bool, user: str, label: str = "the lab",
                 liveness: Callable[[], None] | None = None) -> None:
        """transport_source: a lab.remote.ssh.Remote; liveness: called after every IDLE_CHECK_S of
        silence, raises (e.g. TestbedError) when the machine behind the connection is gone, so a dead
        VM is reported in seconds rather than after the command's timeout."""
        self._source = transport_source  # a lab.remote.Remote: gives the (re)connected transport
        self.liveness = liveness
        self.as_root = as_root
        self.user = "root" if as_root else user
        self.label = label
        self._channel: paramiko.Channel | None = None

    def _open(self) -> paramiko.Channel:
        transport = self._source.transport()  # type: ignore[attr-defined]
        channel = transport.open_session(timeout=30)
        channel.exec_command("sudo -n bash --noprofile --norc" if self.as_root else "bash --noprofile --norc")
        return channel

    def close(self) -> None:
        """Close the shell's channel (the shell ends with it); the next run() opens a new one. No-op when closed."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def run(self, command: str, *, stdin: str | None = None, timeout: float = 300, step: str = "") -> CommandResult:
        """Run command in this shell (`bash -c COMMAND </dev/null`), opening the channel first when there is
        none. With stdin, the shell runs stdin itself as the script (`bash -s` from a here-document) and
        command only names it in messages. timeout: seconds for the whole command (step names it in errors).

        Returns a CommandResult: user (root or the SSH user), exit code (a non-zero exit is returned, not
        raised), stdout and stderr exactly as printed, seconds on the host from the call to the end, and
        guest_seconds the guest measured (microsecond resolution). Raises TestbedError (command_failed)
        when the command does not finish within timeout or the channel or shell breaks off (the shell is
        closed then: a hung command goes with it); whatever liveness raises goes up as it is, the shell closed."""
        token = "__LAB_" + uuid.uuid4().hex
        started = time.monotonic()
        try:
            if self._channel is None or self._channel.closed:
                self._channel = self._open()
            self._channel.sendall(frame(command, token, stdin).encode())
            out, err = self._read_until(self._channel, token, started + timeout, self.liveness)
        except (OSError, paramiko.SSHException, EOFError) as exc:  # TimeoutError is an OSError
            self.close()  # a hung command goes with its shell; the next call opens a new one
            raise command_failed(exc, command, step, timeout, self.label) from None
        except BaseException:  # liveness said the VM is gone, or Ctrl-C: the command's output is lost
            self.close()
            raise
        m = re.search(rf"\n{token} (-?\d+) (\d+)\n", out)
        assert m is not None
        return CommandResult(command=command, user=self.user, exit_code=int(m.group(1)),
                             stdout=out[: m.start()], stderr=err[: err.index(f"\n{token}\n")],
                             seconds=time.monotonic() - started, guest_seconds=int(m.group(2)) / 1e6)

    @classmethod
    def _read_until(cls, channel: paramiko.Channel, token: str, deadline: float,
                    liveness: Callable[[], None] | None = None) -> tuple[str, str]:
        out, err = bytearray(), bytearray()
        quiet_since = time.monotonic()
        out_end = re.compile(rf"\n{token} -?\d+ \d+\n".encode())
        err_end = f"\n{token}\n".encode()
        while not (out_end.search(out) and err_end in err):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            select.select([channel], [], [], min(remaining, 1.0))
            got = False
            while channel.recv_ready():
                out += channel.recv(65536)
                got = True
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
                got = True
            if not got and (channel.closed or channel.exit_status_ready()):
                raise EOFError("the shell ended before the command finished")
            if got:
                quiet_since = time.monotonic()
            elif liveness is not None and time.monotonic() - quiet_since >= cls.IDLE_CHECK_S:
                liveness()
                quiet_since = time.monotonic()
        return out.decode(errors="replace"), err.decode(errors="replace")
