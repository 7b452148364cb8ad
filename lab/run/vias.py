"""How the runner carries out the vias that are more than a command line: cron and tty.

cron: the command becomes an `@reboot` line of the user's crontab, and cron is restarted with its
reboot mark removed. Debian's cron runs @reboot jobs when it starts and /run/crond.reboot does not
exist yet (it then creates it: "Skipping @reboot jobs -- not system startup" otherwise; strings of
Debian 12's /usr/sbin/cron, cron 3.0pl1-162), through the same job runner as any scheduled job
(fork, the `cron` PAM stack, setuid, /bin/sh -c). So the job runs at once, as cron runs jobs, with
no minute to wait and no clock to change. The job writes its output and, when it has ended, its exit
status (renamed into place, so a half-written output is never read); the runner waits for that,
bounded, then puts the user's crontab back as it was.

tty: a login at a terminal, as a person at the machine. A transient system service (outside any
session, as serial-getty@ttyS0.service is) runs agetty on a pseudo-terminal that `systemd-run --pty`
connects to the runner's own SSH pty; agetty logs the user in through /bin/login (`--autologin`:
login -f, the `login` PAM stack's session part, pam_systemd included, without the password prompt),
the runner waits for the shell's prompt, types the command, reads its output up to a marker that
carries the exit status, and types `exit`. Stdout and stderr are one stream on a terminal.
"""

from __future__ import annotations

import re
import shlex
import time
import uuid
from typing import Protocol

import paramiko

from lab.remote.ssh import CommandResult, command_failed

CRON_DIR = "/run/cgroup-lab-cron"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")


class RootShell(Protocol):
    """What run_cron needs: a shell that runs commands as root in the guest (lab.remote.shell.Shell with
    as_root, or the root shell on a virtio-serial port)."""

    def run(self, command: str, *, stdin: str | None = None, timeout: float = 300, step: str = "") -> CommandResult:
        """Run a root script (run_cron passes it as both command and stdin) within timeout seconds; the
        result, a non-zero exit included. Raises TestbedError on a timeout or a lost connection."""


def cron_line(command: str, job: str) -> str:
    """The crontab line: the command as typed (a multi-line one from a file next to the output),
    its stdout and stderr to files, its exit status renamed into place when it has ended. `%` is
    cron's newline: escaped (crontab(5))."""
    body = command if "\n" not in command else f"/bin/sh {job}/command.sh"
    body = body.replace("%", "\\%")
    return (f"@reboot {{ {body} ; }} >{job}/out 2>{job}/err; echo $? >{job}/rc.tmp && mv {job}/rc.tmp {job}/rc")


def cron_script(user: str, command: str, token: str, seconds: float) -> str:
    """The root script that installs the job, has cron run it, waits at most seconds for it to end,
    restores the user's crontab, prints the job's output and exits with its status (124 when cron did
    not finish it in time)."""
    q = shlex.quote
    job = f"{CRON_DIR}/{token}"
    tenths = max(1, int(seconds * 10))
    return f"""set -u
user={q(user)}
job={q(job)}
install -d -m 0755 {CRON_DIR}
install -d -m 0700 -o "$user" "$job"
if [ -n {q(command if chr(10) in command else '')} ]; then
  printf '%s\\n' {q(command)} > "$job/command.sh"; chown "$user" "$job/command.sh"
fi
if crontab -u "$user" -l > "$job.saved" 2>/dev/null; then had=1; else had=0; fi
printf '%s\\n' {q(cron_line(command, job))} | crontab -u "$user" - || exit 125
rm -f /run/crond.reboot
systemctl restart cron.service || {{ echo "cron.service did not restart" >&2; exit 125; }}
for _ in $(seq 1 {tenths}); do [ -e "$job/rc" ] && break; sleep 0.1; done
if [ "$had" = 1 ]; then crontab -u "$user" "$job.saved"; else crontab -u "$user" -r 2>/dev/null; fi
rm -f "$job.saved"
if [ ! -e "$job/rc" ]; then
  echo "cron did not run the job to its end within {seconds:g} s (journalctl -u cron says why)" >&2
  journalctl -u cron.service -n 5 --no-pager -o cat >&2 2>/dev/null
  exit 124
fi
cat "$job/out"; cat "$job/err" >&2
rc=$(cat "$job/rc"); rm -rf "$job"
exit "$rc"
"""


def run_cron(root: RootShell, user: str, command: str, step: str, timeout: float) -> CommandResult:
    """The command as a job of user's crontab, run by cron (see the module's docstring)."""
    token = uuid.uuid4().hex[:12]
    script = cron_script(user, command, token, max(5.0, timeout - 10))
    return root.run(script, stdin=script, step=step, timeout=timeout)


class TtyError(Exception):
    """The terminal login did not get to a prompt, or the command did not end in time."""


class TtyEnded(Exception):
    """The terminal session ended before the command did (a login refused, a nologin shell):
    text is what the terminal showed."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def run_tty(transport: paramiko.Transport, user: str, command: str, step: str, timeout: float,
            label: str = "the lab", shown: str = "") -> CommandResult:
    """The command typed at a terminal login of user (see the module's docstring); the admin's
    transport opens the channel. Raises TestbedError (via command_failed) when the login or the
    command does not finish within timeout seconds."""
    token = "LAB" + uuid.uuid4().hex[:16]
    unit = f"cgroup-lab-tty-{token[3:11]}"
    launcher = (f"sudo -n systemd-run --quiet --pty --collect --unit={unit} -p Type=exec "
                f"/sbin/agetty --autologin {shlex.quote(user)} --noclear --nohostname - dumb")
    started = time.monotonic()
    deadline = started + timeout
    channel: paramiko.Channel | None = None
    try:
        channel = transport.open_session(timeout=30)
        channel.get_pty(term="dumb", width=4000, height=50)
        channel.exec_command(launcher)
        _read_until(channel, deadline, lambda text: bool(re.search(r"[$#>] $", text)))
        # no echo of what is typed next, so the output is the command's alone; the markers are made
        # by printf, so the typed text never holds them
        channel.sendall(f"stty -echo; printf '%s_R\\n' {token}\n".encode())
        _read_until(channel, deadline, lambda text: bool(re.search(rf"\n{token}_R\n.*[$#>] $", text, re.DOTALL)))
        # one command list: the shell reads all of it (continuation prompts included) before it runs
        line = f"printf '%s_B\\n' {token}; {{ {command}\n}}; printf '\\n%s_E %s\\n' {token} \"$?\"\n"
        channel.sendall(line.encode())
        out = _read_until(channel, deadline, lambda text: bool(re.search(rf"\n{token}_E (\d+)\n", text)))
        channel.sendall(b"exit\n")
        _read_until(channel, min(deadline, time.monotonic() + 30), lambda text: False, until_closed=True)
    except TtyEnded as ended:
        channel.close()
        return CommandResult(command=shown or command, user=user, exit_code=1, stdout=ended.text, stderr="",
                             seconds=time.monotonic() - started, guest_seconds=None)
    except (OSError, paramiko.SSHException, EOFError, TtyError) as exc:
        if channel is not None:
            channel.close()
        raise command_failed(exc if not isinstance(exc, TtyError) else TimeoutError(str(exc)), shown or command,
                             step, timeout, label) from None
    channel.close()
    # continuation prompts ("> ") may stand before the first marker on its line
    body = out.split(f"{token}_B\n", 1)[-1]
    m = re.search(rf"\n{token}_E (\d+)\n", body)
    assert m is not None
    return CommandResult(command=shown or command, user=user, exit_code=int(m.group(1)), stdout=body[: m.start()],
                         stderr="", seconds=time.monotonic() - started, guest_seconds=None)


def _read_until(channel: paramiko.Channel, deadline: float, done, until_closed: bool = False) -> str:
    """Read the terminal's output (escape sequences and carriage returns dropped) until done(text)
    says so, the channel closes (until_closed) or the deadline passes (TtyError)."""
    raw = bytearray()
    while True:
        text = ANSI.sub("", raw.decode(errors="replace"))
        if done(text):
            return text
        if channel.exit_status_ready() and not channel.recv_ready():
            if until_closed:
                return text
            raise TtyEnded(text)
        if time.monotonic() > deadline:
            if until_closed:
                return text
            raise TtyError(f"no shell prompt or end of the command in time; last seen: {text[-300:]!r}")
        if channel.recv_ready():
            raw += channel.recv(65536)
        else:
            time.sleep(0.05)
