"""The verify judgement against outputs recorded from a real run (tests/fixtures/verify-bookworm.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from labtest import copy_scenario, make_facts, make_settings

from lab.machine.resolve import resolve
from lab.render.plan import plan
from lab.run import judge
from lab.run.record import StepRecord

RECORD = json.loads((Path(__file__).parent / "fixtures" / "verify-bookworm.json").read_text())


def step(step_id: str) -> dict:
    return next(s for s in RECORD["steps"] if s["id"] == step_id)


def outputs(evidence: dict) -> list[str]:
    return [column["output"] for column in evidence["columns"]]


def rules(tmp_path: Path) -> tuple[dict, ...]:
    return plan(resolve(make_settings(tmp_path, target="bookworm")), make_facts()).rules


def test_recorded_evidence_shows_inheritance() -> None:
    [ev] = RECORD["evidence"]
    assert ev["expect"] == "same"
    assert judge.evidence_holds(ev["expect"], outputs(ev))
    assert "session-" in ev["columns"][0]["output"]
    assert [step(i)["stdout"] for i in ev["steps"]] == outputs(ev)


def test_different_cgroups_are_not_inheritance() -> None:
    admin = "1:name=systemd:/user.slice/user-1001.slice/session-3.scope\n"
    other = "1:name=systemd:/user/dbusr/0\n"
    assert not judge.evidence_holds("same", [admin, other])
    assert not judge.evidence_holds("same", ["", ""])


@pytest.mark.parametrize(("fix_id", "expected"), [
    ("baseline", "failing"), ("pam-systemd", "failing"), ("pam-cgfs", "running"),
    ("cgm", "running"), ("systemd-run", "failing"),
])
def test_recorded_observations_classify_as_measured(tmp_path: Path, fix_id: str, expected: str) -> None:
    p = plan(resolve(make_settings(tmp_path, target="bookworm")), make_facts())
    t = p.baseline if fix_id == "baseline" else p.fix(fix_id)
    assert t.expected == expected
    observe = step(f"{fix_id}:observe")
    start = step(f"{fix_id}:start")
    obs = judge.parse_observation(observe["stdout"])
    observed = judge.classify(p.rules, judge.observed_fields(obs, StepRecord(**start)))
    assert observed == expected
    sigs = judge.matched_signatures(t.signatures, [start["stdout"], start["stderr"], *obs.notes])
    assert judge.judge(t.expected, observed, t.signatures, sigs)


def test_parse_observation_running_with_limit(tmp_path: Path) -> None:
    obs = judge.parse_observation(
        "state=RUNNING\npid=42\nmemory_cgroup=/user/dbusr/0/lxc.payload.mysql55\nlimit=268435456\nlimit_ok=yes\n"
        "--- lab.log\nNOTICE started\n")
    assert (obs.fields["state"], obs.fields["limit"], obs.fields["memory_cgroup"], obs.notes) == (
        "RUNNING", "268435456", "/user/dbusr/0/lxc.payload.mysql55", ["NOTICE started"])
    assert judge.classify(rules(tmp_path), obs.fields) == "running"


def test_running_without_the_limit_is_unlimited(tmp_path: Path) -> None:
    obs = judge.parse_observation("state=RUNNING\nlimit=max\nlimit_ok=no\n--- lab.log\n")
    assert judge.classify(rules(tmp_path), obs.fields) == "unlimited"


def test_a_failure_without_the_signature_is_not_the_bug(tmp_path: Path) -> None:
    base = plan(resolve(make_settings(tmp_path, target="bookworm")), make_facts()).baseline
    assert base.failure and base.signatures
    assert judge.matched_signatures(base.signatures, ["lxc-start: permission denied on something else"]) == []
    assert not judge.judge(base.expected, "failing", base.signatures, [])
    assert not judge.judge(base.expected, "running", base.signatures, [])


def test_signature_placeholders_use_the_lab_names(tmp_path: Path) -> None:
    folder = copy_scenario(tmp_path, {'container = "mysql55"': 'container = "pg96"'})
    s = make_settings(tmp_path, target="trusty", scenario=str(folder))
    signatures = plan(resolve(s), make_facts()).baseline.signatures
    found = judge.matched_signatures(signatures, ["Failed to create hugetlb:pg96"])
    assert found == [r"Failed to create \S+:pg96"]


def test_recorded_run_is_consistent() -> None:
    assert RECORD["ok"] is True and RECORD["tries"][-1]["id"] == "baseline-restored" and RECORD["tries"][-1]["ok"]
    assert [f["id"] for f in RECORD["tries"] if f["kind"] == "fix"] == ["pam-systemd", "pam-cgfs", "cgm", "systemd-run"]
    for s in RECORD["steps"]:
        assert s["guest_seconds"] is None or s["guest_seconds"] <= s["seconds"]
