"""Errors a user can act on: one line with what is wrong and what to do, never a traceback.

Exit codes tell the kind of failure (README, "Exit codes"): 0 every expectation met; 1 the lab ran
and some expectation was not met; 2 bad settings or scenario; 3 the testbed failed (VM, SSH,
libvirt, Vagrant, a build); 4 the lab is busy with another command; 130 interrupted.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from difflib import get_close_matches
from pathlib import Path


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


class FrozenSetting(LabError):
    """A setting given now differs from the value a lab's VM was brought up with, and only a new VM
    can take it: names the key, both values and lab.destroy as the way on (exit code 2)."""

    def __init__(self, key: str, source: str, frozen: object, given: object, lab: str) -> None:
        super().__init__(f"setting {key!r} (from {source}) is {given!r}, but lab {lab} was brought up with "
                         f"{frozen!r}; a new {key} needs a new VM",
                         hint=f"next: invoke lab.destroy --name {lab}, then lab.up; or give {key} its old value")
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


# what a path the user gave can be wrong with (as opposed to the machine: a full disk, an I/O error)
PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                         errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP, errno.EXDEV, errno.ENOTEMPTY})


@contextmanager
def user_path(what: str, path: Path) -> Iterator[None]:
    """Within: an OSError about path (a file under it, a folder above it, a temporary name next to
    it) that a user can fix by giving another path
    (permissions, a file where a folder belongs, no such place, read-only) becomes a LabError (exit
    2) naming what (e.g. --out) and the path; anything else (a full disk, an I/O error) goes on up
    as it is, to be reported as the machine's failure (exit 3)."""
    try:
        yield
    except OSError as exc:
        named = str(exc.filename or "")
        where = path.absolute()
        # the path, what lies under it, a folder above it, or a temporary name next to it
        mine = bool(named) and (Path(named).absolute().is_relative_to(where.parent) or
                                where.is_relative_to(Path(named).absolute()))
        if not mine or exc.errno not in PATH_ERRNOS:
            raise
        raise LabError(f"{what} {path}: {exc.strerror or exc}" + (f": {named}" if named != str(path) else ""),
                       hint="check the path you gave and its permissions") from None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' did you mean X?' suffix, or '' when nothing is close."""
    close = get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
