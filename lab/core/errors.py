"""Errors a user can act on: one line with what is wrong and what to do, never a traceback.

Exit codes tell the kind of failure (README, "Exit codes"): 0 every expectation met; 1 the lab ran
and some expectation was not met; 2 bad settings or scenario; 3 the testbed failed (VM, SSH,
libvirt, Vagrant, a build); 4 the lab is busy with another command; 130 interrupted.
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import get_close_matches


class LabError(Exception):
    """A failure the user can fix; tasks turn it into one red line and exit code 2."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class SettingError(LabError):
    """A bad setting: names the key, the bad value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str, source: str = "") -> None:
        where = f" (from {source})" if source else ""
        super().__init__(f"setting {key!r}{where}: {value!r} is not valid; allowed: {allowed}")
        self.key = key


class TestbedError(LabError):
    """The machinery failed (VM, SSH, libvirt, Vagrant, Packer), not the bug: exit code 3, so a CI
    job can tell "the bug changed" from "the machine broke"."""

    exit_code = 3


class LabBusy(LabError):
    """Another command holds the lab's lock: exit code 4; nothing was touched."""

    exit_code = 4


class ToolMissing(LabError):
    """A host tool the step needs is absent; says how to install it."""


class VerifyFailed(LabError):
    """The lab ran, but some step did not meet its expectation (exit code 1, not a usage error)."""

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' did you mean X?' suffix, or '' when nothing is close."""
    close = get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
