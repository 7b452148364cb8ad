"""junit.xml: the run as test results, so CI (Jenkins, GitLab) shows each step and fix as a test.

A step that was expected to fail and failed passes: its `ok` already says whether it met its
expectation. Plumbing steps appear only when they failed. Built with ElementTree, so the XML is
always well-formed and escaped.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from lab.report.rows import fix_rows, is_plumbing, redacted, steps_of, story_steps, verdict

SUITE = "cgroup-lab"
# Characters XML 1.0 cannot carry at all (ANSI escapes, NULs...): shown as \xNN instead.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean(text: str) -> str:
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def seconds(value: float) -> str:
    return f"{value:.3f}"


def child(parent: ET.Element, tag: str, text: str = "", **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k: clean(v) for k, v in attrs.items()})
    if text:
        element.text = clean(text)
    return element


def step_case(suite: ET.Element, classname: str, step: dict) -> bool:
    """One testcase for a step; True when it passed."""
    case = child(suite, "testcase", name=step["id"], classname=classname,
                 time=seconds(step.get("seconds", 0)))
    ok = bool(step.get("ok"))
    if not ok:
        expected = "fail (non-zero exit)" if step.get("expected") == "fail" else "succeed (exit 0)"
        message = f"expected to {expected}; exited {step.get('exit_code')}"
        child(case, "failure", f"{step['user']}$ {step['command']}\nexpected: {expected}\n"
              f"observed: exit {step.get('exit_code')}\n{step.get('note', '')}".rstrip(),
              message=message, type="StepNotAsExpected")
    prompt = f"# {step.get('title', '')}\n{step['user']}$ {step['command']}\n"
    child(case, "system-out", prompt + step.get("stdout", "") + step.get("stderr", ""))
    return ok


def fix_case(suite: ET.Element, classname: str, record: dict, row: dict, steps: list[dict]) -> bool:
    case = child(suite, "testcase", name=row["id"], classname=classname,
                 time=seconds(sum(s.get("seconds", 0) for s in steps)))
    ok = bool(row.get("ok"))
    facts = [f"expected: {row.get('expected', '')}", f"observed: {row.get('observed', '')}",
             f"verdict: {verdict(record, row)}", f"reverted: {'yes' if row.get('reverted') else 'no'}"]
    facts += [f"signature seen: {s}" for s in row.get("signature_matched", [])]
    facts += [f"observed {k}: {v}" for k, v in (row.get("fields") or {}).items()]
    if not ok:
        child(case, "failure", "\n".join(facts), type="FixOutcomeNotAsExpected",
              message=f"expected {row.get('expected', '')}, observed {row.get('observed', '')}: {verdict(record, row)}")
    child(case, "system-out", "\n".join([row.get("title", ""), row.get("why", ""), *facts, "steps: " + ", ".join(
        f"{s['id']} ({'ok' if s.get('ok') else 'NOT ok'})" for s in steps)]).strip())
    return ok


def run_case(suite: ET.Element, classname: str, record: dict) -> tuple[int, int]:
    """A testcase for a run that ended early: (errors, skipped)."""
    if record.get("error"):
        case = child(suite, "testcase", name="run", classname=classname, time=seconds(0))
        child(case, "error", record["error"], message=record["error"], type="LabError")
        return 1, 0
    if record.get("stopped"):
        fixes = classname.rsplit(".", 1)[0] + ".fixes"
        for name in record.get("not_run") or ["run"]:
            case = child(suite, "testcase", name=name, classname=fixes, time=seconds(0))
            child(case, "skipped", message=f"not run: stopped by the presenter after {record['stopped']}")
        return 0, len(record.get("not_run") or ["run"])
    return 0, 0


def properties(suite: ET.Element, record: dict) -> None:
    props = child(suite, "properties")
    for key in ("name", "target", "provider", "title", "cgroup_layout", "admin_user", "started_at", "run"):
        if record.get(key) is not None:
            child(props, "property", name=key, value=str(record[key]))
    child(props, "property", name="scenario", value=str((record.get("scenario") or {}).get("id", "")))
    text = (record.get("versions") or {}).get("text", "")
    if text:
        child(props, "property", name="versions", value=" | ".join(text.splitlines()))
    for i, ev in enumerate(record.get("evidence") or [], start=1):
        child(props, "property", name=f"evidence-{i}-holds", value=str(bool(ev.get("holds"))).lower())


def render(record: dict) -> str:
    record = redacted(record)
    name = f"{SUITE}.{(record.get('scenario') or {}).get('id', 'scenario')}.{record.get('target', 'unknown')}"
    total = seconds(record.get("seconds", 0))
    root = ET.Element("testsuites", name=SUITE)
    suite = child(root, "testsuite", name=name, timestamp=record.get("started_at", "").removesuffix("Z"))
    properties(suite, record)
    results = [step_case(suite, f"{name}.steps", s) for s in story_steps(record)]
    results += [fix_case(suite, f"{name}.fixes", record, row, steps_of(record, row["id"])) for row in fix_rows(record)]
    errors, skipped = run_case(suite, f"{name}.run", record)
    # plumbing is not a test of its own, but a failed reset/stop/preflight must not leave CI green
    results += [step_case(suite, f"{name}.plumbing", s) for s in record.get("steps", [])
                if is_plumbing(s["id"]) and not s.get("ok")]
    counts = {"tests": str(len(results) + errors + skipped), "failures": str(results.count(False)),
              "errors": str(errors), "skipped": str(skipped), "time": total}
    for element in (root, suite):
        element.attrib.update(counts)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
