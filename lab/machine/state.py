"""The lab's lifecycle as a state machine persisted in .lab/<name>/state.json, and its lock.

Phases: absent -> rendered -> up (the VM may exist, provisioning not finished) -> provisioned
(baseline snapshot taken, once) -> verified. Every task reads the phase, refuses a move that makes
no sense with the next command to run, and records where it got to (Test Kitchen's `last_action`).
The lock (flock on .lab/<name>/lock) makes one command at a time act on a lab; a second one is
told within a second who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from lab.core.errors import LabBusy, LabError, TestbedError
from lab.core.files import write_files
from lab.core.paths import LabDir


class Phase(StrEnum):
    """Where a lab got to (the module's docstring has the order); the value is what state.json holds."""

    ABSENT = "absent"
    RENDERED = "rendered"
    UP = "up"
    PROVISIONED = "provisioned"
    VERIFIED = "verified"


READY = (Phase.PROVISIONED, Phase.VERIFIED)
NEXT_COMMAND = {Phase.ABSENT: "invoke lab.up", Phase.RENDERED: "invoke lab.up",
                Phase.UP: "invoke lab.up (it cleans up the unfinished one and starts over)",
                Phase.PROVISIONED: "invoke lab.verify", Phase.VERIFIED: "invoke lab.verify"}


@dataclass(frozen=True)
class LabState:
    """phase, when it was reached (UTC), by which task; baseline_at: when the baseline snapshot was
    taken (empty before)."""

    phase: Phase = Phase.ABSENT
    since: str = ""
    task: str = ""
    baseline_at: str = ""


def now() -> str:
    """The current time in UTC, to the second, as ISO 8601: YYYY-MM-DDTHH:MM:SSZ."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read(lab: LabDir) -> LabState:
    """The lab's recorded state; ABSENT when none was recorded. Raises TestbedError (exit 3) when the
    file is damaged: the lab's own state broke, not the input (lab.destroy sets it aside)."""
    try:
        raw = json.loads(lab.state_file.read_text(encoding="utf-8"))
        return LabState(**{**raw, "phase": Phase(raw["phase"])})
    except FileNotFoundError:
        return LabState()
    except (ValueError, TypeError, KeyError) as exc:
        raise TestbedError(f"{lab.state_file} is damaged ({type(exc).__name__}: {exc})",
                           hint=f"next: invoke lab.destroy --name {lab.name} (it sets the file aside), then lab.up") \
            from None


def peek(lab: LabDir) -> tuple[LabState | None, str]:
    """(the recorded state, "") or, when state.json is damaged, (None, why); changes nothing."""
    try:
        return read(lab), ""
    except LabError as exc:
        return None, exc.message


def set_aside(path: Path, why: str) -> Path:
    """Move a damaged state file out of the way (NAME.damaged-<UTC time>), with a note next to it
    saying why; returns where it went."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    os.replace(path, aside)
    write_files(path.parent, {aside.name + ".note": f"moved aside by cgroup-lab at {now()}: {why}\n"})
    return aside


def read_or_set_aside(lab: LabDir) -> tuple[LabState, str]:
    """The recorded state, or, when state.json is damaged, ABSENT with the file moved aside
    (set_aside) and a note saying so (lab.destroy, which must always finish)."""
    st, why = peek(lab)
    if st is not None:
        return st, ""
    aside = set_aside(lab.state_file, why)
    return LabState(), f"{why}; moved it aside to {aside}"


def advance(lab: LabDir, phase: Phase, task: str, **extra: str) -> LabState:
    """Record that task brought the lab to phase (atomically)."""
    old = read(lab)
    new = LabState(phase=phase, since=now(), task=task,
                   baseline_at=extra.get("baseline_at", old.baseline_at if phase != Phase.ABSENT else ""))
    write_files(lab.root, {lab.state_file.name: json.dumps({**asdict(new), "phase": str(phase)}, indent=2) + "\n"})
    return new


def require(lab: LabDir, doing: str, *phases: Phase) -> LabState:
    """The state, if its phase is one of phases; else LabError naming the phase and the next command."""
    st = read(lab)
    if st.phase not in phases:
        when = f" since {st.since} ({st.task})" if st.since else ""
        raise LabError(f"cannot {doing}: lab {lab.name} is {st.phase}{when}",
                       hint=f"next: {NEXT_COMMAND[st.phase]}")
    return st


@contextmanager
def locked(lab: LabDir, task: str) -> Iterator[None]:
    """Hold the lab's lock for the duration of task; LabBusy at once if another command holds it."""
    lab.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(lab.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                holder = {}
            raise LabBusy(f"lab {lab.name} is busy: lab.{holder.get('task', '?')} (PID {holder.get('pid', '?')}) "
                          f"holds it since {holder.get('since', '?')}",
                          hint="wait for it to finish, or stop that command (Ctrl-C in its terminal)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"task": task, "pid": os.getpid(), "since": now()}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
