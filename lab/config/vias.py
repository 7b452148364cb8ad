"""The ways a process can be started (`via`), as data: what each one is, which PAM stack it runs,
what it needs in the guest, and the facts lab.check uses to refuse what cannot work.

Where a fact differs by release it is keyed by the target's systemd version (targets/*.toml,
`systemd`), never found by booting. The session, cgroup and limits each via gives on each Debian
target were measured by tests/test_vias_vm.py and are tabled in the README.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Via:
    """One way to start a process.

    name: the `via` value; typed: how the admin types it (README); pam: the PAM service it runs
    ("" for none); needs_user: it starts the process as another user (user = is required);
    login_shell: it runs the user's login shell (a nologin user is refused there); packages: Debian
    packages that must be in the box for it; commands: programs it runs in the guest; min_systemd:
    the first systemd version that has what it uses (machinectl shell: 225; systemd-run's --wait,
    --pipe and --pty: 235; run0: 256; the cron runner restarts cron.service with systemctl);
    exit_status: "propagated" when the start command's exit status is that of the user's command,
    "zero" when it is always 0 (so a non-zero exit can never be expected through it)."""

    name: str
    typed: str
    pam: str
    needs_user: bool = True
    login_shell: bool = False
    packages: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    min_systemd: int = 0
    exit_status: str = "propagated"


VIAS: dict[str, Via] = {v.name: v for v in (
    Via("login", "CMD (in the admin's SSH login shell)", "sshd (at the admin's login)", needs_user=False),
    Via("root", "sudo sh -c CMD (lab plumbing)", "sudo", needs_user=False),
    Via("sudo", "sudo -u USER CMD", "sudo", commands=("sudo",)),
    Via("su", "sudo su USER -c CMD", "su", login_shell=True, commands=("su",)),
    Via("su-login", "sudo su - USER -c CMD", "su-l", login_shell=True, commands=("su",)),
    Via("runuser", "sudo runuser -u USER -- sh -c CMD", "runuser", commands=("runuser",)),
    Via("runuser-login", "sudo runuser -l USER -c CMD", "runuser-l", login_shell=True, commands=("runuser",)),
    Via("setpriv", "sudo setpriv --reuid=USER --regid=USER --init-groups --reset-env sh -c CMD", "",
        commands=("setpriv",)),
    # machinectl shell does not pass the exit status on (tests/test_vias_vm.py measures it on every target)
    Via("machinectl", "sudo machinectl shell USER@ /bin/sh -c CMD", "login (through systemd-machined)",
        login_shell=True, packages=("systemd-container",), commands=("machinectl", "script"), min_systemd=225,
        exit_status="zero"),
    Via("ssh", "ssh USER@lab CMD", "sshd", login_shell=True),
    # the runner restarts cron.service with systemctl (lab.run.vias)
    Via("cron", "@reboot CMD in USER's crontab, run by cron", "cron", packages=("cron",),
        commands=("crontab", "cron"), min_systemd=215),
    Via("unit", "sudo systemd-run --wait --pipe -p User=USER [-p PAMName=P] sh -c CMD",
        "none, or PAMName= (pam =)", commands=("systemd-run",), min_systemd=235),
    Via("run0", "sudo run0 --user=USER sh -c CMD", "systemd-run0", commands=("run0",), min_systemd=256),
    Via("tty", "CMD typed at a console: agetty --autologin USER on a terminal, login, the user's shell", "login",
        login_shell=True, commands=("agetty", "login", "systemd-run"), min_systemd=235),
)}

NAMES = tuple(VIAS)
