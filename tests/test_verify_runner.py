"""The verify runner's control flow: whatever fails mid-try, the try is recorded as broken off
(never met), cleaned up where it can be, and the record written. A scripted stand-in replaces the
SSH connection and the VM here because a failure at an exact step cannot be provoked on demand in a
real VM; the outputs are the ones recorded from a real run (fixtures/verify-bookworm.json). The real
paths are covered by test_verify_sshd.py (a real sshd that drops the connection) and
test_e2e_vm.py (a real VM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from labtest import make_facts, make_settings

from lab.core import errors, paths
from lab.core.errors import LabError
from lab.machine.resolve import resolve
from lab.remote.ssh import CommandResult
from lab.render.plan import plan
from lab.report import junit, markdown
from lab.run import engine, live
from lab.run.record import RunRecord
from lab.run.verdict import verdict

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

    def connect(self) -> None:
        self.calls.append("connect")

    def close(self) -> None:
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


class ScriptedTestbed:
    """Stands in for lab.machine.testbed.VmTestbed: connects to the ScriptedRemote; a revert is
    recorded in the same call list (as "revert")."""

    def __init__(self, remote: ScriptedRemote, can_revert: bool = True, fingerprint_ok: bool = True) -> None:
        self.name = "test"
        self.remote = remote
        self.can_revert = can_revert
        self.fingerprint_ok = fingerprint_ok

    def connect(self) -> ScriptedRemote:
        return self.remote

    def alive(self) -> None:
        return None

    def revert(self) -> str:
        self.remote.calls.append("revert")
        return "loadvm"

    def ports(self) -> None:
        return None  # no port shells: each revert reconnects (connect, open shell x2)

    def prove_baseline(self, run) -> str:
        self.remote.calls.append("fingerprint")
        if not self.fingerprint_ok:
            raise errors.TestbedError("after the revert, lab test is not the baseline that lab.up provisioned")
        return "fp"


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


@pytest.fixture
def lab_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, target="bookworm")
    monkeypatch.setattr(engine, "Shell",
                        lambda source, as_root, user, label, liveness=None: ScriptedShell(source, as_root))
    return s, paths.lab_dir(s.name)


def verify(s, lab: paths.LabDir, remote: ScriptedRemote, isolation: str = "teardown", testbed=None,
           **options: object) -> RunRecord:
    """engine.run on the scripted testbed (teardown isolation unless said: the recorded run's)."""
    return engine.run(testbed or ScriptedTestbed(remote), plan(resolve(s), make_facts()), lab, "libvirt",
                      engine.Options(isolation=isolation, **options))  # type: ignore[arg-type]


def the_record(lab: paths.LabDir) -> dict:
    """The record of the one run written into reports/<run>/ (latest or not)."""
    runs = [d for d in lab.reports.iterdir() if d.is_dir() and not d.is_symlink()]
    assert len(runs) == 1, runs
    return json.loads((runs[0] / "verify.json").read_text())


def test_recorded_run_replays_to_the_same_verdict(lab_here) -> None:
    s, lab = lab_here
    rec = verify(s, lab, ScriptedRemote())
    assert verdict(rec).ok is True
    written = json.loads((lab.reports / "latest" / "verify.json").read_text())
    assert written == the_record(lab) == rec.model_dump(mode="json")
    assert [t["observed"] for t in written["tries"]] == ["failing", "failing", "running", "running", "failing",
                                                         "failing"]
    assert [t["kind"] for t in written["tries"]] == ["baseline", "fix", "fix", "fix", "fix", "restored"]
    assert written["schema_version"] == 2 and written["isolation"] == "teardown" and written["ok"] is True


def test_snapshot_isolation_starts_every_try_from_the_snapshot(lab_here) -> None:
    """No teardown and no revert script run: a revert before the evidence, before the baseline,
    before each fix and before the restored baseline (proven by its fingerprint), and once at the
    end, so the lab is left at its baseline."""
    s, lab = lab_here
    remote = ScriptedRemote()
    rec = verify(s, lab, remote, isolation="snapshot")
    assert verdict(rec).ok is True and rec.isolation == "snapshot"
    assert not [c for c in remote.calls if c.endswith((":teardown", ":cleanup", ":revert")) or "preflight" in c]
    story = [c for c in remote.calls if c == "revert" or c == "fingerprint" or c.endswith(":start")
             or c == "evidence-1-1"]
    assert story == ["revert", "evidence-1-1", "revert", "baseline:start", "revert", "pam-systemd:start", "revert",
                     "pam-cgfs:start", "revert", "cgm:start", "revert", "systemd-run:start", "revert", "fingerprint",
                     "baseline-restored:start", "revert"]
    assert [r.before for r in rec.reverts] == ["the evidence", "baseline", "pam-systemd", "pam-cgfs", "cgm",
                                               "systemd-run", "baseline-restored", "the end"]
    assert all(t.reverted is None for t in rec.tries), "nothing had to be cleaned up by a script"
    assert "started from the baseline snapshot" in markdown.render(rec)


def test_snapshot_isolation_without_a_snapshot_falls_back_and_says_so(lab_here) -> None:
    s, lab = lab_here
    remote = ScriptedRemote()
    rec = verify(s, lab, remote, isolation="snapshot", testbed=ScriptedTestbed(remote, can_revert=False))
    assert rec.isolation == "teardown" and "no baseline snapshot" in rec.isolation_note
    assert "revert" not in remote.calls and "baseline:teardown" in remote.calls


def test_a_snapshot_that_is_not_the_baseline_breaks_the_run_off(lab_here) -> None:
    s, lab = lab_here
    remote = ScriptedRemote()
    with pytest.raises(errors.TestbedError, match="not the baseline"):
        verify(s, lab, remote, isolation="snapshot", testbed=ScriptedTestbed(remote, fingerprint_ok=False))
    record = the_record(lab)
    assert record["ok"] is False and record["tries"][-1]["id"] == "baseline-restored"
    assert record["tries"][-1]["observed"] == "error" and "not the baseline" in record["tries"][-1]["error"]


def test_a_drop_during_a_fix_still_reverts_it_and_writes_the_record(lab_here) -> None:
    s, lab = lab_here
    remote = ScriptedRemote(fail_at="cgm:start")
    with pytest.raises(errors.TestbedError, match="dropped during step 'cgm:start'"):
        verify(s, lab, remote)
    after = remote.calls[remote.calls.index("cgm:start") + 1:]
    assert after[:2] == ["cgm:cleanup", "cgm:revert"], after
    record = the_record(lab)
    assert record["ok"] is False and "cgm:start" in record["error"]
    cgm = next(t for t in record["tries"] if t["id"] == "cgm")
    assert (cgm["observed"], cgm["ok"], cgm["kept"]) == ("error", False, False) and "dropped" in cgm["error"]
    assert record["not_run"] == ["systemd-run", "baseline-restored"], "cgm ran (and broke off): it is recorded"
    assert not (lab.reports / "latest").exists(), "a run that broke off is not the latest completed one"
    assert any(st["id"] == "cgm:revert" for st in record["steps"])


def test_a_drop_during_a_kept_try_is_an_error_not_a_kept_failure(lab_here) -> None:
    """--keep-failing decides on a judged try only: a try that raised goes on up as the error it is
    (exit 3), is recorded as broken off, and nothing says every step met its expectation."""
    s, lab = lab_here
    remote = ScriptedRemote(fail_at="pam-cgfs:observe")
    with pytest.raises(errors.TestbedError, match="dropped during step 'pam-cgfs:observe'"):
        verify(s, lab, remote, keep_failing=True)
    record = the_record(lab)
    assert record["kept_failing"] is None and record["ok"] is False
    cgfs = next(t for t in record["tries"] if t["id"] == "pam-cgfs")
    assert cgfs["observed"] == "error" and not cgfs["ok"] and not cgfs["kept"]
    assert "pam-cgfs" not in record["not_run"]
    text = markdown.render(record)
    assert "every step met its expectation" not in text and "✗ the run broke off" in text


def test_ctrl_c_during_a_kept_try_is_recorded_as_interrupted(lab_here, monkeypatch) -> None:
    s, lab = lab_here
    remote = ScriptedRemote()
    original = remote.run

    def interrupt(command: str, **kw: object) -> CommandResult:
        if kw.get("step") == "cgm:start":
            raise KeyboardInterrupt
        return original(command, **kw)  # type: ignore[arg-type]

    remote.run = interrupt  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        verify(s, lab, remote, keep_failing=True, isolation="snapshot")
    record = the_record(lab)
    assert record["error"] == "interrupted (Ctrl-C or SIGTERM)" and record["ok"] is False
    cgm = next(t for t in record["tries"] if t["id"] == "cgm")
    assert cgm["observed"] == "error" and cgm["error"] == "interrupted (Ctrl-C or SIGTERM)"


def test_a_failed_revert_fails_the_run(lab_here) -> None:
    s, lab = lab_here
    rec = verify(s, lab, ScriptedRemote(revert_fails="pam-cgfs:revert"))
    assert verdict(rec).ok is False
    cgfs = rec.try_("pam-cgfs")
    assert cgfs is not None and cgfs.reverted is False and cgfs.ok is False


def test_preflight_reverts_every_fix_first(lab_here) -> None:
    s, lab = lab_here
    remote = ScriptedRemote()
    verify(s, lab, remote, only=("cgm",))
    assert remote.calls[:3] == ["connect", "open shell", "open shell"], "both shells are opened first, side by side"
    assert remote.calls[3:8] == ["preflight:teardown", *(f"preflight:{f}:revert" for f in
                                                          ("pam-systemd", "pam-cgfs", "cgm", "systemd-run"))]
    assert "pam-cgfs:start" not in remote.calls


def test_unknown_fix_is_refused_before_connecting(lab_here) -> None:
    s, lab = lab_here
    remote = ScriptedRemote()
    with pytest.raises(LabError, match="no fix 'nope'"):
        verify(s, lab, remote, only=("nope",))
    assert remote.calls == []


def test_step_mode_q_stops_and_restores(lab_here, monkeypatch) -> None:
    s, lab = lab_here
    remote = ScriptedRemote()
    answers = iter([" ", "q"])
    monkeypatch.setattr(live.sys, "stdin", Terminal())
    monkeypatch.setattr(live, "read_key", lambda: next(answers))
    # stopping a demo is not a failure: every step that ran met its expectation
    rec = verify(s, lab, remote, step_mode=True)
    assert verdict(rec).ok is True
    assert "baseline:start" in remote.calls and "pam-systemd:start" not in remote.calls
    assert remote.calls[-1] == "baseline:cleanup", "the baseline's container is torn down on the way out"
    record = the_record(lab)
    assert record["stopped"] == "baseline" and record["ok"] is True
    assert record["not_run"] == ["pam-systemd", "pam-cgfs", "cgm", "systemd-run", "baseline-restored"]
    assert not (lab.reports / "latest").exists(), "a stopped run never becomes the latest complete one"
    suite = junit.render(record)
    assert suite.count("<skipped") == 5 and 'failures="0"' in suite
    assert "stopped by the presenter after baseline" in markdown.render(record)


def test_step_mode_q_under_snapshot_isolation_reverts_on_the_way_out(lab_here, monkeypatch) -> None:
    s, lab = lab_here
    remote = ScriptedRemote()
    answers = iter([" ", "q"])
    monkeypatch.setattr(live.sys, "stdin", Terminal())
    monkeypatch.setattr(live, "read_key", lambda: next(answers))
    rec = verify(s, lab, remote, step_mode=True, isolation="snapshot")
    assert rec.stopped == "baseline" and remote.calls[-1] == "revert"


def test_from_starts_at_a_fix_after_the_evidence(lab_here) -> None:
    s, lab = lab_here
    remote = ScriptedRemote()
    rec = verify(s, lab, remote, start_from="cgm")
    assert verdict(rec).ok is True
    starts = [c for c in remote.calls if c.endswith(":start")]
    assert starts == ["cgm:start", "systemd-run:start", "baseline-restored:start"]
    assert "evidence-1-2" in remote.calls
    record = json.loads((lab.reports / "latest" / "verify.json").read_text())
    assert record["started_from"] == "cgm" and [t["id"] for t in record["tries"]] == \
        ["cgm", "systemd-run", "baseline-restored"]
    with pytest.raises(errors.LabError, match="no fix 'cmg'"):
        verify(s, lab, remote, start_from="cmg")


def test_keep_failing_stops_at_the_first_unmet_expectation_with_the_fix_applied(lab_here) -> None:
    """--keep-failing: the failing try is neither torn down nor reverted, it is recorded with what
    was observed, the run says where it kept, and it does not become the latest complete run."""
    s, lab = lab_here
    remote = ScriptedRemote(answers={"pam-cgfs:start": (1, ""), "pam-cgfs:observe": (0, "state=STOPPED\n---\n")})
    rec = verify(s, lab, remote, keep_failing=True)
    assert verdict(rec).state == "kept" and verdict(rec).ok is False
    after = remote.calls[remote.calls.index("pam-cgfs:start") + 1:]
    assert after == ["pam-cgfs:observe"], "nothing may tear down or revert the kept fix"
    record = the_record(lab)
    assert record["kept_failing"] == "pam-cgfs"
    cgfs = next(t for t in record["tries"] if t["id"] == "pam-cgfs")
    assert (cgfs["kept"], cgfs["observed"], cgfs["ok"], cgfs["fields"]) == (True, "failing", False,
                                                                            {"state": "STOPPED"})
    assert record["not_run"] == ["cgm", "systemd-run", "baseline-restored"]
    assert not (lab.reports / "latest").exists()


def test_a_leak_under_teardown_isolation_is_named(lab_here) -> None:
    """The restored baseline answers differently from the first: the verdict says the same command
    gave two outcomes and names the tries in between."""
    s, lab = lab_here
    remote = ScriptedRemote(answers={"baseline-restored:start": (0, ""),
                                     "baseline-restored:observe": (0, RECORDED["cgm:observe"]["stdout"])})
    rec = verify(s, lab, remote)
    v = verdict(rec)
    assert v.ok is False and v.leak is not None
    assert (v.leak.first, v.leak.last) == ("failing", "running")
    assert v.leak.between == ("pam-systemd", "pam-cgfs", "cgm", "systemd-run")
