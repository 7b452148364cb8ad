"""Where lab.up's time goes: named phases from Vagrant's own progress lines and the lab's steps."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

# vagrant-libvirt's progress lines that start a phase (vagrant-libvirt 0.11 locales/en.yml), in order.
VAGRANT_MARKS = (
    ("Creating image", "vagrant: start-up and box checks"),
    ("Starting domain", "vagrant-libvirt: volume and domain define"),
    ("Waiting for domain to get an IP", "libvirt: domain start"),
    ("Waiting for machine to boot", "guest: boot until its DHCP lease"),
    ("Machine booted and ready", "guest: boot until sshd answers Vagrant"),
)


class PhaseClock:
    """Marks on one monotonic clock; phase i lasts from mark i to mark i+1 (seconds).

    Vagrant's lines are fed through wrap(on_line); the lab's own steps call mark(name). The name
    given to a mark is the phase that ENDS at it."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._last = self.started
        self.phases: list[tuple[str, float]] = []
        self._pending = 0

    def mark(self, ended: str) -> None:
        """Close the running phase under the name `ended`."""
        now = time.monotonic()
        self.phases.append((ended, round(now - self._last, 2)))
        self._last = now

    def wrap(self, on_line: Callable[[str], None]) -> Callable[[str], None]:
        """A line callback that also marks Vagrant's phases as their lines appear."""
        def seen(line: str) -> None:
            if self._pending < len(VAGRANT_MARKS) and VAGRANT_MARKS[self._pending][0] in line:
                self.mark(VAGRANT_MARKS[self._pending][1])
                self._pending += 1
            on_line(line)
        return seen

    def as_dict(self) -> dict:
        """{"total_s": seconds, "phases": [[name, seconds], ...]}."""
        return {"total_s": round(self._last - self.started, 2), "phases": [list(p) for p in self.phases]}

    def save(self, path: Path) -> None:
        """Write as_dict() to path as JSON (lab.up: <lab>/up-phases.json, which lab.bench reads); an
        OSError goes up as it is."""
        path.write_text(json.dumps(self.as_dict(), indent=1) + "\n")


def load(path: Path) -> dict | None:
    """What save wrote, or None when there is no readable record."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
