"""transcript.md: the run told as a story, ready to paste into a bug report.

Only the record goes in, so the transcript can be rebuilt from verify.json alone and reads the same
every time; plumbing steps (reset, observe, stop, preflight) are counted, not shown.
"""

from __future__ import annotations

import re

from lab.report import fix_rows, is_plumbing, output_lines, redacted, steps_of, verdict

MAX_OUTPUT_LINES = 12
VERSION_LABELS = ("kernel", "lxc", "cgroup manager")


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
    admin, user = record.get("admin_user", "admin"), record.get("container_user", "user")
    container = record.get("container_name", "container")
    return [
        f"# cgroup lab: {record.get('title') or record.get('target', '')}",
        "",
        f"Lab `{record.get('name', '')}`, target `{record.get('target', '')}` on `{record.get('provider', '')}` "
        f"({record.get('cgroup_layout', '')} cgroups), run started {record.get('started_at', '')}.",
        "",
        "## What this shows",
        "",
        f"`{admin}` logs in over SSH and starts the unprivileged container `{container}` as `{user}` with "
        f"`sudo -u {user} lxc-start`. sudo opens no login session of its own, so `{user}` inherits "
        f"`{admin}`'s cgroups, where it may not create or limit anything: lxc-start cannot apply the "
        "container's memory limit and aborts (the 2015 sudo/lxc bug). Below: the evidence, the baseline "
        "failure, each fix tried in turn with its expected and observed outcome, and the baseline again "
        "after every fix was reverted.",
    ]


def versions(record: dict) -> list[str]:
    text = (record.get("versions") or {}).get("text", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    out = ["", "## Versions in the guest", ""]
    for i, line in enumerate(lines):
        label = VERSION_LABELS[i] if i < len(VERSION_LABELS) else "also"
        out.append(f"- {label}: {code(line)}")
    return out


def evidence(record: dict) -> list[str]:
    ev = record.get("evidence") or {}
    if not ev:
        return []
    admin, user = record.get("admin_user", "admin"), record.get("container_user", "user")
    steps = {s["id"]: s for s in record.get("steps", [])}
    left = [x.strip() for x in ev.get("admin", "").splitlines() if x.strip()]
    right = [x.strip() for x in ev.get("sudo_user", "").splitlines() if x.strip()]
    common = set(left) & set(right)
    out = ["", "## 1. Evidence", ""]
    whys = [steps[i]["why"] for i in ("evidence-admin", "evidence-sudo") if steps.get(i, {}).get("why")]
    if whys:
        out += [" ".join(whys), ""]
    out += [f"| {cell(f'{admin}$ cat /proc/self/cgroup')} | "
            f"{cell(f'{admin}$ sudo -u {user} cat /proc/self/cgroup')} | same |",
            "| --- | --- | :-: |"]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        shown = [f"**{code(x, True)}**" if x in common else code(x, True) for x in (a, b)]
        out.append(f"| {shown[0]} | {shown[1]} | {mark(a == b) if a or b else ''} |")
    out.append("")
    if ev.get("inherited"):
        out.append(f"✓ The listings are identical (bold lines): `{user}` inherited `{admin}`'s cgroups, "
                   "the bug's precondition holds.")
    else:
        out.append("✗ The listings differ: the bug's precondition does not hold here.")
    return out


def fix_section(number: int, row: dict, steps: list[dict]) -> list[str]:
    out = ["", f"## {number}. {code(row['id'])}: {row.get('title', '')}", ""]
    if row.get("why"):
        out += [row["why"], ""]
    out.append(f"Expected outcome: **{row.get('expected', '')}**.")
    for step in steps:
        if not is_plumbing(step["id"]):
            out += ["", f"{step.get('title', step['id'])}:", "", *step_block(step)]
    out += plumbing_note(steps)
    out += ["", f"Observed: **{row.get('observed', '')}** (expected **{row.get('expected', '')}**) — "
                f"{mark(row.get('ok', False))} {verdict(row)}."]
    facts = []
    if row.get("signature_matched"):
        facts.append("failure signature seen: " + "; ".join(code(s) for s in row["signature_matched"]))
    if row.get("limit"):
        facts.append(f"memory limit in force: {code(row['limit'])}")
    if row.get("cgroup"):
        facts.append(f"container cgroup: {code(row['cgroup'])}")
    facts.append("cleaned up (and reverted) afterwards" if row.get("reverted")
                 else "**could not be cleaned up or reverted**")
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
    out = ["", "## Result", "", f"**{head}** — {len(steps)} steps ({len(steps) - plumbing} shown, "
           f"{plumbing} plumbing) in {record.get('seconds', 0):.1f} s."]
    failed = [s["id"] for s in steps if not s.get("ok")]
    if failed:
        out.append(f"\nSteps not as expected: {', '.join(code(f) for f in failed)}.")
    if record.get("restored") is False:
        out.append("\nThe baseline did not come back after the fixes were reverted.")
    if record.get("stopped"):
        out.append("\nThe run was stopped before every fix was tried.")
    if record.get("error"):
        out.append(f"\nThe run ended with an error: {record['error']}")
    return out


def render(record: dict) -> str:
    record = redacted(record)
    rows = fix_rows(record)
    claimed = {s["id"] for row in rows for s in steps_of(record, row["id"])}
    out = header(record) + versions(record) + evidence(record)
    for number, row in enumerate(rows, start=2):
        out += fix_section(number, row, steps_of(record, row["id"]))
    shown_elsewhere = {"versions", "evidence-admin", "evidence-sudo"}
    others = [s for s in record.get("steps", []) if s["id"] not in claimed | shown_elsewhere
              and not is_plumbing(s["id"])]
    if others:
        out += ["", "## Other steps"]
        for step in others:
            out += ["", f"{step.get('title', step['id'])}:", "", *step_block(step)]
    out += matrix(rows) + result(record)
    return "\n".join(out) + "\n"
