"""Errors a user can act on: one line with what is wrong and what to do, never a traceback."""

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


class ToolMissing(LabError):
    """A host tool the step needs is absent; says how to install it."""


class VerifyFailed(LabError):
    """The lab ran, but some step did not meet its expectation (exit code 1, not a usage error)."""

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' did you mean X?' suffix, or '' when nothing is close."""
    close = get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
