"""verify.cast: the run replayed as an asciicast v2 recording, at the pace the guest really took.

Each story step types its prompt at step["started"] and prints its output when it finished; fix
headers and verdicts are dim comments. Plumbing steps leave only their pauses.
"""

from __future__ import annotations

import calendar
import json
import time

from lab.report.rows import output_lines, redacted_record
from lab.run.record import RunRecord, TryRecord, coerce
from lab.run.verdict import try_words, verdict

WIDTH, HEIGHT = 100, 30
TYPING_SECONDS = 0.3
TYPING_CHUNKS = 10
DIM, CYAN, RESET = "\x1b[2m", "\x1b[36m", "\x1b[0m"


def timestamp(started_at: str) -> int | None:
    """A record's started_at (UTC, YYYY-MM-DDTHH:MM:SSZ) as Unix seconds, for the header; None when it is not
    in that form (an old or damaged record)."""
    try:
        return calendar.timegm(time.strptime(started_at, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return None


def header(rec: RunRecord) -> dict:
    """The asciicast v2 header (first line of the file): version, terminal size WIDTH x HEIGHT columns and
    rows, timestamp (when started_at reads), title (scenario title and target) and env."""
    head: dict = {"version": 2, "width": WIDTH, "height": HEIGHT}
    stamp = timestamp(rec.started_at)
    if stamp is not None:
        head["timestamp"] = stamp
    head["title"] = f"cgroup lab: {rec.title} on {rec.target}"
    head["env"] = {"TERM": "xterm-256color", "SHELL": "/bin/bash"}
    return head


class Recorder:
    """Events with times that never go backwards."""

    def __init__(self) -> None:
        self.now = 0.0
        self.lines: list[str] = []

    def emit(self, at: float, text: str) -> None:
        """An output event: text printed at `at` seconds from the run's start (rounded to microseconds, and
        never before the previous event). Empty text adds nothing."""
        if not text:
            return
        self.now = max(self.now, round(at, 6))
        self.lines.append(json.dumps([self.now, "o", text], ensure_ascii=False))

    def comment(self, at: float, text: str) -> None:
        """A dim "# text" line at `at` seconds."""
        self.emit(at, f"{DIM}# {text}{RESET}\r\n")

    def typed(self, at: float, user: str, command: str, budget: float) -> None:
        """The prompt "user$ " at `at` seconds, then command typed in at most TYPING_CHUNKS pieces over
        min(TYPING_SECONDS, budget / 2) seconds (budget: the step's own seconds), then a line end."""
        self.emit(at, f"{CYAN}{user}${RESET} ")
        size = max(1, -(-len(command) // TYPING_CHUNKS))
        chunks = [command[i:i + size] for i in range(0, len(command), size)]
        pace = min(TYPING_SECONDS, budget / 2) / max(1, len(chunks))
        for i, chunk in enumerate(chunks):
            self.emit(at + (i + 1) * pace, chunk)
        self.emit(at + len(chunks) * pace, "\r\n")


def section_of(step_id: str, rows: list[TryRecord]) -> TryRecord | None:
    """The try a step belongs to (step ids are "<try id>:..."); None for a step of no try (preflight,
    evidence, teardown)."""
    return next((row for row in rows if step_id.startswith(f"{row.id}:")), None)


def close(rec: Recorder, record: RunRecord, row: TryRecord | None, at: float) -> None:
    """The comment that ends a try's section at `at` seconds: ✓ or ✗, its id and its verdict's words
    (lab.run.verdict.try_words); nothing for None."""
    if row:
        rec.comment(at, f"{'✓' if row.ok else '✗'} {row.id}: {try_words(record, row)}")


def render(record: RunRecord | dict) -> str:
    """verify.cast (asciicast v2) of a run's record."""
    record = coerce(record)
    record = redacted_record(record)
    rows = record.tries
    rec = Recorder()
    current: TryRecord | None = None
    ended = 0.0
    for step in record.steps:
        start, took = step.started or ended, step.seconds
        row = section_of(step.id, rows)
        if row is not current:
            close(rec, record, current, ended)
            current = row
            if row:
                rec.comment(start, f"{row.id}: {row.title} (expected: {row.expected})")
        ended = start + took
        if step.plumbing:
            continue
        for ev in record.evidence:
            if ev.steps and step.id == ev.steps[0]:
                rec.comment(start, f"evidence: {ev.title}")
        rec.typed(start, step.user, step.command, took)
        lines = output_lines(step)
        if lines:
            rec.emit(ended, "\r\n".join(lines) + "\r\n")
    close(rec, record, current, ended)
    rec.comment(record.seconds or ended, f"{verdict(record).headline} ({record.seconds:.1f}s)")
    return "\n".join([json.dumps(header(record), ensure_ascii=False), *rec.lines]) + "\n"
