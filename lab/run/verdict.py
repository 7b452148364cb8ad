"""The one verdict: what a run's record means, for every report and for the live presenter.

`verdict(record)` says whether the run met its expectations, in which state it ended (met, not
met, stopped by the presenter, kept at a failure, broken off by an error), what did not run, and
whether the baseline gave one answer first and another at the end (a leak between tries under
teardown isolation; a non-deterministic outcome under snapshot isolation). `try_words` is the
presenter's sentence for one try, in the scenario's own outcome words. Pure functions of the
record: nothing here touches a VM.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lab.run.judge import UNCLASSIFIED
from lab.run.record import RunRecord, TryRecord

ERROR = "error"  # the try broke off before it could be judged

State = Literal["met", "not-met", "stopped", "kept", "error"]


@dataclass(frozen=True)
class Leak:
    """The baseline's command gave one outcome first and another at the end of the same run."""

    first: str  # the outcome of the baseline
    last: str  # the outcome of the restored baseline
    between: tuple[str, ...]  # the tries that ran in between
    isolation: str  # "teardown" or "snapshot"

    def sentence(self, outcomes: Mapping[str, Mapping[str, Any]]) -> str:
        """Plain words for a reader: what differed, what ran in between, what to do."""
        first, last = outcome_words(outcomes, self.first), outcome_words(outcomes, self.last)
        between = ", ".join(self.between) or "nothing"
        if self.isolation == "teardown":
            return (f"the same command gave {self.first!r} ({first}) first and {self.last!r} ({last}) at the end: "
                    f"state from an earlier step changed the outcome (in between: {between}). The teardown does not "
                    "return the guest to the baseline; run with isolation = \"snapshot\" (the default) so that "
                    "every try starts from the baseline snapshot")
        return (f"the same command, started from the same baseline snapshot, gave {self.first!r} ({first}) first "
                f"and {self.last!r} ({last}) at the end: the outcome is not deterministic (timing, or something "
                "outside the VM); run lab.verify again and compare")


@dataclass(frozen=True)
class Verdict:
    """What one run means. ok: every step and try that ran met its expectation, the run was not
    broken off or kept at a failure, and something ran. headline: one line with its mark (✓ ✗ ■).
    notes: further sentences a report shows under the headline (in order)."""

    state: State
    ok: bool
    headline: str
    not_run: tuple[str, ...]
    failed_steps: tuple[str, ...]
    leak: Leak | None
    notes: tuple[str, ...]


def outcome_words(outcomes: Mapping[str, Mapping[str, Any]], name: str) -> str:
    """The presenter's words for an outcome name ("fails", "runs without its memory limit")."""
    if name == UNCLASSIFIED:
        return "could not be classified (no observe rule matched)"
    if name == ERROR:
        return "could not be carried out"
    return str((outcomes.get(name) or {}).get("words", name))


def is_failure(outcomes: Mapping[str, Mapping[str, Any]], name: str) -> bool:
    """Whether the scenario calls this outcome a failure."""
    return bool((outcomes.get(name) or {}).get("failure"))


def try_words(rec: RunRecord, t: TryRecord) -> str:
    """A sentence for one try: "fails, as the bug predicts (reproduced)" is good news for a
    baseline; a fix that still fails as measured is said so; a try that broke off says why."""
    outcomes = rec.outcomes
    seen = outcome_words(outcomes, t.observed)
    if t.observed == ERROR:
        why = f": {t.error}" if t.error else ""
        return f"could not be carried out{why}"
    if t.ok:
        if t.kind in ("baseline", "restored"):
            return f"{seen}, as the bug predicts (reproduced)"
        if t.kind == "variant":
            return f"{seen}: this way of starting shows the bug too"
        if t.kind == "control":
            return f"{seen}, as the control must"
        if is_failure(outcomes, t.observed):
            return f"still {seen}, as measured for this target"
        return f"{seen}, as expected"
    kept = " (kept as it failed)" if t.kept else ""
    if t.observed != t.expected:
        if t.kind == "control":
            return f"{seen}, but the control must give: {outcome_words(outcomes, t.expected)}{kept}"
        return f"{seen}, but expected: {outcome_words(outcomes, t.expected)}{kept}"
    if t.wait:
        return f"{seen}, as expected, but a wait ran out ({t.wait}){kept}"
    if not t.exit_ok:
        return f"{seen}, as expected, but the start command exited {t.exit_code}, not as the try says{kept}"
    if t.reverted is False:
        return f"{seen}, as expected, but the try could not be cleaned up or reverted"
    return f"{seen}, but without the expected failure's signature{kept}"


def find_leak(rec: RunRecord) -> Leak | None:
    """The baseline and the restored baseline of one run, both judged, with different outcomes."""
    first, last = rec.try_("baseline"), rec.try_("baseline-restored")
    if first is None or last is None or ERROR in (first.observed, last.observed):
        return None
    if first.observed == last.observed:
        return None
    between = tuple(t.id for t in rec.tries if t.kind not in ("baseline", "restored"))
    return Leak(first.observed, last.observed, between, rec.isolation)


def verdict(rec: RunRecord) -> Verdict:
    """The verdict of a run's record (see Verdict)."""
    ran_ids = {t.id for t in rec.tries}
    not_run = tuple(t for t in rec.planned if t not in ran_ids)
    failed = tuple(s.id for s in rec.steps if not s.ok)
    leak = find_leak(rec)
    every_step = bool(rec.steps) and not failed
    every_try = all(t.ok for t in rec.tries)
    ok = (every_step and every_try and (bool(rec.tries) or bool(rec.stopped)) and rec.error is None
          and not rec.kept_failing)
    notes: list[str] = []
    if rec.error is not None:
        state: State = "error"
        headline = f"✗ the run broke off: {rec.error}"
    elif rec.kept_failing:
        state = "kept"
        headline = (f"■ kept {rec.kept_failing} as it failed: " + (
            "nothing was torn down or reverted; the next lab.verify starts from the baseline snapshot"
            if rec.isolation == "snapshot" else
            "its fix is still applied and nothing was torn down; the next lab.verify reverts every fix first"))
    elif rec.stopped:
        state = "stopped"
        headline = (f"■ stopped by the presenter after {rec.stopped}; baseline restored — "
                    + ("every step that ran met its expectation" if ok else "some step did not meet its expectation"))
    elif ok:
        state = "met"
        headline = "✓ every step met its expectation"
    else:
        state = "not-met"
        headline = "✗ some step did not meet its expectation"
    if leak is not None:
        notes.append(leak.sentence(rec.outcomes))
    restored = rec.try_("baseline-restored")
    if restored is not None and not restored.ok and leak is None and restored.observed != ERROR:
        notes.append("The baseline did not come back at the end of the run.")
    if not_run:
        notes.append(f"Not run: {', '.join(not_run)}.")
    return Verdict(state=state, ok=ok, headline=headline, not_run=not_run, failed_steps=failed, leak=leak,
                   notes=tuple(notes))


def finish(rec: RunRecord) -> RunRecord:
    """Write the verdict's ok and not_run into the record (for readers of verify.json); returns it."""
    v = verdict(rec)
    rec.ok, rec.not_run = v.ok, list(v.not_run)
    return rec
