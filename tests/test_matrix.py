"""lab.matrix's aggregation on recorded runs: a cell per try and target, a target that cannot be
built here reported as not run (the real path, no VM), a mismatch, and the three formats."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from labtest import make_settings

from lab.core.errors import LabError
from lab.report import matrix as report
from lab.run import matrix

RECORD = json.loads((Path(__file__).parent / "fixtures" / "verify-bookworm.json").read_text())


def cell_from(record: dict, target: str, ok: bool = True) -> dict:
    tries = record["tries"]
    return {"target": target, "title": target, "name": f"x-{target}", "status": "ran", "ok": ok, "why": "",
            "seconds": {"up": 80.0, "verify": 30.0, "destroy": 4.0, "total": 114.0},
            "tries": {t["id"]: {"expected": t["expected"], "observed": t["observed"], "ok": t["ok"]} for t in tries}}


def a_matrix() -> dict:
    hybrid = cell_from(RECORD, "bookworm")
    unified = cell_from(RECORD, "bookworm-unified", ok=False)
    unified["tries"]["cgm"] = {"expected": "running", "observed": "unlimited", "ok": False}
    trusty = {"target": "trusty", "title": "Ubuntu 14.04", "name": "x-trusty", "status": "not run", "ok": False,
              "why": "the Ubuntu archive cannot be reached", "seconds": {"total": 0.0}, "tries": {}}
    return {"kind": "matrix", "run": "20261129-130000", "started_at": "2026-11-29T13:00:00Z", "seconds": 230.0,
            "scenario": {"id": "sudo-lxc-cgroups", "title": "the seed", "notes": {"trusty": "", "bookworm": "hybrid"}},
            "targets": [trusty, hybrid, unified], "ok": False}


def test_rows_keep_the_run_order_with_the_restored_baseline_last() -> None:
    assert report.rows(a_matrix()) == ["baseline", "pam-systemd", "pam-cgfs", "cgm", "systemd-run",
                                       "baseline-restored"]


def test_cells_say_observed_and_whether_it_matched() -> None:
    rec = a_matrix()
    trusty, hybrid, unified = rec["targets"]
    assert report.cell_text(trusty, "baseline") == "not run"
    assert report.cell_text(hybrid, "baseline") == "failing ✓"
    assert report.cell_text(unified, "cgm") == "unlimited ✗ (expected running)"


def test_markdown_junit_and_html() -> None:
    rec = a_matrix()
    md = report.render_md(rec)
    assert "| `cgm` | not run | running ✓ | unlimited ✗ (expected running) |" in md
    assert "not run: the Ubuntu archive cannot be reached" in md and "some cell did not" in md
    root = ET.fromstring(report.render_junit(rec))
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {f"cgroup-lab.sudo-lxc-cgroups.{t}" for t in ("trusty", "bookworm", "bookworm-unified")}
    assert suites["cgroup-lab.sudo-lxc-cgroups.trusty"].get("skipped") == "1"
    assert suites["cgroup-lab.sudo-lxc-cgroups.bookworm-unified"].get("failures") == "1"
    assert root.get("failures") == "1" and root.get("tests") == "13"
    page = report.render_html(rec)
    assert 'class="cell not-ok" data-target="bookworm-unified">unlimited ✗ (expected running)' in page
    assert 'class="cell not-run" data-target="trusty">not run' in page


def test_a_target_that_cannot_be_built_here_is_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real matrix path for trusty: nothing is started, the reason is recorded, reports written."""
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, target="trusty")
    assert matrix.run(s, ("trusty",), publish=report.write_matrix_reports) is False
    where = matrix.matrix_root("sudo-lxc-cgroups") / "latest"
    rec = json.loads((where / "matrix.json").read_text())
    [cell] = rec["targets"]
    assert cell["status"] == "not run" and "cannot be reached" in cell["why"]
    assert {p.name for p in where.iterdir()} == {"matrix.json", "matrix.md", "junit.xml", "matrix.html"}
    assert not (tmp_path / ".lab" / "sudo-lxc-cgroups-trusty").exists(), "nothing was brought up"


def test_an_unknown_target_is_refused_before_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, target="bookworm", scenario="sudo-systemctl-user")
    with pytest.raises(LabError, match="has no target 'trusty'"):
        matrix.run(s, ("bookworm", "trusty"))
    assert not (tmp_path / ".lab").exists()


def test_jobs_run_cells_side_by_side_each_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--jobs 2 goes through the thread pool: each cell's output lands in its own log, the record
    keeps the targets' order and says how many ran at once (trusty: the real not-run path)."""
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, target="trusty")
    assert matrix.run(s, ("trusty",), publish=report.write_matrix_reports, jobs=2) is False
    rec = json.loads((matrix.matrix_root("sudo-lxc-cgroups") / "latest" / "matrix.json").read_text())
    assert rec["jobs"] == 2 and [c["target"] for c in rec["targets"]] == ["trusty"]
    log = Path(rec["targets"][0]["log"])
    assert log.parent.name == "logs" and "not run" in log.read_text()


@pytest.mark.parametrize("jobs", [0, 9])
def test_jobs_out_of_range_are_refused_before_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       jobs: int) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LabError, match="--jobs must be between 1 and 8"):
        matrix.run(make_settings(tmp_path, target="bookworm"), ("bookworm",), jobs=jobs)
    assert not (tmp_path / ".lab").exists()
