"""The matrix reports (fixes down, targets across) from matrix.json: markdown and JUnit."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from html import escape
from pathlib import Path

from lab.core.files import write_files
from lab.report import html
from lab.report.junit import child, clean
from lab.report.markdown import cell, code
from lab.report.rows import redacted


def rows(rec: dict) -> list[str]:
    """Try ids in the order they ran, across every target (baseline first, restored last)."""
    seen: list[str] = []
    for c in rec.get("targets", []):
        for tid in c.get("tries", {}):
            if tid not in seen:
                seen.append(tid)
    tail = [t for t in seen if t == "baseline-restored"]
    return [t for t in seen if t != "baseline-restored"] + tail


def cell_text(c: dict, tid: str) -> str:
    """One cell: the observed outcome and whether it matched (or why the target did not run)."""
    if c["status"] == "not run":
        return "not run"
    t = c.get("tries", {}).get(tid)
    if t is None:
        return "—" if c["status"] == "ran" else "error"
    return f"{t['observed']} ✓" if t["ok"] else f"{t['observed']} ✗ (expected {t['expected']})"


def host_of(c: dict) -> str:
    """Which libvirt host ran the cell: "local" (this machine) or user@host:port."""
    return c.get("host") or "local"


def render_md(rec: dict) -> str:
    """matrix.md: fixes down, targets across; then per target its result, host and times."""
    targets = rec.get("targets", [])
    out = [f"# cgroup lab matrix: {rec['scenario']['title']}", "",
           f"Scenario `{rec['scenario']['id']}`, run started {rec.get('started_at', '')}, "
           f"{rec.get('seconds', 0):.0f} s in all.", "",
           "| fix | " + " | ".join(code(c["target"], True) for c in targets) + " |",
           "| --- | " + " | ".join("---" for _ in targets) + " |"]
    for tid in rows(rec):
        out.append(f"| {code(tid, True)} | " + " | ".join(cell(cell_text(c, tid)) for c in targets) + " |")
    out += ["", "| target | result | host | up | verify | destroy | total |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in targets:
        result = {"ran": "✓ as expected" if c["ok"] else "✗ not as expected", "error": f"✗ error: {c.get('why', '')}",
                  "not run": f"not run: {c.get('why', '')}"}[c["status"]]
        sec = c.get("seconds", {})
        out.append(f"| {code(c['target'], True)} | {cell(result)} | {cell(host_of(c))} | {sec.get('up', 0):.0f} s | "
                   f"{sec.get('verify', 0):.0f} s | {sec.get('destroy', 0):.0f} s | {sec.get('total', 0):.0f} s |")
    notes = [(t, n) for t, n in rec["scenario"].get("notes", {}).items() if n]
    if notes:
        out += ["", "Notes:", *(f"- `{t}`: {n}" for t, n in notes)]
    verdict = ("✓ every cell that ran met its expectation" if rec.get("ok")
               else "✗ some cell did not meet its expectation")
    out += ["", f"**{verdict}**"]
    return "\n".join(out) + "\n"


def render_junit(rec: dict) -> str:
    """One testsuite per target, a testcase per try; a target not run is skipped with its reason."""
    root = ET.Element("testsuites", name=f"cgroup-lab.matrix.{rec['scenario']['id']}")
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for c in rec.get("targets", []):
        suite = child(root, "testsuite", name=f"cgroup-lab.{rec['scenario']['id']}.{c['target']}",
                      time=f"{c.get('seconds', {}).get('total', 0):.3f}", hostname=host_of(c))
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if c["status"] == "not run" or (c["status"] == "error" and not c.get("tries")):
            case = child(suite, "testcase", name="target", classname=suite.get("name", ""), time="0")
            kind = "skipped" if c["status"] == "not run" else "error"
            child(case, kind, message=clean(f"{c['status']}: {c.get('why', '')}"))
            counts["tests"] += 1
            counts["skipped" if kind == "skipped" else "errors"] += 1
        for tid, t in c.get("tries", {}).items():
            case = child(suite, "testcase", name=tid, classname=suite.get("name", ""), time="0")
            counts["tests"] += 1
            if not t["ok"]:
                counts["failures"] += 1
                child(case, "failure", message=f"expected {t['expected']}, observed {t['observed']}")
        suite.attrib.update({k: str(v) for k, v in counts.items()})
        for k in total:
            total[k] += counts[k]
    root.attrib.update({k: str(v) for k, v in total.items()})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def render_html(rec: dict) -> str:
    """A matrix record (matrix.json as a dict) -> one page: fixes down, targets across, each cell the
    observed outcome coloured by whether it matched; a target not run says why. Nothing to fetch."""
    rec = redacted(rec)
    targets = rec.get("targets", [])
    head = "".join(f"<th>{escape(c['target'])}<br><span class=\"meta\">{escape(c.get('title', ''))}</span></th>"
                   for c in targets)
    body = []
    for tid in rows(rec):
        cells = []
        for c in targets:
            t = c.get("tries", {}).get(tid)
            state = "not-run" if c["status"] == "not run" or t is None else ("ok" if t["ok"] else "not-ok")
            cells.append(f'<td class="cell {state}" data-target="{escape(c["target"])}">'
                         f"{escape(cell_text(c, tid))}</td>")
        body.append(f"<tr><th>{escape(tid)}</th>{''.join(cells)}</tr>")
    summary = []
    for c in targets:
        sec = c.get("seconds", {})
        what = {"ran": "as expected" if c["ok"] else "NOT as expected", "error": f"error: {c.get('why', '')}",
                "not run": f"not run: {c.get('why', '')}"}[c["status"]]
        report = c.get("run_dir", "")
        linked = f' — <a href="{escape("file://" + report + "/report.html")}">report</a>' if report else ""
        summary.append(f"<li><code>{escape(c['target'])}</code>: {escape(what)}; on {escape(host_of(c))}; "
                       f"up {sec.get('up', 0):.0f} s, "
                       f"verify {sec.get('verify', 0):.0f} s, total {sec.get('total', 0):.0f} s{linked}</li>")
    notes = [f"<li><code>{escape(t)}</code>: {escape(n)}</li>" for t, n in rec["scenario"].get("notes", {}).items()
             if n]
    ok = rec.get("ok")
    verdict = "every cell that ran met its expectation" if ok else "some cell did not meet its expectation"
    page = [
        f"<h1>cgroup lab matrix: {escape(rec['scenario']['title'])}</h1>",
        f"<p class=\"meta\">scenario <code>{escape(rec['scenario']['id'])}</code>, run {escape(rec.get('run', ''))} "
        f"started {escape(rec.get('started_at', ''))}, {rec.get('seconds', 0):.0f} s in all</p>",
        f'<div class="verdict {"ok" if ok else "not-ok"}">{"✓" if ok else "✗"} {escape(verdict)}</div>',
        '<div class="wide"><table id="matrix"><tr><th>fix</th>' + head + "</tr>", *body, "</table></div>",
        "<h2>Targets</h2><ul>", *summary, "</ul>",
        *(["<h2>Why targets differ</h2><ul>", *notes, "</ul>"] if notes else []),
    ]
    css = html.STYLE + ("td.cell.ok { background: var(--ok-bg); color: var(--ok); } "
                   "td.cell.not-ok { background: var(--bad-bg); color: var(--bad); font-weight: 600; } "
                   "td.cell.not-run { background: #f3f4f6; color: var(--dim); font-style: italic; }")
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>cgroup lab matrix: {escape(rec['scenario']['id'])}</title>", f"<style>{css}</style>",
                      "</head><body>", *page, "</body></html>", ""])


def write_matrix_reports(where: Path) -> list[Path]:
    """matrix.md and junit.xml next to matrix.json (and matrix.html when the html renderer has one)."""
    rec = json.loads((where / "matrix.json").read_text(encoding="utf-8"))
    files = {"matrix.md": render_md(rec), "junit.xml": render_junit(rec), "matrix.html": render_html(rec)}
    return write_files(where, files)
