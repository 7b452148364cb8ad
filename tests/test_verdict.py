"""The one verdict (lab.run.verdict): what a record means, for every report and the live view."""

from __future__ import annotations

from html import unescape
from pathlib import Path

import pytest

from lab.config import scenario as sc
from lab.report import cast, html, junit, markdown
from lab.run import record as records
from lab.run.record import RunRecord, TryRecord
from lab.run.verdict import finish, try_words, verdict

FIXTURE = Path(__file__).parent / "fixtures" / "verify-bookworm.json"
OUTCOMES = {k: v.model_dump() for k, v in sc.load("sudo-lxc-cgroups").model.outcomes.items()}


@pytest.fixture
def rec() -> RunRecord:
    return records.load(FIXTURE)


def words(kind: str, expected: str, observed: str, ok: bool, **more: object) -> str:
    base = RunRecord(run="r", name="n", target="t", scenario={"id": "s"}, outcomes=OUTCOMES)
    return try_words(base, TryRecord(id="x", kind=kind, expected=expected, observed=observed, ok=ok,
                                     **more))  # type: ignore[arg-type]


def test_words_come_from_the_scenario_and_the_kind() -> None:
    assert words("baseline", "failing", "failing", True) == "fails, as the bug predicts (reproduced)"
    assert words("fix", "running", "unlimited", False, reverted=True) == \
        "runs without its memory limit, but expected: runs"
    assert words("fix", "failing", "failing", True) == "still fails, as measured for this target"
    assert words("fix", "running", "running", True) == "runs, as expected"
    assert words("variant", "failing", "failing", True) == "fails: this way of starting shows the bug too"
    assert words("control", "running", "running", True) == "runs, as the control must"
    control = words("control", "running", "failing", False)
    assert control == "fails, but the control must give: runs" and "as measured" not in control
    assert words("fix", "running", "error", False, error="the SSH connection dropped") == \
        "could not be carried out: the SSH connection dropped"
    assert words("fix", "running", "failing", False, kept=True).endswith("(kept as it failed)")


def test_the_fixture_run_is_met(rec: RunRecord) -> None:
    v = verdict(rec)
    assert (v.state, v.ok, v.not_run, v.failed_steps, v.leak) == ("met", True, (), (), None)
    assert v.headline == "✓ every step met its expectation"


def test_a_run_that_raised_is_never_met(rec: RunRecord) -> None:
    """Every try and step met, but the run broke off: an error, whatever the tries say."""
    broken = rec.model_copy(deep=True)
    broken.error = "the SSH connection to lab test dropped during step 'cgm:start'"
    v = verdict(broken)
    assert (v.state, v.ok) == ("error", False)
    assert v.headline.startswith("✗ the run broke off: the SSH connection")
    for rendered in (markdown.render(broken), cast.render(broken)):
        assert "every step met its expectation" not in rendered
    assert 'errors="1"' in junit.render(broken)


def test_a_kept_failure_is_recorded_and_not_met(rec: RunRecord) -> None:
    kept = rec.model_copy(deep=True)
    cgfs = kept.try_("pam-cgfs")
    assert cgfs is not None
    cgfs.ok, cgfs.observed, cgfs.kept = False, "failing", True
    kept.tries = kept.tries[:3]
    kept.kept_failing = "pam-cgfs"
    v = verdict(kept)
    assert (v.state, v.ok) == ("kept", False)
    assert v.not_run == ("cgm", "systemd-run", "baseline-restored"), "the kept try ran: it is not 'not run'"
    assert "■ kept pam-cgfs as it failed" in markdown.render(kept)


def test_a_leak_between_tries_is_said_in_plain_words(rec: RunRecord) -> None:
    """Teardown isolation: the baseline's command gave one outcome first and another at the end."""
    leaky = rec.model_copy(deep=True)
    restored = leaky.try_("baseline-restored")
    assert restored is not None
    restored.observed, restored.ok = "running", False
    finish(leaky)
    v = verdict(leaky)
    assert v.leak is not None and (v.leak.first, v.leak.last) == ("failing", "running")
    sentence = v.leak.sentence(leaky.outcomes)
    assert "gave 'failing' (fails) first and 'running' (runs) at the end" in sentence
    assert "state from an earlier step changed the outcome" in sentence
    assert "pam-systemd, pam-cgfs, cgm, systemd-run" in sentence and 'isolation = "snapshot"' in sentence
    assert sentence in markdown.render(leaky)
    assert sentence in junit.render(leaky).replace("&quot;", '"')
    page = unescape(html.render(leaky))
    assert f'<p class="leak" id="leak">{sentence}</p>' in page
    leaky.isolation = "snapshot"
    assert "not deterministic" in verdict(leaky).leak.sentence(leaky.outcomes)  # type: ignore[union-attr]


def test_same_outcome_twice_is_no_leak(rec: RunRecord) -> None:
    assert verdict(rec).leak is None
    broken = rec.model_copy(deep=True)
    broken.try_("baseline-restored").observed = "error"  # type: ignore[union-attr]
    assert verdict(broken).leak is None, "a try that broke off says nothing about leaks"


def test_nothing_ran_is_not_met(rec: RunRecord) -> None:
    empty = rec.model_copy(deep=True)
    empty.tries, empty.steps = [], []
    assert verdict(empty).ok is False
