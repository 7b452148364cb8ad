"""Watch an image VM's serial console while it boots: a kernel panic, an RCU stall or soft lockup,
or no new output for a bounded time stops the wait at once, with the console's last lines.

Seen on this kind of host (issue 19): a build VM under TCG with 2 vCPUs logged
`rcu: INFO: rcu_preempt self-detected stall on CPU` 31 s into its boot, both vCPUs spinning in
getrandom(), and printed nothing more; the build then waited out Packer's SSH timeout. A guest
without a hardware RNG fills its entropy pool from timer jitter in getrandom(), which under TCG on
a busy host takes very long (NixOS's test driver gives its VMs a virtio RNG for this reason; Debian:
wiki.debian.org/BoottimeEntropyStarvation), and MTTCG vCPU threads that the host scheduler
starves look stalled to the guest's RCU. So the image VMs get a virtio RNG (lab.host.domain), and
this watcher turns what still goes wrong into a clear failure that the caller retries once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lab.core.errors import BootStalled, TestbedError

# What a boot that will not finish prints (Linux's own words).
FATAL = (
    ("a kernel panic", re.compile(r"Kernel panic - not syncing")),
    ("an RCU stall", re.compile(r"rcu: INFO: rcu_\w+ (?:self-)?detected stalls?")),
    ("a soft lockup", re.compile(r"watchdog: BUG: soft lockup")),
    ("a task hung in the kernel", re.compile(r"INFO: task \S+ blocked for more than")),
)
TAIL_LINES = 12
__all__ = ["FIRST_OUTPUT_S", "BootStalled", "BootWatch", "last_lines"]


LOGIN_PROMPT = re.compile(r"^\S+ login: ", re.MULTILINE)
AGENT_GRACE_S = 60.0  # after the login prompt, the guest agent (started before getty) must answer
# A kernel booted directly prints its first console line within seconds under TCG, and within a
# second under working KVM. Seen here on a fresh machine: /dev/kvm passed the 512-byte probe, then
# a Linux guest under KVM printed nothing at all, and the first build waited 62 s before it went on
# under TCG. So KVM gets a short wait for the first line (a loaded host with working KVM that misses
# it only falls back to TCG: slower, never wrong).
FIRST_OUTPUT_S = {"kvm": 15.0, "qemu": 60.0}


@dataclass
class BootWatch:
    """Reads the console through `read` (returns the log's recent text) on each check(); `quiet_s`
    seconds without new output before the login prompt count as a stall. `what` names the VM."""

    read: Callable[[], str]
    quiet_s: float
    what: str
    first_output_s: float = FIRST_OUTPUT_S["qemu"]  # see FIRST_OUTPUT_S for the driver's own
    _last_text: str = ""
    _last_change: float = field(default_factory=time.monotonic)
    _started: float = field(default_factory=time.monotonic)
    _prompt_at: float | None = None

    @property
    def silent(self) -> bool:
        """Nothing at all came on the console yet."""
        return not self._last_text.strip()

    def check(self) -> None:
        """Raise BootStalled on a panic, a stall, or silence longer than quiet_s before the login
        prompt; TestbedError when the boot reached the login prompt but the guest agent still does
        not answer a minute later (nothing to retry: the image lacks a working agent); else return."""
        text = self.read()
        now = time.monotonic()
        if text != self._last_text:
            self._last_text = text
            self._last_change = now
        for name, pattern in FATAL:
            if pattern.search(text):
                raise BootStalled(f"{self.what}: the guest kernel reported {name}", last_lines(text))
        if LOGIN_PROMPT.search(text):
            self._prompt_at = self._prompt_at or now
            if now - self._prompt_at > AGENT_GRACE_S:
                raise TestbedError(f"{self.what}: it booted (its console shows the login prompt) but its guest "
                                   f"agent did not answer within {AGENT_GRACE_S:.0f}s; console:\n"
                                   + last_lines(text),
                                   hint="is qemu-guest-agent in the target's packages? rebuild: invoke lab.build "
                                        "--force")
            return
        if not text.strip() and now - self._started > min(self.first_output_s, self.quiet_s):
            raise BootStalled(f"{self.what}: nothing on its console {now - self._started:.0f}s after the start",
                              "", hint="the accelerator may not work: see invoke lab.doctor")
        if now - self._last_change > self.quiet_s:
            raise BootStalled(f"{self.what}: no boot progress on its console for {self.quiet_s:.0f}s",
                              last_lines(text), hint="raise boot_quiet_timeout if the machine is just slow")

    def tail(self) -> str:
        """The console's last TAIL_LINES non-empty lines, terminal escapes removed: of the text the last
        check() saw, or of a fresh read when no check saw any output yet."""
        return last_lines(self._last_text or self.read())


def last_lines(text: str, count: int = TAIL_LINES) -> str:
    """The last `count` non-empty lines of a console log, without terminal escapes."""
    clean = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r", "")
    lines = [line.rstrip() for line in clean.splitlines() if line.strip()]
    return "\n".join(lines[-count:])
