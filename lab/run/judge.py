"""The judgement, pure: what the observe script printed becomes fields, rules name the outcome,
signatures tell the expected failure from any other. Nothing here touches a VM, so every rule is
tested against recorded outputs."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lab.remote.ssh import CommandResult
from lab.run.record import StepRecord

UNCLASSIFIED = "unclassified"  # no rule matched: the run cannot say what happened


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


def observed_fields(obs: Observation, start: CommandResult | StepRecord) -> dict[str, str]:
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
