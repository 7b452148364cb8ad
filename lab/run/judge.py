"""The judgement, pure: what the observe script printed becomes fields, rules name the outcome,
signatures tell the expected failure from any other. Nothing here touches a VM, so every rule is
tested against recorded outputs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lab.remote.ssh import CommandResult

UNCLASSIFIED = "unclassified"  # no rule matched: the run cannot say what happened


@dataclass
class StepRecord:
    """One command of the run, as verify.json stores it."""

    id: str
    title: str
    command: str
    user: str
    expected: str  # "succeed", "fail" or "any"
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
            ok = exit_ok(expected, result.exit_code)
        return cls(id=id, title=title, command=shown or result.command, user=user or result.user, expected=expected,
                   exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr,
                   seconds=round(result.seconds, 4),
                   guest_seconds=None if result.guest_seconds is None else round(result.guest_seconds, 4),
                   started=round(started, 4), ok=ok, why=why, note=note)


def exit_ok(expected: str, exit_code: int) -> bool:
    """Whether an exit status meets a step's expectation: succeed (0), fail (non-zero), any, or
    "exit 0, 3" (one of those codes)."""
    if expected == "succeed":
        return exit_code == 0
    if expected == "fail":
        return exit_code != 0
    if expected.startswith("exit "):
        return exit_code in {int(c) for c in expected.removeprefix("exit ").split(",")}
    return True


@dataclass
class TryRecord:
    """The baseline, a variant, a control or a fix as verify.json stores it: its kind, expected and
    observed outcome names, the start's exit status and whether it was as the try says (exit_ok),
    and what a wait that ran out last saw (wait)."""

    id: str
    title: str
    expected: str
    observed: str
    ok: bool
    signature_matched: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    why: str = ""
    reverted: bool = False
    kind: str = "fix"  # baseline, variant, control or fix
    exit_code: int | None = None
    exit_ok: bool = True
    wait: str = ""


@dataclass
class Observation:
    """What the observe script printed: key=value fields, and free text after a line '---...'."""

    fields: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def parse_observation(text: str) -> Observation:
    """key=value lines are fields (the first '=' splits); after a line starting with '---' every
    non-empty line is a note (logs), searched for signatures and shown."""
    obs = Observation()
    in_notes = False
    for line in text.splitlines():
        if line.startswith("---"):
            in_notes = True
            continue
        if in_notes:
            if line.strip():
                obs.notes.append(line)
            continue
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key.strip()):
            obs.fields[key.strip()] = value.strip()
    return obs


def facts(obs: Observation, start: CommandResult | StepRecord) -> dict[str, str]:
    """The fields rules see: the observed ones plus exit_code and output of the start command."""
    return {**obs.fields, "exit_code": str(start.exit_code), "output": start.stdout + start.stderr}


def classify(rules: Iterable[Mapping[str, Any]], fields: Mapping[str, str]) -> str:
    """The outcome of the first rule whose `when` regexes all match (re.search, multiline) and none
    of whose `unless` regexes match; a field that is absent matches nothing. UNCLASSIFIED if none."""
    for rule in rules:
        when, unless = rule.get("when") or {}, rule.get("unless") or {}
        hit = all(k in fields and re.search(v, fields[k], re.MULTILINE) for k, v in when.items())
        miss = any(k in fields and re.search(v, fields[k], re.MULTILINE) for k, v in unless.items())
        if hit and not miss:
            return str(rule["outcome"])
    return UNCLASSIFIED


def matched_signatures(patterns: Iterable[str], texts: Iterable[str]) -> list[str]:
    """The signature regexes found in texts: the start command's stdout and stderr, the observe
    script's notes and its fields as key=value lines (README: Signatures)."""
    blob = "\n".join(texts)
    return [p for p in patterns if re.search(p, blob, re.MULTILINE)]


def judge(expected: str, observed: str, signatures: tuple[str, ...], matched: list[str]) -> bool:
    """As expected: the same outcome, and when the try lists signatures for this target, one of
    them was seen (a failure, or a silent fallback, only counts as the bug when it says so)."""
    if observed != expected:
        return False
    if signatures:
        return bool(matched)
    return True


def words(outcomes: Mapping[str, Mapping[str, Any]], name: str) -> str:
    """The presenter's words for an outcome name ("fails", "runs without its memory limit")."""
    if name == UNCLASSIFIED:
        return "could not be classified (no observe rule matched)"
    if name == "error":
        return "could not be carried out"
    return str((outcomes.get(name) or {}).get("words", name))


def verdict_words(outcomes: Mapping[str, Mapping[str, Any]], row: Mapping[str, Any]) -> str:
    """A sentence for the presenter: 'fails, as the bug predicts' is good news. row is a TryRecord
    as a dict (id, expected, observed, ok, reverted)."""
    observed, expected = str(row.get("observed", "")), str(row.get("expected", ""))
    seen = words(outcomes, observed)
    failure = bool((outcomes.get(observed) or {}).get("failure"))
    kind = str(row.get("kind") or ("baseline" if str(row.get("id", "")).startswith("baseline") else "fix"))
    if row.get("ok") and kind == "baseline":
        return f"{seen}, as the bug predicts (reproduced)"
    if row.get("ok") and kind == "variant":
        return f"{seen}, as the bug predicts (this way too)"
    if row.get("ok") and kind == "control":
        return f"{seen}, as the control must"
    if row.get("ok") and failure:
        return f"still {seen}, as measured for this target"
    if row.get("ok"):
        return f"{seen}, as expected"
    if observed != expected:
        if kind == "control":
            return f"{seen}, but the control must show: {words(outcomes, expected)}"
        return f"{seen}, but expected: {words(outcomes, expected)}"
    if row.get("wait"):
        return f"{seen}, as expected, but a wait ran out ({row['wait']})"
    if not row.get("exit_ok", True):
        return f"{seen}, as expected, but the start command exited {row.get('exit_code')}, not as the try says"
    if not row.get("reverted", True):
        return f"{seen}, as expected, but the fix could not be cleaned up or reverted"
    return f"{seen}, but without the expected failure's signature"


def lines(text: str) -> list[str]:
    """Non-empty lines, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def evidence_holds(expect: str, outputs: list[str]) -> bool:
    """same: every output has exactly the same lines (order aside); differ: not all the same; any: True."""
    if expect == "any":
        return True
    sets = [sorted(lines(o)) for o in outputs]
    same = bool(sets[0]) and all(s == sets[0] for s in sets[1:])
    return same if expect == "same" else not same


def as_dict(obj: object) -> dict:
    return asdict(obj)  # type: ignore[call-overload]
