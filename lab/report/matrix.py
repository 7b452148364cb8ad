"""The matrix reports (fixes down, targets across) from matrix.json: markdown and JUnit."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
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
    """A matrix record (matrix.json as a dict) -> one page (templates/matrix.html.j2): fixes down,
    targets across, each cell the observed outcome coloured by whether it matched; a target not run
    says why. Nothing to fetch."""
    rec = redacted(rec)
    notes = [(t, n) for t, n in rec["scenario"].get("notes", {}).items() if n]
    return html.environment().get_template("matrix.html.j2").render(
        rec=rec, targets=rec.get("targets", []), try_ids=rows(rec), notes=notes, css=html.stylesheet(),
        cell_text=cell_text, host_of=host_of, style=html.style)


def write_matrix_reports(where: Path) -> list[Path]:
    """matrix.md and junit.xml next to matrix.json (and matrix.html when the html renderer has one)."""
    rec = json.loads((where / "matrix.json").read_text(encoding="utf-8"))
    files = {"matrix.md": render_md(rec), "junit.xml": render_junit(rec), "matrix.html": render_html(rec)}
    return write_files(where, files)
