"""What every report format shares: redaction, output lines, the facts of a try."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lab.run.record import RunRecord, StepRecord, TryRecord, is_plumbing

__all__ = ["REDACTED", "is_plumbing", "output_lines", "redact", "redacted", "redacted_record", "try_summary"]

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
    """A copy of a JSON-like value with every string redacted, so no renderer can forget a field."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def redacted_record(rec: RunRecord) -> RunRecord:
    """A copy of the record with every string redacted."""
    return RunRecord.model_validate(redacted(rec.model_dump(mode="json")))


def output_lines(step: StepRecord) -> list[str]:
    """stdout then stderr, as lines, without the trailing blank ones."""
    text = step.stdout + step.stderr
    if step.stdout and not step.stdout.endswith("\n") and step.stderr:
        text = step.stdout + "\n" + step.stderr
    return text.rstrip().splitlines()


def try_summary(rec: RunRecord, row: TryRecord, code: Callable[[str], str], strong: Callable[[str], str]) -> list[str]:
    """What a try left to say besides its verdict (signatures seen, observed fields, log lines, how it
    was isolated from the next), each item marked up by the format's own code() and strong()."""
    lines = []
    if row.error:
        lines.append(strong(f"broke off: {row.error}"))
    if row.signature_matched:
        lines.append("failure signature seen: " + "; ".join(code(s) for s in row.signature_matched))
    if row.fields:
        lines.append("observed: " + ", ".join(code(f"{k}={v}") for k, v in row.fields.items()))
    lines += [f"log: {code(line)}" for line in row.notes[-3:]]
    if row.kept:
        lines.append(strong("kept as it failed (--keep-failing): nothing was cleaned up after it"))
    elif row.reverted is True:
        lines.append("cleaned up (and reverted) afterwards")
    elif row.reverted is False:
        lines.append(strong("could not be cleaned up or reverted"))
    elif rec.isolation == "snapshot":
        revert = next((r for r in rec.reverts if r.before == row.id), None)
        lines.append("started from the baseline snapshot" + (f" (restored in {revert.seconds:.1f} s)" if revert
                                                              else " (nothing had run since it was restored)"))
    return lines
