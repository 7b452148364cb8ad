"""transcript.md: the run told as a story, ready to paste into a bug report.

Only the typed record goes in, so the transcript can be rebuilt from verify.json alone and reads the
same every time; plumbing steps (teardown, observe, cleanup, preflight) are counted, not shown; the
verdict is lab.run.verdict's.
"""

from __future__ import annotations

import re

from lab.report.rows import output_lines, redacted_record, try_summary
from lab.run.record import RunRecord, StepRecord, TryRecord, coerce
from lab.run.verdict import try_words, verdict

MAX_OUTPUT_LINES = 12


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def code(text: str, table: bool = False) -> str:
    """An inline code span that survives backticks (and, in a table cell, pipes)."""
    if not text:
        return ""
    text = text.replace("\n", " ")
    if table:
        text = text.replace("|", "\\|")
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def fence(body: list[str], lang: str = "console") -> list[str]:
    """A fenced block longer than any backtick run inside it."""
    ticks = "`" * max([3, *(len(m) + 1 for line in body for m in re.findall(r"`{3,}", line))])
    return [f"{ticks}{lang}", *body, ticks]


def trim(lines: list[str], limit: int = MAX_OUTPUT_LINES) -> list[str]:
    """lines as they are when there are at most limit; else the first (limit - 1) // 2 and the last
    lines around one "… N lines …" line, limit lines in all."""
    if len(lines) <= limit:
        return lines
    head = (limit - 1) // 2
    tail = limit - 1 - head
    return [*lines[:head], f"… {len(lines) - head - tail} lines …", *lines[-tail:]]


def mark(ok: bool) -> str:
    """✓ for True, ✗ for False."""
    return "✓" if ok else "✗"


def step_block(step: StepRecord) -> list[str]:
    """A step as Markdown lines: a console fence with the prompt, command and its output (trimmed), then
    its exit code, seconds, what was expected and ✓ or ✗."""
    lines = fence([f"{step.user}$ {step.command}", *trim(output_lines(step))])
    expectation = {"fail": "expected to fail", "any": "any exit status"}.get(
        step.expected, f"expected to {step.expected}" if step.expected.startswith("exit ") else "expected to succeed")
    lines.append(f"exit {step.exit_code} in {step.seconds:.2f} s — {expectation}: {mark(step.ok)}")
    return lines


def plumbing_note(steps: list[StepRecord]) -> list[str]:
    """A blank line and an italic note counting the plumbing steps among steps (by the last part of their
    ids) and naming the failed ones in bold; [] when there is none."""
    plumbing = [s for s in steps if s.plumbing]
    if not plumbing:
        return []
    kinds = ", ".join(s.id.rsplit(":", 1)[-1] for s in plumbing)
    failed = [s.id for s in plumbing if not s.ok]
    note = f"Plumbing not shown: {len(plumbing)} steps ({kinds}), "
    note += f"**failed: {', '.join(failed)}**." if failed else "all ok."
    return ["", f"_{note}_"]


def header(rec: RunRecord) -> list[str]:
    """The transcript's top as Markdown lines: the title, what ran where and when with which isolation,
    the scenario's explanation, the target's note, its sources and the isolation note (when given)."""
    sc = rec.scenario
    out = [
        f"# cgroup lab: {rec.title}",
        "",
        f"Scenario `{sc.id}`, lab `{rec.name}`, target `{rec.target}` ({rec.target_title}) on `{rec.provider}`, "
        f"run started {rec.started_at}; {ISOLATION_WORDS[rec.isolation]}.",
        "",
        "## What this shows",
        "",
        sc.explanation.strip(),
    ]
    if sc.note:
        out += ["", f"On this target: {sc.note}"]
    if sc.sources:
        out += ["", "Sources: " + ", ".join(f"<{url}>" for url in sc.sources)]
    if rec.isolation_note:
        out += ["", f"_{rec.isolation_note}._"]
    return out


ISOLATION_WORDS = {"snapshot": "every try started from the baseline snapshot",
                   "teardown": "tries were separated by the scenario's teardown and each fix's revert"}


def versions(rec: RunRecord) -> list[str]:
    """The "Versions in the guest" section (one code item per non-empty line of the versions command's
    output); [] when there were none."""
    lines = [line.strip() for line in rec.versions.splitlines() if line.strip()]
    if not lines:
        return []
    return ["", "## Versions in the guest", "", *(f"- {code(line)}" for line in lines)]


def evidence(rec: RunRecord) -> list[str]:
    """One section per evidence block with columns: a table of the commands' outputs side by side, one
    non-empty line per row, lines every column shows in bold, then whether the outputs were as expected
    (same, differ, any). The blocks are section 1 (1.1, 1.2, ... when there are several; the tries start at 2)."""
    out: list[str] = []
    for n, ev in enumerate(rec.evidence, start=1):
        if not ev.columns:
            continue
        listings = [[x.strip() for x in c.output.splitlines() if x.strip()] for c in ev.columns]
        common = set(listings[0]).intersection(*listings[1:])
        number = "1." if len(rec.evidence) == 1 else f"1.{n}"
        out += ["", f"## {number} Evidence: {ev.title}", ""]
        if ev.why:
            out += [ev.why, ""]
        out += ["| " + " | ".join(cell(f"{c.user}$ {c.command}") for c in ev.columns) + " |",
                "| " + " | ".join("---" for _ in ev.columns) + " |"]
        for i in range(max(len(x) for x in listings)):
            cells = [x[i] if i < len(x) else "" for x in listings]
            out.append("| " + " | ".join(f"**{code(c, True)}**" if c and c in common else code(c, True)
                                         for c in cells) + " |")
        wanted = {"same": "identical (bold lines)", "differ": "different", "any": "shown"}[ev.expect]
        out += ["", f"{mark(ev.holds)} The outputs are {'' if ev.holds else 'not '}{wanted}"
                + (": the bug's precondition holds." if ev.holds else ": the bug's precondition does not hold here.")]
    return out


KIND_WORDS = {"baseline": "the bug", "fix": "fix", "variant": "variant", "control": "control",
              "restored": "the bug, at the end"}


def try_section(number: int, rec: RunRecord, row: TryRecord, steps: list[StepRecord]) -> list[str]:
    """Section number of the transcript for one try: its title and kind, why, the expected outcome, each
    of its story steps (step_block), the plumbing note, the observed outcome with the verdict's words,
    and try_summary's items."""
    out = ["", f"## {number}. {code(row.id)}: {row.title} ({KIND_WORDS[row.kind]})", ""]
    if row.why:
        out += [row.why, ""]
    out.append(f"Expected outcome: **{row.expected}**.")
    for step in steps:
        if not step.plumbing:
            out += ["", f"{step.title or step.id}:", "", *step_block(step)]
    out += plumbing_note(steps)
    out += ["", f"Observed: **{row.observed}** (expected **{row.expected}**) — {mark(row.ok)} {try_words(rec, row)}."]
    summary = try_summary(rec, row, code, lambda text: f"**{text}**")
    out += ["", *(f"- {line}" for line in summary)]
    return out


def matrix(rec: RunRecord) -> list[str]:
    """The "Fix matrix" section: a table with one row per try (id, kind, title, expected, observed and
    ✓ as expected, ✗ failed or ■ kept as it failed)."""
    out = ["", "## Fix matrix", "", "| try | kind | title | expected | observed | result |",
           "| --- | --- | --- | --- | --- | --- |"]
    for row in rec.tries:
        result = "✓ as expected" if row.ok else ("■ kept as it failed" if row.kept else "✗ failed")
        out.append(f"| {code(row.id, True)} | {row.kind} | {cell(row.title)} | {cell(row.expected)} | "
                   f"{cell(row.observed)} | {result} |")
    return out


def result(rec: RunRecord) -> list[str]:
    """The "Result" section: the verdict's headline, the step counts (shown, plumbing) and the run's
    seconds, the steps not as expected, the verdict's notes, and the baseline snapshot's reverts (count
    and seconds in all) when there were any."""
    v = verdict(rec)
    steps = rec.steps
    plumbing = sum(1 for s in steps if s.plumbing)
    out = ["", "## Result", "", f"**{v.headline}** — {len(steps)} steps ({len(steps) - plumbing} shown, "
           f"{plumbing} plumbing) in {rec.seconds:.1f} s."]
    if v.failed_steps:
        out.append(f"\nSteps not as expected: {', '.join(code(f) for f in v.failed_steps)}.")
    out += [f"\n{note}" for note in v.notes]
    if rec.reverts:
        total = sum(r.until_shells or r.seconds for r in rec.reverts)
        out.append(f"\nBaseline snapshot restored {len(rec.reverts)} times, {total:.1f} s in all.")
    return out


def render(rec: RunRecord | dict) -> str:
    """transcript.md of a run's record."""
    rec = coerce(rec)
    rec = redacted_record(rec)
    claimed = {s.id for row in rec.tries for s in rec.steps_of(row.id)}
    out = header(rec) + versions(rec) + evidence(rec)
    for number, row in enumerate(rec.tries, start=2):
        out += try_section(number, rec, row, rec.steps_of(row.id))
    shown_elsewhere = {"versions", *(i for ev in rec.evidence for i in ev.steps)}
    others = [s for s in rec.steps if s.id not in claimed | shown_elsewhere and not s.plumbing]
    if others:
        out += ["", "## Other steps"]
        for step in others:
            out += ["", f"{step.title or step.id}:", "", *step_block(step)]
    out += matrix(rec) + result(rec)
    return "\n".join(out) + "\n"
