"""What every report format shares: redaction, the story steps vs plumbing, try rows, verdicts."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lab.run.judge import verdict_words

# Steps that only prepare or inspect the guest: counted, but not part of the story.
PLUMBING_SUFFIXES = (":teardown", ":observe", ":cleanup")
PLUMBING_PREFIX = "preflight:"

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|.*\Z)",  # an unterminated block: to the end
    re.DOTALL,
)
REDACTED = "[private key redacted]"


def redact(text: str) -> str:
    """Replace every OpenSSH/PEM private key block: reports get pasted into bug trackers."""
    return _PRIVATE_KEY.sub(REDACTED, text)


def redacted(value: Any) -> Any:
    """A copy of a record with every string redacted, so no renderer can forget a field."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def is_plumbing(step_id: str) -> bool:
    return step_id.startswith(PLUMBING_PREFIX) or step_id.endswith(PLUMBING_SUFFIXES)


def fix_rows(record: dict) -> list[dict]:
    """The fixes in run order: baseline, each fix, the restored baseline (those that ran)."""
    rows = [record.get("baseline"), *record.get("fixes", []), record.get("baseline_restored")]
    return [row for row in rows if row]


def steps_of(record: dict, fix_id: str) -> list[dict]:
    """Every step of one fix, plumbing included."""
    return [s for s in record.get("steps", []) if s["id"].startswith(f"{fix_id}:")]


def story_steps(record: dict) -> list[dict]:
    return [s for s in record.get("steps", []) if not is_plumbing(s["id"])]


def output_lines(step: dict) -> list[str]:
    """stdout then stderr, as lines, without the trailing blank ones."""
    text = (step.get("stdout") or "") + (step.get("stderr") or "")
    if step.get("stdout") and not step["stdout"].endswith("\n") and step.get("stderr"):
        text = step["stdout"] + "\n" + step["stderr"]
    return text.rstrip().splitlines()


def try_facts(row: dict, code: Callable[[str], str], strong: Callable[[str], str]) -> list[str]:
    """What a try left to say besides its verdict (signatures seen, observed fields, log lines,
    whether it was cleaned up), each item marked up by the format's own code() and strong()."""
    facts = []
    if row.get("signature_matched"):
        facts.append("failure signature seen: " + "; ".join(code(s) for s in row["signature_matched"]))
    if row.get("fields"):
        facts.append("observed: " + ", ".join(code(f"{k}={v}") for k, v in row["fields"].items()))
    facts += [f"log: {code(line)}" for line in (row.get("notes") or [])[-3:]]
    facts.append("cleaned up (and reverted) afterwards" if row.get("reverted")
                 else strong("could not be cleaned up or reverted"))
    return facts


def verdict(record: dict, row: dict) -> str:
    """The presenter's sentence for a try row, in the scenario's own outcome words."""
    return verdict_words(record.get("outcomes") or {}, row)
