"""junit.xml: the run as test results, so CI (Jenkins, GitLab) shows each step and fix as a test.

A step that was expected to fail and failed passes: its `ok` already says whether it met its
expectation. Plumbing steps appear only when they failed. Built with ElementTree, so the XML is
always well-formed and escaped.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from lab.report.rows import redacted_record
from lab.run.record import RunRecord, StepRecord, TryRecord, coerce
from lab.run.verdict import try_words, verdict

SUITE = "cgroup-lab"
# Characters XML 1.0 cannot carry at all (ANSI escapes, NULs...): shown as \xNN instead.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def clean(text: str) -> str:
    """text with every character XML 1.0 cannot carry (control characters but tab and line ends,
    surrogates, U+FFFE, U+FFFF) written as a visible escape of its code point in hex (ESC: \\x1b)."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def seconds(value: float) -> str:
    """Seconds as JUnit's time attribute: three decimals ("1.500")."""
    return f"{value:.3f}"


def child(parent: ET.Element, tag: str, text: str = "", **attrs: str) -> ET.Element:
    """A new element tag under parent, with attrs and text (none when empty) passed through clean();
    returns it."""
    element = ET.SubElement(parent, tag, {k: clean(v) for k, v in attrs.items()})
    if text:
        element.text = clean(text)
    return element


def step_case(suite: ET.Element, classname: str, step: StepRecord) -> bool:
    """One testcase for a step; True when it passed."""
    case = child(suite, "testcase", name=step.id, classname=classname, time=seconds(step.seconds))
    if not step.ok:
        expected = {"fail": "fail (non-zero exit)", "any": "end (any exit status)"}.get(
            step.expected, step.expected if step.expected.startswith("exit ") else "succeed (exit 0)")
        message = f"expected to {expected}; exited {step.exit_code}"
        child(case, "failure", f"{step.user}$ {step.command}\nexpected: {expected}\n"
              f"observed: exit {step.exit_code}\n{step.note}".rstrip(), message=message, type="StepNotAsExpected")
    prompt = f"# {step.title}\n{step.user}$ {step.command}\n"
    child(case, "system-out", prompt + step.stdout + step.stderr)
    return step.ok


def try_case(suite: ET.Element, classname: str, rec: RunRecord, row: TryRecord, steps: list[StepRecord],
             leak: str) -> tuple[bool, bool]:
    """One testcase for a try: (passed, errored). A try that broke off is an error, not a failure."""
    case = child(suite, "testcase", name=row.id, classname=f"{classname}.{row.kind}",
                 time=seconds(sum(s.seconds for s in steps)))
    words = try_words(rec, row)
    facts = [f"kind: {row.kind}", f"expected: {row.expected}", f"observed: {row.observed}", f"verdict: {words}",
             f"isolation: {rec.isolation}"]
    if row.reverted is not None:
        facts.append(f"reverted: {'yes' if row.reverted else 'no'}")
    facts += [f"signature seen: {s}" for s in row.signature_matched]
    facts += [f"observed {k}: {v}" for k, v in row.fields.items()]
    if leak and row.kind == "restored":
        facts.append(f"leak: {leak}")
    errored = row.error is not None and not row.ok
    if errored:
        child(case, "error", "\n".join(facts), type="TryBrokeOff", message=row.error or "")
    elif not row.ok:
        message = f"expected {row.expected}, observed {row.observed}: {words}"
        if leak and row.kind == "restored":
            message += f" ({leak})"
        child(case, "failure", "\n".join(facts), type="TryNotAsExpected", message=message)
    child(case, "system-out", "\n".join([row.title, row.why, *facts, "steps: " + ", ".join(
        f"{s.id} ({'ok' if s.ok else 'NOT ok'})" for s in steps)]).strip())
    return row.ok, errored


def run_case(suite: ET.Element, classname: str, rec: RunRecord) -> tuple[int, int]:
    """Testcases for a run that ended early: (errors, skipped)."""
    v = verdict(rec)
    if rec.error:
        case = child(suite, "testcase", name="run", classname=classname, time=seconds(0))
        child(case, "error", rec.error, message=rec.error, type="LabError")
        return 1, 0
    if rec.stopped or rec.kept_failing:
        fixes = classname.rsplit(".", 1)[0] + ".tries"
        why = (f"stopped by the presenter after {rec.stopped}" if rec.stopped
               else f"the run kept {rec.kept_failing} as it failed")
        for name in v.not_run or ("run",):
            case = child(suite, "testcase", name=name, classname=fixes, time=seconds(0))
            child(case, "skipped", message=f"not run: {why}")
        return 0, len(v.not_run or ("run",))
    return 0, 0


def properties(suite: ET.Element, rec: RunRecord) -> None:
    """Add the run's facts to suite as <properties>: the lab's name, target, provider, title, cgroup
    layout, admin, start time, run and isolation (those set), the scenario id, the versions (one line,
    " | " between), each evidence block's holds, and the leak sentence when the verdict found one."""
    props = child(suite, "properties")
    for key in ("name", "target", "provider", "title", "cgroup_layout", "admin_user", "started_at", "run",
                "isolation"):
        value = getattr(rec, key)
        if value:
            child(props, "property", name=key, value=str(value))
    child(props, "property", name="scenario", value=rec.scenario.id)
    if rec.versions:
        child(props, "property", name="versions", value=" | ".join(rec.versions.splitlines()))
    for i, ev in enumerate(rec.evidence, start=1):
        child(props, "property", name=f"evidence-{i}-holds", value=str(ev.holds).lower())
    leak = verdict(rec).leak
    if leak is not None:
        child(props, "property", name="leak", value=leak.sentence(rec.outcomes))


def render(rec: RunRecord | dict) -> str:
    """junit.xml of a run's record."""
    rec = coerce(rec)
    rec = redacted_record(rec)
    v = verdict(rec)
    leak = v.leak.sentence(rec.outcomes) if v.leak else ""
    name = f"{SUITE}.{rec.scenario.id or 'scenario'}.{rec.target or 'unknown'}"
    root = ET.Element("testsuites", name=SUITE)
    suite = child(root, "testsuite", name=name, timestamp=rec.started_at.removesuffix("Z"))
    properties(suite, rec)
    results = [step_case(suite, f"{name}.steps", s) for s in rec.story_steps]
    try_errors = 0
    for row in rec.tries:
        ok, errored = try_case(suite, f"{name}.tries", rec, row, rec.steps_of(row.id), leak)
        if errored:
            try_errors += 1
        else:
            results.append(ok)
    errors, skipped = run_case(suite, f"{name}.run", rec)
    # plumbing is not a test of its own, but a failed teardown/observe/preflight must not leave CI green
    results += [step_case(suite, f"{name}.plumbing", s) for s in rec.steps if s.plumbing and not s.ok]
    counts = {"tests": str(len(results) + errors + try_errors + skipped), "failures": str(results.count(False)),
              "errors": str(errors + try_errors), "skipped": str(skipped), "time": seconds(rec.seconds)}
    for element in (root, suite):
        element.attrib.update(counts)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
