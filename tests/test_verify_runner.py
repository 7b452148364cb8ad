"""The verify runner's control flow: whatever fails mid-fix, the fix is reverted and the record
written. A scripted stand-in replaces the SSH connection here because a failure at an exact step
cannot be provoked on demand in a real VM; the real path is covered by test_e2e_vm.py, and the
outputs below are the ones recorded from a real run (fixtures/verify-bookworm.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from labtest import make_facts, make_settings

from lab.core import errors, paths
from lab.core.errors import LabError
from lab.core.files import write_files
from lab.machine import lifecycle, state
from lab.machine.state import Phase
from lab.remote.ssh import CommandResult
from lab.report import junit, markdown
from lab.run import engine, live

RECORD = json.loads((Path(__file__).parent / "fixtures" / "verify-bookworm.json").read_text())
RECORDED = {s["id"]: s for s in RECORD["steps"]}


class ScriptedRemote:
    """Answers each step with the output recorded for it; can fail at one step on purpose."""

    def __init__(self, fail_at: str | None = None, revert_fails: str | None = None,
                 answers: dict[str, tuple[int, str]] | None = None) -> None:
        self.calls: list[str] = []
        self.fail_at = fail_at
        self.revert_fails = revert_fails
        self.answers = answers or {}  # step -> (exit code, stdout) instead of the recorded ones

    def __enter__(self) -> ScriptedRemote:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, command: str, *, as_root: bool = False, stdin: str | None = None, timeout: float | None = None,
            step: str = "") -> CommandResult:
        self.calls.append(step)
        if step == self.fail_at:
            raise errors.TestbedError(f"the SSH connection to lab test dropped during step {step!r}")
        restored = step.startswith("baseline-restored")
        key = "baseline" + step.removeprefix("baseline-restored") if restored else step
        recorded = RECORDED.get(key, {"exit_code": 0, "stdout": "", "stderr": ""})
        if step in self.answers:
            code, out = self.answers[step]
            recorded = {"exit_code": code, "stdout": out, "stderr": ""}
        code = recorded["exit_code"]
        if self.revert_fails and step == self.revert_fails:
            code = 1
        return CommandResult(command=command, user="root" if as_root else "labadmin", exit_code=code,
                             stdout=recorded["stdout"], stderr=recorded["stderr"], seconds=0.01, guest_seconds=0.005)


@pytest.fixture
def lab_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, target="bookworm")
    lab = paths.lab_dir(s.name)
    write_files(lab.root, {"facts.json": json.dumps(make_facts().__dict__)})
    state.advance(lab, Phase.PROVISIONED, "up")
    monkeypatch.setattr(lifecycle, "require_running", lambda settings: None)  # no libvirt here
    return s, lab


def the_record(lab: paths.LabDir) -> dict:
    """The record of the one run written into reports/<run>/ (latest or not)."""
    runs = [d for d in lab.reports.iterdir() if d.is_dir() and not d.is_symlink()]
    assert len(runs) == 1, runs
    return json.loads((runs[0] / "verify.json").read_text())


class ScriptedShell:
    """Stands in for lab.remote.shell.Shell: the same run() signature, answered by ScriptedRemote."""

    def __init__(self, remote: ScriptedRemote, as_root: bool) -> None:
        self.remote, self.as_root = remote, as_root

    def run(self, command: str, *, stdin: str | None = None, timeout: float = 300, step: str = "") -> CommandResult:
        return self.remote.run(command, as_root=self.as_root, stdin=stdin, step=step)

    def close(self) -> None:
        return None


class Terminal:
    """A stdin that says it is a terminal, so --step pauses (the keys come from read_key)."""

    def isatty(self) -> bool:
        return True


def use(monkeypatch: pytest.MonkeyPatch, remote: ScriptedRemote) -> None:
    monkeypatch.setattr(lifecycle, "connect", lambda settings: remote)
    monkeypatch.setattr(engine, "Shell",
                        lambda source, as_root, user, label, liveness=None: ScriptedShell(remote, as_root))


def test_recorded_run_replays_to_the_same_verdict(lab_here, monkeypatch: pytest.MonkeyPatch) -> None:
    s, lab = lab_here
    remote = ScriptedRemote()
    use(monkeypatch, remote)
    assert engine.run(s) is True
    record = json.loads((lab.reports / "latest" / "verify.json").read_text())
    assert record == the_record(lab)
    assert [f["observed"] for f in record["fixes"]] == ["failing", "running", "running", "failing"]
    assert record["restored"] is True
    assert state.read(lab).phase == Phase.VERIFIED


def test_a_drop_during_a_fix_still_reverts_it_and_writes_the_record(lab_here, monkeypatch) -> None:
    s, lab = lab_here
    remote = ScriptedRemote(fail_at="cgm:start")
    use(monkeypatch, remote)
    with pytest.raises(errors.TestbedError, match="dropped during step 'cgm:start'"):
        engine.run(s)
    after = remote.calls[remote.calls.index("cgm:start") + 1:]
    assert after[:2] == ["cgm:cleanup", "cgm:revert"], after
    record = the_record(lab)
    assert record["ok"] is False and "cgm:start" in record["error"]
    assert not (lab.reports / "latest").exists(), "a run that broke off is not the latest completed one"
    assert any(st["id"] == "cgm:revert" for st in record["steps"])


def test_a_failed_revert_fails_the_run(lab_here, monkeypatch) -> None:
    s, lab = lab_here
    use(monkeypatch, ScriptedRemote(revert_fails="pam-cgfs:revert"))
    assert engine.run(s) is False
    record = json.loads((lab.reports / "latest" / "verify.json").read_text())
    cgfs = next(f for f in record["fixes"] if f["id"] == "pam-cgfs")
    assert cgfs["reverted"] is False and cgfs["ok"] is False


def test_preflight_reverts_every_fix_first(lab_here, monkeypatch) -> None:
    s, _ = lab_here
    remote = ScriptedRemote()
    use(monkeypatch, remote)
    engine.run(s, only=("cgm",))
    assert remote.calls[:2] == ["open shell", "open shell"], "both shells are opened first, side by side"
    assert remote.calls[2:7] == ["preflight:teardown", *(f"preflight:{f}:revert" for f in
                                                          ("pam-systemd", "pam-cgfs", "cgm", "systemd-run"))]
    assert "pam-cgfs:start" not in remote.calls


def test_unknown_fix_is_refused_before_connecting(lab_here, monkeypatch) -> None:
    s, _ = lab_here
    remote = ScriptedRemote()
    use(monkeypatch, remote)
    with pytest.raises(LabError, match="no fix 'nope'"):
        engine.run(s, only=("nope",))
    assert remote.calls == []


def test_step_mode_q_stops_and_restores(lab_here, monkeypatch) -> None:
    s, lab = lab_here
    remote = ScriptedRemote()
    use(monkeypatch, remote)
    answers = iter([" ", "q"])
    monkeypatch.setattr(live.sys, "stdin", Terminal())
    monkeypatch.setattr(live, "read_key", lambda: next(answers))
    # stopping a demo is not a failure: every step that ran met its expectation
    assert engine.run(s, step_mode=True) is True
    assert "baseline:start" in remote.calls and "pam-systemd:start" not in remote.calls
    assert remote.calls[-1] == "baseline:cleanup", "the baseline's container is torn down on the way out"
    record = the_record(lab)
    assert record["stopped"] == "baseline" and record["ok"] is True
    assert record["not_run"] == ["pam-systemd", "pam-cgfs", "cgm", "systemd-run", "baseline-restored"]
    assert not (lab.reports / "latest").exists(), "a stopped run never becomes the latest complete one"
    suite = junit.render(record)
    assert suite.count("<skipped") == 5 and 'failures="0"' in suite
    assert "stopped by the presenter after baseline" in markdown.render(record)


def test_from_starts_at_a_fix_after_the_evidence(lab_here, monkeypatch) -> None:
    s, lab = lab_here
    remote = ScriptedRemote()
    use(monkeypatch, remote)
    assert engine.run(s, start_from="cgm") is True
    starts = [c for c in remote.calls if c.endswith(":start")]
    assert starts == ["cgm:start", "systemd-run:start", "baseline-restored:start"]
    assert "evidence-1-2" in remote.calls
    record = json.loads((lab.reports / "latest" / "verify.json").read_text())
    assert record["started_from"] == "cgm" and record["baseline"] is None
    with pytest.raises(errors.LabError, match="no fix 'cmg'"):
        engine.run(s, start_from="cmg")


def test_keep_failing_stops_at_the_first_unmet_expectation_with_the_fix_applied(lab_here, monkeypatch) -> None:
    """--keep-failing: the failing try is neither torn down nor reverted, the run says where it kept,
    and it does not become the latest complete run."""
    s, lab = lab_here
    remote = ScriptedRemote(answers={"pam-cgfs:start": (1, ""), "pam-cgfs:observe": (0, "state=STOPPED\n---\n")})
    use(monkeypatch, remote)
    assert engine.run(s, keep_failing=True) is False
    after = remote.calls[remote.calls.index("pam-cgfs:start") + 1:]
    assert after == ["pam-cgfs:observe"], "nothing may tear down or revert the kept fix"
    record = the_record(lab)
    assert record["kept_failing"] == "pam-cgfs"
    assert not (lab.reports / "latest").exists()
