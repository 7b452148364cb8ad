"""lab.verify, generic: evidence, baseline, each fix, the baseline again, the typed record.

The engine runs a rendered Plan on a Testbed and knows nothing of the bug. Over one SSH
connection, commands run in persistent shells (the admin's login, root's through sudo) or, for
via = "ssh", in a fresh login as the user.

Isolation (README, "What verify does"):
- snapshot (the default): the evidence and every try start from the lab's baseline snapshot
  (QEMU loadvm, then new SSH shells); nothing a try leaves behind (a user manager that lingers
  ~10 s, scopes, cron jobs, files in /run/user) can reach the next one, and neither the teardown
  nor the fix's revert script has to be right. Before the restored baseline the guest's
  fingerprint proves the snapshot is the baseline lab.up took; at the end the lab is reverted
  once more, so it is left as lab.up left it.
- teardown (today's faster mode, and the only one without a snapshot): the scenario's teardown
  runs before and after every try and each fix's revert script after it; the restored baseline
  then proves those reverts worked, and a baseline that answers differently at the end is
  reported as a leak between tries (lab.run.verdict).

A try that raised is recorded as broken off ("error"), never as met, and the error goes on up;
--keep-failing keeps a try that was judged and did not meet its expectation (never one that
raised). The record is written on every path, and resources sit on an ExitStack released in
reverse order.
"""

from __future__ import annotations

import contextvars
import re
import shlex
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lab.core import console, paths
from lab.core.errors import LabError, TestbedError
from lab.remote.port import Ports, PortShell
from lab.remote.shell import Shell
from lab.remote.ssh import CommandResult, Endpoint, Remote
from lab.render.plan import Plan, PlannedCommand, PlannedScript, PlannedTry, PlannedWait, script_file
from lab.run import judge, record, vias
from lab.run.live import Live, Stop
from lab.run.record import EvidenceRecord, Revert, RunRecord, ScenarioInfo, StepRecord, TryRecord
from lab.run.verdict import ERROR, finish


class Testbed(Protocol):
    """What the engine needs of a lab's machine (lab.machine.testbed.VmTestbed is the real one).

    name: the lab's name; can_revert: a baseline snapshot exists to return to."""

    name: str
    can_revert: bool

    def connect(self) -> Remote:
        """A Remote to the admin, not yet connected."""

    def alive(self) -> None:
        """Return when the machine still runs; TestbedError (exit 3) when it is gone."""

    def revert(self) -> str:
        """Back to the baseline snapshot (disk and memory); returns how (e.g. "loadvm"). Every SSH connection
        to the guest is dead afterwards. TestbedError when it cannot revert."""

    def ports(self) -> Ports | None:
        """The port shells' host ends, connected, or None for a lab without them; TestbedError when the lab
        has them but they cannot be reached."""

    def prove_baseline(self, run: Callable[[str], CommandResult]) -> str:
        """Fingerprint the guest with run (a command as the admin) and return the fingerprint; TestbedError
        when it is not the baseline lab.up recorded."""


@dataclass(frozen=True)
class Options:
    """How one verify run goes. Timeouts in seconds. isolation: "snapshot" or "teardown" (the
    scenario's, or the --isolation flag's)."""

    only: tuple[str, ...] = ()
    step_mode: bool = False
    start_from: str = ""
    keep_failing: bool = False
    isolation: str = "snapshot"
    command_timeout: float = 300
    ssh_timeout: float = 300
    keep_reports: int = 20


class KeptFailing(Exception):
    """--keep-failing: a try was judged, did not meet its expectation, and is left as it failed."""

    def __init__(self, try_id: str) -> None:
        super().__init__(try_id)
        self.try_id = try_id


def step_record(id: str, title: str, result: CommandResult, expected: str, started: float, why: str = "",
                shown: str | None = None, user: str | None = None) -> StepRecord:
    """A StepRecord from a command's result; ok when its exit status is what `expected` says
    ("succeed": 0, "fail": non-zero, "any", "exit 0, 3": one of those; judge.exit_ok)."""
    ok = judge.exit_ok(expected, result.exit_code)
    return StepRecord(id=id, title=title, command=shown or result.command, user=user or result.user,
                      expected=expected,  # type: ignore[arg-type]
                      exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr,
                      seconds=round(result.seconds, 4),
                      guest_seconds=None if result.guest_seconds is None else round(result.guest_seconds, 4),
                      started=round(started, 4), ok=ok, why=why)


@dataclass
class Runner:
    """Carries out plan steps on a testbed and records each step and try into the run record."""

    testbed: Testbed
    plan: Plan
    live: Live
    rec: RunRecord
    options: Options
    began: float = field(default_factory=time.monotonic)
    remote: Remote | None = None
    ports: Ports | None = None  # the port shells' host ends (snapshot isolation on a lab that has them)
    shells: dict[bool, Shell | PortShell] = field(default_factory=dict)
    broken: TestbedError | None = None  # once the VM is gone, no further command is tried
    fresh: bool = False  # the guest is at its baseline snapshot and nothing ran since

    @property
    def snapshot(self) -> bool:
        """The run keeps tries apart by snapshot isolation (each from the baseline snapshot), not teardown."""
        return self.rec.isolation == "snapshot"

    # --- the connection ----------------------------------------------------------------------

    def open(self) -> None:
        """Connect as the admin over SSH and open the admin's and root's shells at once: each is a
        login session in the guest (PAM, logind: ~1-4 s on TCG when the admin's user manager must
        start, measured), so opening them side by side costs the longer of the two, not their sum.
        With port shells (snapshot isolation on a lab that has them) nothing is opened: they are there."""
        if self.ports is not None:
            return
        self.remote = self.testbed.connect()
        self.remote.connect()
        failures: list[BaseException] = []

        def open_one(as_root: bool) -> None:
            try:
                self.shell(as_root).run(":", step="open shell", timeout=self.options.ssh_timeout)
            except BaseException as exc:  # re-raised below, in the caller's thread
                failures.append(exc)

        # each thread runs in a copy of this context: the lab's libvirt host for liveness checks
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(open_one, as_root), daemon=True)
                   for as_root in (False, True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise failures[0]

    def close(self) -> None:
        """Close the SSH shells and connection (quickly, also when the guest no longer answers)."""
        for shell in self.shells.values():
            shell.close()
        self.shells.clear()
        if self.remote is not None:
            self.remote.close()
            self.remote = None

    def close_ports(self) -> None:
        """Close the port shells' host ends (at the end of the run)."""
        if self.ports is not None:
            self.ports.close()
            self.ports = None
            self.shells.clear()

    def shell(self, as_root: bool) -> Shell | PortShell:
        """One persistent bash per identity: the admin's, and root's through sudo (on the ports when
        the lab has port shells, else over SSH)."""
        if as_root not in self.shells:
            label = f"lab {self.testbed.name}"
            if self.ports is not None:
                self.shells[as_root] = PortShell(self.ports, as_root=as_root, user=self.plan.admin, label=label,
                                                 liveness=self.testbed.alive)
            else:
                if self.remote is None:
                    self.open()
                assert self.remote is not None
                self.shells[as_root] = Shell(self.remote, as_root=as_root, user=self.plan.admin, label=label,
                                             liveness=self.testbed.alive)
        return self.shells[as_root]

    def revert(self, before: str) -> Revert:
        """Back to the baseline snapshot and ready for the next command (snapshot isolation);
        recorded. With port shells the shells are simply there again; else SSH reconnects."""
        if self.broken is not None:
            raise self.broken
        started = time.monotonic()
        if self.ports is None:
            self.close()
        try:
            how = self.testbed.revert()
        except TestbedError as exc:
            self.broken = exc
            raise
        reverted = time.monotonic()
        if self.ports is None:
            self.open()
        else:
            self.shell(False).run(":", step="after the revert", timeout=self.options.ssh_timeout)
        done = Revert(before=before, how=how, seconds=round(reverted - started, 3),
                      until_shells=round(time.monotonic() - started, 3))
        self.rec.reverts.append(done)
        self.fresh = True
        self.live.reverted_snapshot(done)
        return done

    def fresh_for(self, try_id: str) -> None:
        """Snapshot isolation: make sure the guest is at its baseline before try_id."""
        if self.snapshot and not self.fresh:
            self.revert(try_id)
        self.fresh = False

    def prove_baseline(self) -> None:
        """The guest's fingerprint is the one lab.up took with the snapshot (TestbedError if not)."""
        shell = self.shell(False)
        self.testbed.prove_baseline(lambda command: shell.run(command, step="baseline fingerprint",
                                                              timeout=self.options.command_timeout))

    # --- steps ------------------------------------------------------------------------------

    def _guarded(self, fn: Callable[[], CommandResult]) -> CommandResult:
        if self.broken is not None:
            raise self.broken
        try:
            return fn()
        except TestbedError:
            try:
                self.testbed.alive()  # the connection dropped but the VM runs: cleanup may still reconnect
            except TestbedError as gone:
                self.broken = gone  # the VM itself is gone: no cleanup can reach it
            raise

    def _login_as(self, user: str, command: str, step: str, timeout: float | None = None) -> CommandResult:
        """A fresh SSH login as user (its own PAM and logind session), one command, then logout."""
        admin = self.remote or self.testbed.connect()  # for its endpoint and known_hosts (not connected)
        ep = admin.endpoint
        login = Endpoint(host=ep.host, port=ep.port, user=user, key_file=ep.key_file, jump=ep.jump)
        with Remote(login, admin.known_hosts, connect_timeout=min(60, admin.connect_timeout),
                    command_timeout=timeout or self.options.command_timeout,
                    label=f"lab {self.testbed.name} as {user}") as r:
            return r.run(command, step=step)

    def _step(self, id: str, title: str, shown: str, user: str, run: Callable[[], CommandResult],
              expected: str = "succeed", why: str = "", quiet: bool = False) -> StepRecord:
        """Show the command as typed, run it, record it, show what it printed (unless quiet)."""
        started = time.monotonic() - self.began
        if not quiet:
            self.live.before(shown, user)
        result = self._guarded(run)
        step = step_record(id, title, result, expected, started, why=why, shown=shown, user=user)
        self.rec.steps.append(step)
        if not quiet:
            self.live.after(step)
        return step

    def command(self, id: str, cmd: PlannedCommand, expected: str = "succeed", quiet: bool = False,
                title: str = "", timeout: float | None = None) -> StepRecord:
        """A command as the user types it, through its channel (admin, root, a fresh SSH login, or
        the vias lab.run.vias carries out: cron, tty); timeout: seconds (default command_timeout)."""
        seconds = timeout or self.options.command_timeout
        if cmd.channel == "ssh":
            return self._step(id, title or cmd.title, cmd.shown, cmd.user,
                              lambda: self._login_as(cmd.user, cmd.run, id, seconds), expected, cmd.why, quiet)
        # --- via hook (lab.run.vias): cron and tty ---
        if cmd.channel == "cron":
            return self._step(id, title or cmd.title, cmd.shown, cmd.user,
                              lambda: vias.run_cron(self.shell(True), cmd.user, cmd.run, id, seconds),
                              expected, cmd.why, quiet)
        if cmd.channel == "tty":
            return self._step(id, title or cmd.title, cmd.shown, cmd.user, lambda: self._tty(cmd, id, seconds),
                              expected, cmd.why, quiet)
        shell = self.shell(cmd.channel == "root")
        return self._step(id, title or cmd.title, cmd.shown, self.plan.admin,
                          lambda: shell.run(cmd.run, step=id, timeout=seconds),
                          expected, cmd.why, quiet)

    def _tty(self, cmd: PlannedCommand, step: str, seconds: float) -> CommandResult:
        """A terminal login (lab.run.vias.run_tty) on a channel of the admin's SSH connection (its
        own connection when the shells are on ports)."""
        admin = self.remote or self.testbed.connect()
        try:
            return vias.run_tty(admin.transport(), cmd.user, cmd.run, step, seconds,
                                label=f"lab {self.testbed.name}", shown=cmd.shown)
        finally:
            if admin is not self.remote:
                admin.close()

    def wait(self, id: str, w: PlannedWait) -> tuple[StepRecord, bool]:
        """Poll w.command as root until its output matches w.until or w.seconds pass: (the last
        poll's step, whether it matched). Only the last poll is recorded."""
        shell = self.shell(True)
        deadline = time.monotonic() + w.seconds
        while True:
            started = time.monotonic() - self.began
            result = self._guarded(lambda: shell.run(w.command, step=id, timeout=max(5.0, w.seconds)))
            matched = bool(re.search(w.until, result.stdout + result.stderr, re.MULTILINE))
            if matched or time.monotonic() + w.every > deadline:
                break
            time.sleep(w.every)
        title = w.title or f"wait until {w.until!r} (at most {w.seconds:g} s)"
        step = step_record(id, title, result, "any", started, shown=f"sudo sh -c {shlex.quote(w.command)}",
                           user=self.plan.admin)
        step.ok = matched
        step.note = "" if matched else f"not matched within {w.seconds:g} s"
        self.rec.steps.append(step)
        return step, matched

    def script(self, id: str, title: str, rel: str, script: PlannedScript, quiet: bool = True) -> StepRecord:
        """A root script, fed to root's shell on stdin; shown as the `sudo bash FILE` it is."""
        shell = self.shell(True)
        return self._step(id, title, f"sudo bash {rel}", self.plan.admin,
                          lambda: shell.run(script.text, stdin=script.text, step=id,
                                            timeout=self.options.command_timeout), quiet=quiet)


Publish = Callable[[Path], Iterable[Path]]


def new_record(plan: Plan, name: str, provider: str, isolation: str, note: str = "") -> RunRecord:
    """A fresh record for a run of plan on the lab `name`: everything the reports need besides
    what the run will add."""
    return RunRecord(
        run=time.strftime("%Y%m%d-%H%M%S", time.gmtime()), name=name, target=plan.target, provider=provider,
        title=plan.title, target_title=plan.target_title, cgroup_layout=plan.cgroup_layout,
        scenario=ScenarioInfo(id=plan.scenario, title=plan.title, explanation=plan.explanation,
                              sources=list(plan.sources), note=plan.note),
        admin_user=plan.admin, users=list(plan.users), outcomes=plan.outcomes,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        isolation=isolation, isolation_note=note)  # type: ignore[arg-type]


def choose_isolation(wanted: str, testbed: Testbed) -> tuple[str, str]:
    """(isolation used, why it differs from wanted or ""): snapshot needs a baseline snapshot."""
    if wanted == "snapshot" and not testbed.can_revert:
        return "teardown", ("this lab has no baseline snapshot (VirtualBox, or a lab from before snapshots): "
                            "every try was isolated by the scenario's teardown instead")
    return wanted, ""


def run(testbed: Testbed, plan: Plan, lab: paths.LabDir, provider: str, options: Options,
        publish: Publish | None = None) -> RunRecord:
    """Verify the lab: the record of the run, written into its own directory either way
    (reports/<run>/verify.json; `latest` moves only for a run that completed), then
    publish(run_dir) renders the other reports from it. lab.run.verdict.verdict(record) says what
    it means. start_from: begin with this fix after the evidence (a presenter resuming a demo).

    Raises TestbedError when the lab cannot be reached or put back into its baseline, LabError for
    bad input (an unknown fix, before anything runs); the record of such a run is still written,
    marked with the error. KeyboardInterrupt passes through after the record is written."""
    tries = [plan.fix(f) for f in options.only] if options.only else list(plan.fixes)
    if options.start_from:
        ids = [t.id for t in tries]
        tries = tries[ids.index(options.start_from):] if options.start_from in ids else [plan.fix(options.start_from)]
    isolation, note = choose_isolation(options.isolation, testbed)
    live = Live(plan, step_mode=options.step_mode)
    rec = new_record(plan, testbed.name, provider, isolation, note)
    rec.planned = [*([] if options.start_from else ["baseline"]), *(t.id for t in tries),
                   *(["baseline-restored"] if tries else [])]
    rec.started_from = options.start_from or None
    wall_start = time.monotonic()
    runner = Runner(testbed, plan, live, rec, options)
    live.isolation(isolation, note)
    try:
        with ExitStack() as stack:
            stack.callback(runner.close_ports)
            stack.callback(runner.close)
            try:
                _preflight(runner)
                _verify(runner, tries, with_baseline=not options.start_from)
                _leave_at_baseline(runner)
            except Stop as stop:
                rec.stopped = stop.after or "the start"
                _leave_at_baseline(runner)
            except KeptFailing as kept:
                rec.kept_failing = kept.try_id
                live.kept(kept.try_id, testbed.name, runner.snapshot)
    except LabError as exc:
        rec.error = rec.error or str(exc)
        raise
    except KeyboardInterrupt:
        rec.error = rec.error or "interrupted (Ctrl-C or SIGTERM)"
        raise
    finally:
        rec.seconds = round(time.monotonic() - wall_start, 3)
        finish(rec)
        where = record.write(lab.reports, rec)
        record.prune(lab.reports, options.keep_reports)
        for path in publish(where) if publish else ():
            live.written(path)
    live.summary(rec)
    return rec


def _leave_at_baseline(r: Runner) -> None:
    """Snapshot isolation: once more to the baseline snapshot, so the lab is left as lab.up left it
    (no new connection: nothing else runs in this run)."""
    if r.snapshot and not r.fresh and r.broken is None:
        r.close()
        started = time.monotonic()
        how = r.testbed.revert()
        r.rec.reverts.append(Revert(before="the end", how=how, seconds=round(time.monotonic() - started, 3),
                                    until_shells=0.0))
        r.fresh = True


def _preflight(r: Runner) -> None:
    """Start from the baseline even if an earlier run was interrupted or kept a failure: snapshot
    isolation returns to the snapshot; teardown isolation runs the teardown, then reverts every
    fix of the target, quietly."""
    if r.snapshot:
        r.ports = r.testbed.ports()  # connected before the revert: the shells in the snapshot wait on them
        r.revert("the evidence" if r.plan.evidence else "the first try")
        return
    r.open()
    if r.plan.teardown:
        step = r.script("preflight:teardown", "tear down what an earlier run left", r.plan.teardown.rel,
                        r.plan.teardown)
        if not step.ok:
            raise TestbedError(f"could not return to the baseline before verifying: the teardown failed: "
                               f"{step.stderr.strip() or step.stdout.strip()}",
                               hint="inspect with: invoke lab.ssh; or start over: invoke lab.reset")
    for fix in r.plan.fixes:
        if fix.revert:
            step = r.script(f"preflight:{fix.id}:revert", f"make sure {fix.id} is not applied",
                            script_file(fix.id, "revert"), fix.revert)
            if not step.ok:
                raise TestbedError(f"could not return to the baseline before verifying: reverting {fix.id} failed: "
                                   f"{step.stderr.strip() or step.stdout.strip()}",
                                   hint="inspect with: invoke lab.ssh; or start over: invoke lab.reset")


def _verify(r: Runner, tries: list[PlannedTry], with_baseline: bool = True) -> None:
    p = r.plan
    versions = r.command("versions", PlannedCommand(p.versions, p.versions, "admin", p.admin, "login"),
                         quiet=True, title="versions in the guest")
    r.rec.versions = versions.stdout.strip()
    r.live.versions(versions.stdout)
    for i, ev in enumerate(p.evidence):
        steps = [r.command(f"evidence-{i + 1}-{j + 1}", c, quiet=True) for j, c in enumerate(ev.commands)]
        holds = judge.evidence_holds(ev.expect, [s.stdout for s in steps])
        steps[-1].ok = steps[-1].ok and holds
        r.rec.evidence.append(EvidenceRecord(
            title=ev.title, why=ev.why, expect=ev.expect, holds=holds,  # type: ignore[arg-type]
            steps=[s.id for s in steps],
            columns=[{"command": s.command, "user": s.user, "title": s.title, "output": s.stdout}  # type: ignore[misc]
                     for s in steps]))
        r.live.evidence(ev, steps, holds)
    if p.evidence:
        r.fresh = False
    done: list[str] = []
    for t in [p.baseline, *tries] if with_baseline else tries:
        r.live.pause(t.id, done[-1] if done else "the evidence")
        _try(r, t, kind=t.kind)
        done.append(t.id)
    if tries:
        _try(r, p.baseline, kind="restored", label="baseline-restored", announce="restored baseline")


def _try(r: Runner, t: PlannedTry, kind: str, label: str | None = None, announce: str = "") -> TryRecord:
    """One try, recorded in r.rec.tries from its start: judged, kept (KeptFailing), or broken off
    (the error is recorded on the try and raised on)."""
    p = r.plan
    lid = label or t.id
    r.live.try_header(lid, t, announce)
    rec = TryRecord(id=lid, kind=kind, title=t.title, why=t.why, expected=t.expected)  # type: ignore[arg-type]
    r.rec.tries.append(rec)
    try:
        if r.snapshot:
            r.fresh_for(lid)
            if kind == "restored":
                r.prove_baseline()
        elif p.teardown:
            step = r.script(f"{lid}:teardown", "tear down before the try", p.teardown.rel, p.teardown)
            if not step.ok:
                raise TestbedError(f"the teardown before {lid} failed: {step.stdout.strip()} {step.stderr.strip()}")
        _carry_out(r, t, lid, rec)
    except BaseException as exc:
        rec.ok = False
        rec.error = rec.error or _why(exc)
        if not r.snapshot and r.broken is None:
            _clean_up_quietly(r, t, lid, rec, applied=bool(t.apply))
        raise
    if not rec.ok and r.options.keep_failing:
        rec.kept = True
        raise KeptFailing(lid)
    if not r.snapshot:
        try:
            _clean_up(r, t, lid, rec, applied=bool(t.apply))
        except BaseException as exc:
            rec.ok, rec.reverted = False, False
            rec.error = f"cleaning up after the try failed: {_why(exc)}"
            raise
    return rec


def _why(exc: BaseException) -> str:
    """A try's error in words."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C or SIGTERM)"
    if isinstance(exc, Stop):
        return f"stopped by the presenter: {exc.after}"
    if isinstance(exc, LabError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def _carry_out(r: Runner, t: PlannedTry, lid: str, rec: TryRecord) -> None:
    """Apply (a fix), start, observe, classify, judge: fills rec; raises what the machinery raised."""
    p = r.plan
    if t.apply:
        step = r.script(f"{lid}:apply", f"apply fix {t.id}", script_file(t.id, "apply"), t.apply, quiet=False)
        if not step.ok:
            rec.error = f"the fix's apply script failed (exit {step.exit_code})"
            r.live.outcome(r.rec, rec)
            return
    start = r.command(f"{lid}:start", t.start, expected=t.exit_expected,
                      title=t.start.title or "the command as the admin types it", timeout=t.timeout)
    waited = [r.wait(f"{lid}:wait-{n + 1}", w) for n, w in enumerate(t.waits)]
    obs = judge.Observation()
    if p.observe:
        seen = r.script(f"{lid}:observe", "observe the outcome", p.observe.rel, p.observe)
        obs = judge.parse_observation(seen.stdout)
    observed = judge.classify(p.rules, judge.observed_fields(obs, start))
    matched = judge.matched_signatures(t.signatures, [start.stdout, start.stderr, *obs.notes,
                                                      *(f"{k}={v}" for k, v in obs.fields.items())])
    rec.observed, rec.signature_matched, rec.fields, rec.notes = observed, matched, obs.fields, obs.notes[-10:]
    rec.ok = judge.judge(t.expected, observed, t.signatures, matched)
    # exit status apart from the outcome, and waits that ran out (lab.config.scenario.Try)
    rec.exit_code, rec.exit_ok = start.exit_code, judge.exit_ok(t.exit_expected, start.exit_code)
    rec.wait = "; ".join(f"{s.title}: ran out; last seen: {(s.stdout + s.stderr).strip()[-200:]!r}"
                         for s, ok in waited if not ok)
    rec.ok = rec.ok and rec.exit_ok and not rec.wait
    start.ok = start.ok and rec.ok
    r.live.outcome(r.rec, rec)


def _clean_up(r: Runner, t: PlannedTry, lid: str, rec: TryRecord, applied: bool) -> None:
    """Teardown isolation, after a judged try: the teardown, then the fix's revert script."""
    p = r.plan
    reverted = True
    if p.teardown:
        reverted = r.script(f"{lid}:cleanup", "tear down after the try", p.teardown.rel, p.teardown).ok
    if applied and t.revert:
        rv = r.script(f"{lid}:revert", f"revert fix {t.id}", script_file(t.id, "revert"), t.revert)
        reverted = reverted and rv.ok
        r.live.reverted(t.id, rv)
    rec.reverted = reverted
    if not reverted:
        rec.ok = False


def _clean_up_quietly(r: Runner, t: PlannedTry, lid: str, rec: TryRecord, applied: bool) -> None:
    """Teardown isolation, after a try that raised: clean up what can be, without replacing the
    error already under way (a second failure is only said)."""
    try:
        _clean_up(r, t, lid, rec, applied)
    except (LabError, OSError) as exc:
        console.info(f"[yellow]cleaning up after {lid} failed too: {exc}[/]")
        rec.reverted = False
    except KeyboardInterrupt:
        rec.reverted = False
    rec.ok = False
    if rec.observed != ERROR:
        rec.observed = ERROR


def list_fixes(plan: Plan) -> list[tuple[str, str, str]]:
    """(id, title, expected outcome) of every fix of the plan."""
    return [(f.id, f.title, f.expected) for f in plan.fixes]


__all__ = ["KeptFailing", "Options", "Publish", "Runner", "Testbed", "choose_isolation", "list_fixes", "new_record",
           "run", "step_record"]
