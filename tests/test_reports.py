"""The report formats, checked with real parsers against a recorded run (no VM)."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import junitparser
import pytest

from lab.report import cast, junit, latest_run, load_record, markdown, redact, write_reports
from lab.run import record as records
from lab.run.record import RunRecord, is_plumbing, point_latest

FIXTURE = Path(__file__).parent / "fixtures" / "verify-bookworm.json"
FIXTURE_V1 = Path(__file__).parent / "fixtures" / "verify-bookworm-v1.json"
KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
       "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
       "QyNTUxOQAAACBsZWFrZWRzZWNyZXRsZWFrZWRzZWNyZXRsZWFrZWQAAAA=\n"
       "-----END OPENSSH PRIVATE KEY-----\n")
KEY_MATERIAL = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"
SUITE = "cgroup-lab.sudo-lxc-cgroups.bookworm"


@pytest.fixture
def record() -> RunRecord:
    return records.load(FIXTURE)


def failing(record: RunRecord, fix_id: str = "pam-cgfs") -> RunRecord:
    """The record as if one fix had not worked: its row and its start step not ok."""
    bad = record.model_copy(deep=True)
    row = bad.try_(fix_id)
    assert row is not None
    row.ok, row.observed = False, "failing"
    for step in bad.steps:
        if step.id == f"{fix_id}:start":
            step.ok = False
    bad.ok = False
    return bad


def step(rec: RunRecord, step_id: str):
    return next(s for s in rec.steps if s.id == step_id)


def suite_of(xml: str) -> tuple[ET.Element, ET.Element]:
    root = ET.fromstring(xml)
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    return root, suites[0]


# --- junit -----------------------------------------------------------------------------------------

def test_junit_counts_match_the_record(record: RunRecord) -> None:
    root, suite = suite_of(junit.render(record))
    cases = suite.findall("testcase")
    steps, rows = record.story_steps, record.tries
    assert suite.get("name") == SUITE
    assert len(cases) == len(steps) + len(rows) == int(suite.get("tests")) == int(root.get("tests"))
    assert {c.get("name") for c in cases if c.get("classname") == f"{SUITE}.steps"} == {s.id for s in steps}
    assert [c.get("name") for c in cases if c.get("classname").startswith(f"{SUITE}.tries.")] == [r.id for r in rows]
    assert [c.get("classname") for c in cases if c.get("name") in ("baseline", "cgm", "baseline-restored")] == \
        [f"{SUITE}.tries.baseline", f"{SUITE}.tries.fix", f"{SUITE}.tries.restored"]
    not_ok = sum(not s.ok for s in steps) + sum(not r.ok for r in rows)
    for element in (root, suite):
        assert int(element.get("failures")) == not_ok == len(suite.findall("testcase/failure"))
        assert element.get("errors") == "0" and element.get("skipped") == "0"
        assert float(element.get("time")) == pytest.approx(record.seconds, abs=1e-3)
    assert not any(is_plumbing(c.get("name")) for c in cases)


def test_junit_expected_failure_is_a_pass(record: RunRecord) -> None:
    _, suite = suite_of(junit.render(record))
    start = step(record, "baseline:start")
    assert start.expected == "fail" and start.exit_code != 0
    case = suite.find("testcase[@name='baseline:start']")
    assert case is not None and case.find("failure") is None
    assert float(case.get("time")) == pytest.approx(start.seconds, abs=1e-3)
    assert "Received container state" in case.findtext("system-out")


def test_junit_reports_a_fix_that_did_not_work(record: RunRecord) -> None:
    root, suite = suite_of(junit.render(failing(record)))
    assert root.get("failures") == suite.get("failures") == "2"
    fix = suite.find(f"testcase[@classname='{SUITE}.tries.fix'][@name='pam-cgfs']")
    failure = fix.find("failure")
    assert failure is not None and failure.get("type")
    assert "expected running" in failure.get("message") and "observed failing" in failure.get("message")
    assert suite.find("testcase[@name='pam-cgfs:start']/failure") is not None


def test_junit_counts_errors_and_failed_plumbing(record: RunRecord) -> None:
    broken = record.model_copy(deep=True)
    broken.error = "could not reset <the> container & \x1b[31mstop\x1b[0m"
    step(broken, "cgm:cleanup").ok = False
    root, suite = suite_of(junit.render(broken))
    assert root.get("errors") == suite.get("errors") == "1"
    assert suite.get("failures") == "1"
    assert int(suite.get("tests")) == len(record.story_steps) + len(record.tries) + 2
    assert "<the> container &" in suite.find("testcase/error").get("message")


# --- asciicast -------------------------------------------------------------------------------------

def test_cast_is_valid_asciicast_v2(record: RunRecord) -> None:
    lines = cast.render(record).splitlines()
    head = json.loads(lines[0])
    assert head["version"] == 2 and head["width"] == 100 and head["height"] == 30
    assert head["timestamp"] == 1795916710  # 2026-11-29T01:45:10Z
    assert head["env"] == {"TERM": "xterm-256color", "SHELL": "/bin/bash"}
    events = [json.loads(line) for line in lines[1:]]
    times = [e[0] for e in events]
    assert all(isinstance(e, list) and len(e) == 3 and e[1] == "o" and isinstance(e[2], str) for e in events)
    assert times == sorted(times) and times[0] >= 0
    screen = "".join(e[2] for e in events)
    for story in record.story_steps:
        assert story.command in screen
    assert "sudo bash observe.sh" not in screen and "sudo bash teardown.sh" not in screen  # plumbing is left out


def test_cast_prints_output_when_the_step_finished(record: RunRecord) -> None:
    events = [json.loads(line) for line in cast.render(record).splitlines()[1:]]
    start = step(record, "baseline:start")
    first = start.stderr.splitlines()[0]
    at = next(e[0] for e in events if first in e[2])
    assert at == pytest.approx(start.started + start.seconds, abs=1e-3)


# --- markdown --------------------------------------------------------------------------------------

def matrix_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = lines.index("| try | kind | title | expected | observed | result |")
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return table


def test_markdown_matrix(record: RunRecord) -> None:
    text = markdown.render(record)
    table = matrix_rows(text)
    assert table[0] == ["try", "kind", "title", "expected", "observed", "result"]
    assert set("".join(table[1])) <= set("-: ")
    rows = record.tries
    assert len(table) == 2 + len(rows) == 2 + 2 + len([r for r in rows if r.kind == "fix"])
    for cells, row in zip(table[2:], rows, strict=True):
        assert cells[0] == f"`{row.id}`"
        assert cells[1] == row.kind
        assert cells[3:5] == [row.expected, row.observed]
        assert cells[5].startswith("✓")
    for row in rows:
        assert f"## {rows.index(row) + 2}. `{row.id}`" in text


def test_markdown_tells_the_story(record: RunRecord) -> None:
    text = markdown.render(record)
    assert text.startswith(f"# cgroup lab: {record.title}\n")
    for line in record.versions.splitlines():
        assert line in text
    assert "| labadmin$ cat /proc/self/cgroup | labadmin$ sudo -u dbusr cat /proc/self/cgroup |" in text
    assert "**`9:memory:/user.slice/user-1001.slice/session-15.scope`**" in text
    assert "The outputs are identical" in text
    assert "```console\nlabadmin$ sudo -H -u dbusr lxc-start -n mysql55 -d\n" in text
    assert "sudo bash observe.sh" not in text and "sudo bash teardown.sh" not in text and "preflight" not in text
    assert "… 4 lines …" in text  # cgm:apply printed 15 lines
    assert "39 steps (17 shown, 22 plumbing) in 49.1 s" in text


def test_markdown_marks_a_fix_that_did_not_work(record: RunRecord) -> None:
    bad = failing(record)
    row = next(cells for cells in matrix_rows(markdown.render(bad)) if cells[0] == "`pam-cgfs`")
    assert row[3:5] == ["running", "failing"]
    assert row[5].startswith("✗")
    assert "✗ some step did not meet its expectation" in markdown.render(bad)


def test_markdown_differing_evidence(record: RunRecord) -> None:
    other = record.model_copy(deep=True)
    [ev] = other.evidence
    ev.columns[1].output = "0::/user.slice/user-1002.slice/session-16.scope\n"
    ev.holds = False
    text = markdown.render(other)
    assert "The outputs are not identical" in text and "precondition does not hold" in text
    assert "**`0::/user.slice/user-1002.slice/session-16.scope`**" not in text


def test_markdown_numbers_several_evidence_blocks_apart(record: RunRecord) -> None:
    """One block is section 1; several are 1.1, 1.2 (each heading was "## 1." before)."""
    assert "\n## 1. Evidence: " in markdown.render(record)
    two = record.model_copy(deep=True)
    second = two.evidence[0].model_copy(deep=True)
    second.title = "the second block"
    two.evidence.append(second)
    text = markdown.render(two)
    assert "\n## 1.1 Evidence: " in text and "\n## 1.2 Evidence: the second block" in text
    assert "\n## 1. " not in text


# --- secrets and files -----------------------------------------------------------------------------

def test_redact() -> None:
    text = f"before\n{KEY}after\n-----BEGIN RSA PRIVATE KEY-----\nMIIE{KEY_MATERIAL}"
    out = redact(text)
    assert KEY_MATERIAL not in out and "PRIVATE KEY" not in out
    assert out.startswith("before\n[private key redacted]\nafter\n")


@pytest.mark.parametrize("renderer", [markdown.render, junit.render, cast.render])
def test_no_private_key_in_any_report(record: RunRecord, renderer) -> None:
    leaky = record.model_copy(deep=True)
    for one in leaky.steps:
        if one.id in ("pam-cgfs:apply", "cgm:apply"):  # short and long (trimmed) output
            one.stdout += KEY
    leaky.error = KEY
    out = renderer(leaky)
    assert KEY_MATERIAL not in out and "BEGIN OPENSSH" not in out
    assert "[private key redacted]" in out


def test_write_reports_from_verify_json_alone(record: RunRecord, tmp_path: Path) -> None:
    reports = tmp_path / ".lab" / "bookworm" / "reports"
    run = reports / record.run
    run.mkdir(parents=True)
    shutil.copy(FIXTURE, run / "verify.json")
    point_latest(reports, run.name)
    assert latest_run("bookworm", project_dir=tmp_path) == run.resolve()
    assert load_record(run) == record
    written = write_reports(run)
    assert sorted(p.name for p in written) == ["junit.xml", "report.html", "transcript.md", "verify.cast"]
    assert all(p.parent == run for p in written)
    first = {p.name: p.read_text(encoding="utf-8") for p in written}
    write_reports(reports / "latest")
    for name, text in first.items():
        assert (run / name).read_text(encoding="utf-8") == text
    assert first["transcript.md"] == markdown.render(record)
    ET.fromstring(first["junit.xml"])
    assert not list(run.glob("*.tmp"))


def test_junit_reads_in_a_junit_consumer(record: RunRecord) -> None:
    """junitparser reads JUnit XML the way CI systems do: suites, cases, results."""
    xml = junitparser.JUnitXml.fromstring(junit.render(record))
    suites = list(xml) if isinstance(xml, junitparser.JUnitXml) else [xml]
    cases = [case for suite in suites for case in suite]
    assert len(suites) == 1 and suites[0].name == SUITE
    assert suites[0].tests == len(cases) and suites[0].failures == 0
    assert all(case.is_passed for case in cases)
    start = next(case for case in cases if case.name == "baseline:start")
    assert start.is_passed, "the expected failure of the baseline is a pass"
    broken = record.model_copy(deep=True)
    broken.try_("cgm").ok = False
    bad = junitparser.JUnitXml.fromstring(junit.render(broken))
    bad_cases = [case for suite in (list(bad) if isinstance(bad, junitparser.JUnitXml) else [bad]) for case in suite]
    assert [c.name for c in bad_cases if not c.is_passed] == ["cgm"]


def test_prune_keeps_the_newest_runs_and_the_latest_one(tmp_path: Path) -> None:
    """keep_reports: older run directories go; the run `latest` names stays even when it is old;
    a directory without a verify.json (not a run) and other files are never touched."""
    from lab.run.record import prune

    reports = tmp_path / "reports"
    names = ["20261129-100000", "20261129-110000", "20261129-110000-2", "20261129-120000", "20261129-130000"]
    for name in names:
        (reports / name).mkdir(parents=True)
        (reports / name / "verify.json").write_text("{}")
    (reports / "notes").mkdir()
    (reports / "bench.json").write_text("{}")
    point_latest(reports, "20261129-100000")
    gone = prune(reports, keep=2)
    assert sorted(p.name for p in gone) == ["20261129-110000", "20261129-110000-2"]
    left = sorted(p.name for p in reports.iterdir())
    assert left == ["20261129-100000", "20261129-120000", "20261129-130000", "bench.json", "latest", "notes"]
    assert prune(reports, keep=2) == []


def test_a_record_of_the_previous_schema_renders_the_same(record: RunRecord, tmp_path: Path) -> None:
    """lab.report reads verify.json of schema 1 (the untyped dict of earlier versions): upgraded to
    the same typed record, so every report of an old run reads as it would today."""
    old = json.loads(FIXTURE_V1.read_text(encoding="utf-8"))
    assert "schema_version" not in old and "baseline" in old and "tries" not in old
    upgraded = records.parse(old)
    assert upgraded == record
    assert [t.kind for t in upgraded.tries] == ["baseline", "fix", "fix", "fix", "fix", "restored"]
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FIXTURE_V1, run / "verify.json")
    assert load_record(run) == record
    assert {p.name for p in write_reports(run)} == {"junit.xml", "report.html", "transcript.md", "verify.cast"}
    assert (run / "transcript.md").read_text(encoding="utf-8") == markdown.render(record)


@pytest.mark.parametrize(("text", "words"), [
    ("[1, 2]", "not a verify record"), ("{", "not valid JSON"),
    ('{"schema_version": 7}', "is not of a schema this version reads \\(schema_version 7"),
    ('{"schema_version": 2, "run": "x"}', "not a verify record: name: Field required"),
])
def test_a_damaged_record_is_one_clear_line(tmp_path: Path, text: str, words: str) -> None:
    from lab.core.errors import LabError

    (tmp_path / "verify.json").write_text(text)
    with pytest.raises(LabError, match=words):
        load_record(tmp_path)
