"""Isolation by snapshot against a real VM (issue 24): a scenario whose evidence step starts a
user's systemd manager (tests/fixtures/scenarios/lingering-manager). Under teardown isolation the
baseline right after the evidence sees that manager still running and the restored baseline at the
end does not: the verdict names the leak. Under snapshot isolation every try starts from the
baseline snapshot and the run meets its expectations.

Marked `vm`; CI runs it. The lab is destroyed in a finally, whatever happened.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_e2e_vm import invoke, leftovers

pytestmark = pytest.mark.vm

SCENARIO = Path(__file__).parent / "fixtures" / "scenarios" / "lingering-manager"
NAME = "isolation-lingering-manager"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    workdir = tmp_path_factory.mktemp("isolation")
    try:
        up = invoke(workdir, "lab.up", "--scenario", str(SCENARIO), "--target", "bookworm-unified", "--name", NAME)
        assert up.returncode == 0, up.stderr
        yield workdir
    finally:
        invoke(workdir, "lab.destroy", "--name", NAME, timeout=600)
        assert leftovers(NAME) == []


def latest(workdir: Path) -> dict:
    return json.loads((workdir / ".lab" / NAME / "reports" / "latest" / "verify.json").read_text())


def test_teardown_isolation_lets_the_manager_leak_and_says_so(lab: Path) -> None:
    run = invoke(lab, "lab.verify", "--name", NAME, "--isolation", "teardown")
    assert run.returncode == 1, run.stderr
    rec = latest(lab)
    assert rec["isolation"] == "teardown" and rec["reverts"] == []
    observed = {t["id"]: t["observed"] for t in rec["tries"]}
    assert observed == {"baseline": "manager", "wait": "no-manager", "baseline-restored": "no-manager"}, observed
    said = "the same command gave 'manager' (still has its user manager running) first and 'no-manager'"
    assert said in run.stdout.replace("\n", " ") or said in " ".join(run.stdout.split())
    reports = lab / ".lab" / NAME / "reports" / "latest"
    assert said in (reports / "transcript.md").read_text()
    suite = ET.parse(reports / "junit.xml").getroot().find("testsuite")
    leak = suite.find("properties/property[@name='leak']")
    assert leak is not None and said in leak.get("value", "") and "in between: wait" in leak.get("value", "")


def test_snapshot_isolation_gets_the_true_baseline(lab: Path) -> None:
    run = invoke(lab, "lab.verify", "--name", NAME)
    assert run.returncode == 0, run.stdout + run.stderr
    rec = latest(lab)
    assert rec["isolation"] == "snapshot" and rec["ok"] is True
    assert {t["id"]: t["observed"] for t in rec["tries"]} == {"baseline": "no-manager", "wait": "no-manager",
                                                              "baseline-restored": "no-manager"}
    assert [r["before"] for r in rec["reverts"]] == ["the evidence", "baseline", "wait", "baseline-restored",
                                                     "the end"]
    assert all(r["how"] == "loadvm" for r in rec["reverts"]), rec["reverts"]
    print("reverts:", [(r["before"], r["seconds"], r["until_shells"]) for r in rec["reverts"]])
