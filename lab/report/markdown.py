"""transcript.md: the run told as a story, ready to paste into a bug report.

Only the record goes in, so the transcript can be rebuilt from verify.json alone and reads the same
every time; plumbing steps (reset, observe, stop, preflight) are counted, not shown.
"""

from __future__ import annotations

import re

from lab.report.rows import fix_rows, is_plumbing, output_lines, redacted, steps_of, try_facts, verdict

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
    if len(lines) <= limit:
        return lines
    head = (limit - 1) // 2
    tail = limit - 1 - head
    return [*lines[:head], f"… {len(lines) - head - tail} lines …", *lines[-tail:]]


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def step_block(step: dict) -> list[str]:
    lines = fence([f"{step['user']}$ {step['command']}", *trim(output_lines(step))])
    expectation = "expected to fail" if step.get("expected") == "fail" else "expected to succeed"
    lines.append(f"exit {step.get('exit_code')} in {step.get('seconds', 0):.2f} s — {expectation}: "
                 f"{mark(step.get('ok', False))}")
    return lines


def plumbing_note(steps: list[dict]) -> list[str]:
    plumbing = [s for s in steps if is_plumbing(s["id"])]
    if not plumbing:
        return []
    kinds = ", ".join(s["id"].rsplit(":", 1)[-1] for s in plumbing)
    failed = [s["id"] for s in plumbing if not s.get("ok")]
    note = f"Plumbing not shown: {len(plumbing)} steps ({kinds}), "
    note += f"**failed: {', '.join(failed)}**." if failed else "all ok."
    return ["", f"_{note}_"]


def header(record: dict) -> list[str]:
    sc = record.get("scenario") or {}
    out = [
        f"# cgroup lab: {record.get('title', '')}",
        "",
        f"Scenario `{sc.get('id', '')}`, lab `{record.get('name', '')}`, target `{record.get('target', '')}` "
        f"({record.get('target_title', '')}) on "
        f"`{record.get('provider', '')}`, run started {record.get('started_at', '')}.",
        "",
        "## What this shows",
        "",
        sc.get("explanation", "").strip(),
    ]
    if sc.get("note"):
        out += ["", f"On this target: {sc['note']}"]
    if sc.get("sources"):
        out += ["", "Sources: " + ", ".join(f"<{url}>" for url in sc["sources"])]
    return out


def versions(record: dict) -> list[str]:
    text = (record.get("versions") or {}).get("text", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    return ["", "## Versions in the guest", "", *(f"- {code(line)}" for line in lines)]


def evidence(record: dict) -> list[str]:
    out: list[str] = []
    for n, ev in enumerate(record.get("evidence") or [], start=1):
        columns = ev.get("columns") or []
        if not columns:
            continue
        listings = [[x.strip() for x in c.get("output", "").splitlines() if x.strip()] for c in columns]
        common = set(listings[0]).intersection(*listings[1:])
        title = "Evidence" if len(record.get("evidence")) == 1 else f"Evidence {n}"
        out += ["", f"## 1. {title}: {ev.get('title', '')}", ""]
        if ev.get("why"):
            out += [ev["why"], ""]
        out += ["| " + " | ".join(cell(f"{c.get('user', '')}$ {c.get('command', '')}") for c in columns) + " |",
                "| " + " | ".join("---" for _ in columns) + " |"]
        for i in range(max(len(x) for x in listings)):
            cells = [x[i] if i < len(x) else "" for x in listings]
            out.append("| " + " | ".join(f"**{code(c, True)}**" if c and c in common else code(c, True)
                                         for c in cells) + " |")
        wanted = {"same": "identical (bold lines)", "differ": "different", "any": "shown"}[ev.get("expect", "any")]
        out += ["", f"{mark(bool(ev.get('holds')))} The outputs are {'' if ev.get('holds') else 'not '}{wanted}"
                + (": the bug's precondition holds." if ev.get("holds") else ": the bug's precondition does not "
                   "hold here.")]
    return out


def fix_section(number: int, record: dict, row: dict, steps: list[dict]) -> list[str]:
    out = ["", f"## {number}. {code(row['id'])}: {row.get('title', '')}", ""]
    if row.get("why"):
        out += [row["why"], ""]
    out.append(f"Expected outcome: **{row.get('expected', '')}**.")
    for step in steps:
        if not is_plumbing(step["id"]):
            out += ["", f"{step.get('title', step['id'])}:", "", *step_block(step)]
    out += plumbing_note(steps)
    out += ["", f"Observed: **{row.get('observed', '')}** (expected **{row.get('expected', '')}**) — "
                f"{mark(row.get('ok', False))} {verdict(record, row)}."]
    facts = try_facts(row, code, lambda text: f"**{text}**")
    out += ["", *(f"- {fact}" for fact in facts)]
    return out


def matrix(rows: list[dict]) -> list[str]:
    out = ["", "## Fix matrix", "", "| fix | title | expected | observed | result |",
           "| --- | --- | --- | --- | --- |"]
    for row in rows:
        result = "✓ as expected" if row.get("ok") else "✗ failed"
        out.append(f"| {code(row['id'], True)} | {cell(row.get('title', ''))} | {cell(row.get('expected', ''))} | "
                   f"{cell(row.get('observed', ''))} | {result} |")
    return out


def result(record: dict) -> list[str]:
    steps = record.get("steps", [])
    plumbing = sum(1 for s in steps if is_plumbing(s["id"]))
    head = "✓ every step met its expectation" if record.get("ok") else "✗ some step did not meet its expectation"
    if record.get("stopped"):
        head = (f"■ stopped by the presenter after {record['stopped']}; baseline restored — "
                + ("every step that ran met its expectation" if record.get("ok") else "some step did not meet "
                   "its expectation"))
    out = ["", "## Result", "", f"**{head}** — {len(steps)} steps ({len(steps) - plumbing} shown, "
           f"{plumbing} plumbing) in {record.get('seconds', 0):.1f} s."]
    failed = [s["id"] for s in steps if not s.get("ok")]
    if failed:
        out.append(f"\nSteps not as expected: {', '.join(code(f) for f in failed)}.")
    if record.get("restored") is False:
        out.append("\nThe baseline did not come back after the fixes were reverted.")
    if record.get("not_run"):
        out.append(f"\nNot run: {', '.join(code(t) for t in record['not_run'])}.")
    if record.get("error"):
        out.append(f"\nThe run ended with an error: {record['error']}")
    return out


def render(record: dict) -> str:
    record = redacted(record)
    rows = fix_rows(record)
    claimed = {s["id"] for row in rows for s in steps_of(record, row["id"])}
    out = header(record) + versions(record) + evidence(record)
    for number, row in enumerate(rows, start=2):
        out += fix_section(number, record, row, steps_of(record, row["id"]))
    shown_elsewhere = {"versions", *(i for ev in record.get("evidence") or [] for i in ev.get("steps", []))}
    others = [s for s in record.get("steps", []) if s["id"] not in claimed | shown_elsewhere
              and not is_plumbing(s["id"])]
    if others:
        out += ["", "## Other steps"]
        for step in others:
            out += ["", f"{step.get('title', step['id'])}:", "", *step_block(step)]
    out += matrix(rows) + result(record)
    return "\n".join(out) + "\n"
