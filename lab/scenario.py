"""Steps and expectations as data, and the pure logic that judges what the guest did.

Nothing here touches a VM: verify.py runs the commands, this module decides what they mean, so
the judgement is tested against recorded outputs.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from lab.remote import CommandResult
from lab.settings import Settings
from lab.targets import OUTCOME_WORDS, Fix, Outcome


@dataclass
class StepRecord:
    """One command of the run, as verify.json stores it."""

    id: str
    title: str
    command: str
    user: str
    expected: str  # "succeed" or "fail"
    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    guest_seconds: float | None
    started: float  # seconds since the run began (for the asciicast)
    ok: bool
    why: str = ""
    note: str = ""

    @classmethod
    def from_result(cls, id: str, title: str, result: CommandResult, expected: str, started: float,
                    why: str = "", ok: bool | None = None, note: str = "", shown: str | None = None,
                    user: str | None = None) -> StepRecord:
        if ok is None:
            ok = result.succeeded if expected == "succeed" else result.failed
        return cls(id=id, title=title, command=shown or result.command, user=user or result.user, expected=expected,
                   exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr,
                   seconds=round(result.seconds, 4),
                   guest_seconds=None if result.guest_seconds is None else round(result.guest_seconds, 4),
                   started=round(started, 4), ok=ok, why=why, note=note)


@dataclass
class FixRecord:
    id: str
    title: str
    expected: str
    observed: str
    ok: bool
    signature_matched: list[str] = field(default_factory=list)
    limit: str = ""
    cgroup: str = ""
    why: str = ""
    reverted: bool = False


@dataclass
class Observation:
    """What guest/observe.sh printed."""

    state: str
    limit: str = ""
    limit_ok: str = ""
    cgroup: str = ""
    log: list[str] = field(default_factory=list)


def parse_observation(text: str) -> Observation:
    values: dict[str, str] = {}
    log: list[str] = []
    in_log = False
    for line in text.splitlines():
        if line.startswith("--- lab.log"):
            in_log = True
            continue
        if in_log:
            if line.strip():
                log.append(line)
            continue
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return Observation(state=values.get("state", "UNKNOWN"), limit=values.get("limit", ""),
                       limit_ok=values.get("limit_ok", ""),
                       cgroup=values.get("memory_cgroup") or values.get("unified_cgroup", ""), log=log)


def classify(observation: Observation) -> Outcome:
    """running: up with its limit in force; unlimited: up without it; failing: not running."""
    if observation.state != "RUNNING":
        return Outcome.FAILING
    if observation.limit_ok == "no":
        return Outcome.UNLIMITED
    return Outcome.RUNNING


def fill(text: str, settings: Settings) -> str:
    """Put the lab's names into a target text ({admin}, {user}, {container})."""
    return (text.replace("{admin}", settings.admin_user).replace("{user}", settings.container_user)
            .replace("{container}", settings.container_name))


def matched_signatures(fix: Fix, settings: Settings, texts: list[str]) -> list[str]:
    """The fix's signature patterns found in the command output or the container log."""
    blob = "\n".join(texts)
    found = []
    for pattern in fix.signature:
        regex = fill(pattern, settings)
        if re.search(regex, blob):
            found.append(regex)
    return found


def judge(fix: Fix, observed: Outcome, signatures: list[str]) -> bool:
    """A failure only counts as the expected one when its signature was seen."""
    if observed != fix.expected:
        return False
    if observed == Outcome.FAILING and fix.signature:
        return bool(signatures)
    return True


def start_expectation(fix: Fix) -> str:
    return "fail" if fix.expected == Outcome.FAILING else "succeed"


def verdict_words(fix: Fix, observed: Outcome, ok: bool, is_baseline: bool) -> str:
    """A sentence for the presenter: 'fails, as the bug predicts' is good news."""
    seen = OUTCOME_WORDS[observed]
    if ok and is_baseline:
        return f"{seen}, as the bug predicts (reproduced)"
    if ok and observed == Outcome.FAILING:
        return f"still {seen}, as measured for this target"
    if ok:
        return f"{seen}, as expected"
    return f"{seen}, but expected: {OUTCOME_WORDS[fix.expected]}"


def cgroup_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def inherited(admin: str, sudo_user: str) -> bool:
    """The bug's precondition: sudo -u USER sees exactly the admin's cgroups."""
    a, b = cgroup_lines(admin), cgroup_lines(sudo_user)
    return bool(a) and sorted(a) == sorted(b)


def as_dict(obj: object) -> dict:
    return asdict(obj)  # type: ignore[call-overload]
