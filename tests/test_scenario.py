"""The verify judgement against outputs recorded from a real run (tests/fixtures/verify-bookworm.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from labtest import make_settings

from lab import scenario
from lab.targets import Outcome, get_target

RECORD = json.loads((Path(__file__).parent / "fixtures" / "verify-bookworm.json").read_text())


def step(step_id: str) -> dict:
    return next(s for s in RECORD["steps"] if s["id"] == step_id)


def test_recorded_evidence_shows_inheritance() -> None:
    assert scenario.inherited(RECORD["evidence"]["admin"], RECORD["evidence"]["sudo_user"])
    assert "session-" in RECORD["evidence"]["admin"]


def test_different_cgroups_are_not_inheritance() -> None:
    admin = "1:name=systemd:/user.slice/user-1001.slice/session-3.scope\n"
    other = "1:name=systemd:/user/dbusr/0\n"
    assert not scenario.inherited(admin, other)
    assert not scenario.inherited("", "")


@pytest.mark.parametrize(("fix_id", "expected"), [
    ("baseline", Outcome.FAILING), ("pam-systemd", Outcome.FAILING), ("pam-cgfs", Outcome.RUNNING),
    ("cgm", Outcome.RUNNING), ("systemd-run", Outcome.FAILING),
])
def test_recorded_observations_classify_as_measured(tmp_path: Path, fix_id: str, expected: Outcome) -> None:
    s = make_settings(tmp_path, target="bookworm")
    t = s.target_data
    fix = t.baseline if fix_id == "baseline" else t.fix(fix_id)
    observe = step(f"{fix_id}:observe")
    start = step(f"{fix_id}:start")
    obs = scenario.parse_observation(observe["stdout"])
    observed = scenario.classify(obs)
    assert observed == expected
    sigs = scenario.matched_signatures(fix, s, [start["stdout"], start["stderr"], *obs.log])
    assert scenario.judge(fix, observed, sigs)


def test_parse_observation_running_with_limit() -> None:
    obs = scenario.parse_observation(
        "state=RUNNING\npid=42\nmemory_cgroup=/user/dbusr/0/lxc.payload.mysql55\nlimit=268435456\nlimit_ok=yes\n"
        "--- lab.log\nNOTICE started\n")
    assert (obs.state, obs.limit, obs.cgroup, obs.log) == ("RUNNING", "268435456", "/user/dbusr/0/lxc.payload.mysql55",
                                                           ["NOTICE started"])
    assert scenario.classify(obs) == Outcome.RUNNING


def test_running_without_the_limit_is_unlimited() -> None:
    obs = scenario.parse_observation("state=RUNNING\nlimit=max\nlimit_ok=no\n--- lab.log\n")
    assert scenario.classify(obs) == Outcome.UNLIMITED


def test_a_failure_without_the_signature_is_not_the_bug(tmp_path: Path) -> None:
    s = make_settings(tmp_path, target="bookworm")
    base = s.target_data.baseline
    assert scenario.matched_signatures(base, s, ["lxc-start: permission denied on something else"]) == []
    assert not scenario.judge(base, Outcome.FAILING, [])
    assert not scenario.judge(base, Outcome.RUNNING, [])


def test_signature_placeholders_use_the_lab_names(tmp_path: Path) -> None:
    s = make_settings(tmp_path, target="trusty")
    s = type(s)(**{**s.__dict__, "container_name": "pg96"})
    found = scenario.matched_signatures(s.target_data.baseline, s, ["Failed to create hugetlb:pg96"])
    assert found == [r"Failed to create \S+:pg96"]


def test_verdict_words_tell_the_story() -> None:
    t = get_target("bookworm")
    assert scenario.verdict_words(t.baseline, Outcome.FAILING, True, True) == "fails, as the bug predicts (reproduced)"
    assert "but expected" in scenario.verdict_words(t.fix("cgm"), Outcome.FAILING, False, False)


def test_recorded_run_is_consistent() -> None:
    assert RECORD["ok"] is True and RECORD["restored"] is True
    assert [f["id"] for f in RECORD["fixes"]] == ["pam-systemd", "pam-cgfs", "cgm", "systemd-run"]
    for s in RECORD["steps"]:
        assert s["guest_seconds"] is None or s["guest_seconds"] <= s["seconds"]
