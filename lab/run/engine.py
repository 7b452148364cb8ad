"""lab.verify, generic: evidence, baseline, each fix with its revert, the baseline again, the record.

The engine runs a rendered Plan and knows nothing of the bug. Over one SSH connection, commands run
in persistent shells (the admin's login, root's through sudo) or, for via = "ssh", in a fresh login
as the user. Whatever happens inside a try, the scenario's teardown runs and an applied fix is
reverted in a `finally`; a revert that fails, or a baseline that no longer reproduces at the end,
fails the run. Resources sit on an ExitStack and are released in reverse order on every path.
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

from lab.config.settings import Settings
from lab.core import paths
from lab.core.errors import LabError, TestbedError
from lab.machine import lifecycle, state
from lab.machine.state import Phase
from lab.remote.shell import Shell
from lab.remote.ssh import CommandResult, Endpoint, Remote
from lab.render.lab import facts_for_render
from lab.render.plan import Plan, PlannedCommand, PlannedScript, PlannedTry, PlannedWait, plan, script_file
from lab.run import judge, record, vias
from lab.run.live import Live, Stop


@dataclass
class Runner:
    """Carries out plan steps over one connection and records each as a StepRecord."""

    settings: Settings
    plan: Plan
    remote: Remote
    live: Live
    began: float = field(default_factory=time.monotonic)
    steps: list[judge.StepRecord] = field(default_factory=list)
    shells: dict[bool, Shell] = field(default_factory=dict)
    broken: TestbedError | None = None  # once the VM is gone, no further command is tried
    keep_failing: bool = False  # stop at the first unmet expectation, leaving the try as it failed

    def shell(self, as_root: bool) -> Shell:
        """One persistent bash per identity: the admin's, and root's through sudo."""
        if as_root not in self.shells:
            self.shells[as_root] = Shell(self.remote, as_root=as_root, user=self.plan.admin,
                                         label=f"lab {self.settings.name}", liveness=self.alive)
        return self.shells[as_root]

    def close(self) -> None:
        for shell in self.shells.values():
            shell.close()

    def warm(self) -> None:
        """Open the admin's and root's shells at once: each is a login session in the guest (PAM,
        logind, and the admin's user manager when none runs: ~1-4 s on TCG, measured), so opening
        them side by side costs the longer of the two, not their sum. Raises what opening raised."""
        failures: list[BaseException] = []

        def open_one(as_root: bool) -> None:
            try:
                self.shell(as_root).run(":", step="open shell", timeout=self.settings.ssh_timeout)
            except BaseException as exc:  # re-raised below, in the caller's thread
                failures.append(exc)

        self.shell(False)
        self.shell(True)
        # each thread runs in a copy of this context: the lab's libvirt host for liveness checks
        threads = [threading.Thread(target=contextvars.copy_context().run, args=(open_one, as_root), daemon=True)
                   for as_root in (False, True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise failures[0]

    def alive(self) -> None:
        """TestbedError when the lab's VM is no longer running (asked during long silences)."""
        lifecycle.require_running(self.settings)

    def _guarded(self, fn: Callable[[], CommandResult]) -> CommandResult:
        if self.broken is not None:
            raise self.broken
        try:
            return fn()
        except TestbedError:
            try:
                self.alive()  # the connection dropped but the VM runs: cleanup may still reconnect
            except TestbedError as gone:
                self.broken = gone  # the VM itself is gone: no cleanup can reach it
            raise

    def _login_as(self, user: str, command: str, step: str, timeout: float | None = None) -> CommandResult:
        """A fresh SSH login as user (its own PAM and logind session), one command, then logout."""
        ep = self.remote.endpoint
        login = Endpoint(host=ep.host, port=ep.port, user=user, key_file=ep.key_file)
        with Remote(login, self.remote.known_hosts, connect_timeout=min(60, self.remote.connect_timeout),
                    command_timeout=timeout or self.settings.command_timeout,
                    label=f"lab {self.settings.name} as {user}") as r:
            return r.run(command, step=step)

    def _step(self, id: str, title: str, shown: str, user: str, run: Callable[[], CommandResult],
              expected: str = "succeed", why: str = "", quiet: bool = False) -> judge.StepRecord:
        """Show the command as typed, run it, record it, show what it printed (unless quiet)."""
        started = time.monotonic() - self.began
        if not quiet:
            self.live.before(shown, user)
        result = self._guarded(run)
        rec = judge.StepRecord.from_result(id, title, result, expected, started, why=why, shown=shown, user=user)
        self.steps.append(rec)
        if not quiet:
            self.live.after(rec)
        return rec

    def command(self, id: str, cmd: PlannedCommand, expected: str = "succeed", quiet: bool = False,
                title: str = "", timeout: float | None = None) -> judge.StepRecord:
        """A command as the user types it, through its channel (admin, root, a fresh SSH login, or
        the vias lab.run.vias carries out: cron, tty)."""
        seconds = timeout or self.settings.command_timeout
        if cmd.channel == "ssh":
            return self._step(id, title or cmd.title, cmd.shown, cmd.user,
                              lambda: self._login_as(cmd.user, cmd.run, id, seconds), expected, cmd.why, quiet)
        # --- via hook (lab.run.vias): cron and tty ---
        if cmd.channel == "cron":
            return self._step(id, title or cmd.title, cmd.shown, cmd.user,
                              lambda: vias.run_cron(self.shell(True), cmd.user, cmd.run, id, seconds),
                              expected, cmd.why, quiet)
        if cmd.channel == "tty":
            return self._step(id, title or cmd.title, cmd.shown, cmd.user,
                              lambda: vias.run_tty(self.remote.transport(), cmd.user, cmd.run, id, seconds,
                                                   label=f"lab {self.settings.name}", shown=cmd.shown),
                              expected, cmd.why, quiet)
        shell = self.shell(cmd.channel == "root")
        return self._step(id, title or cmd.title, cmd.shown, self.plan.admin,
                          lambda: shell.run(cmd.run, step=id, timeout=seconds),
                          expected, cmd.why, quiet)

    def wait(self, id: str, w: PlannedWait) -> tuple[judge.StepRecord, bool]:
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
        rec = judge.StepRecord.from_result(id, title, result, "any", started, ok=matched,
                                           note="" if matched else f"not matched within {w.seconds:g} s",
                                           shown=f"sudo sh -c {shlex.quote(w.command)}", user=self.plan.admin)
        self.steps.append(rec)
        return rec, matched

    def script(self, id: str, title: str, rel: str, script: PlannedScript, quiet: bool = True) -> judge.StepRecord:
        """A root script, fed to root's shell on stdin; shown as the `sudo bash FILE` it is."""
        shell = self.shell(True)
        return self._step(id, title, f"sudo bash {rel}", self.plan.admin,
                          lambda: shell.run(script.text, stdin=script.text, step=id,
                                            timeout=self.settings.command_timeout), quiet=quiet)


def list_fixes(settings: Settings) -> list[tuple[str, str, str]]:
    """(id, title, expected outcome) of every fix of the scenario on the settings' target."""
    p = plan(settings, facts_for_render(settings.name))
    return [(f.id, f.title, f.expected) for f in p.fixes]


Publish = Callable[[Path], Iterable[Path]]


class KeptFailing(Exception):
    """--keep-failing: a try did not meet its expectation and is left as it failed."""

    def __init__(self, try_id: str) -> None:
        super().__init__(try_id)
        self.try_id = try_id


def run(settings: Settings, only: tuple[str, ...] = (), step_mode: bool = False,
        publish: Publish | None = None, start_from: str = "", keep_failing: bool = False) -> bool:
    """Verify the lab; True when every step met its expectation. Writes the record into the run's
    own directory either way (reports/<run>/verify.json; `latest` moves only for a run that
    completed), then calls publish(run_dir) to render the other reports from it. start_from: begin
    with this fix after the evidence (a presenter resuming a demo); the baseline is then shown only
    at the end, restored. A run the presenter stopped returns True when every step that ran met its
    expectation. keep_failing: stop at the first try that does not meet its expectation with its fix
    still applied (no teardown, no revert), for a shell there; the next run restores the baseline.

    Raises TestbedError when the lab cannot be reached or put back into its baseline, LabError for
    bad input; the record of such a run is still written, marked with the error."""
    lab = paths.lab_dir(settings.name)
    for fix_id in (*only, *([start_from] if start_from else [])):
        settings.scenario_data.fix(settings.target, fix_id)  # an unknown fix is refused before anything
    with state.locked(lab, "verify"):
        state.require(lab, "verify", *state.READY)
        lifecycle.require_running(settings)
        ok = _run(settings, lab, only, step_mode, publish, start_from, keep_failing)
        state.advance(lab, Phase.VERIFIED, "verify")
        return ok


def _run(settings: Settings, lab: paths.LabDir, only: tuple[str, ...], step_mode: bool,
         publish: Publish | None, start_from: str = "", keep_failing: bool = False) -> bool:
    facts = lifecycle.load_facts(lab)
    p = plan(settings, facts)
    tries = [p.fix(f) for f in (only or settings.fix_ids)]
    if start_from:
        ids = [t.id for t in tries]
        tries = tries[ids.index(start_from):] if start_from in ids else [p.fix(start_from)]
    live = Live(p, step_mode=step_mode)
    rec = record.new(settings, facts, p)
    rec["planned"] = [*([] if start_from else ["baseline"]), *(t.id for t in tries),
                      *(["baseline-restored"] if tries else [])]
    rec["started_from"] = start_from or None
    wall_start = time.monotonic()
    runner: Runner | None = None
    try:
        with ExitStack() as stack:
            remote = stack.enter_context(lifecycle.connect(settings))
            runner = Runner(settings, p, remote, live, keep_failing=keep_failing)
            stack.callback(runner.close)
            try:
                runner.warm()
                _preflight(runner)
                _verify(runner, rec, tries, with_baseline=not start_from)
            except Stop as stop:
                rec["stopped"] = stop.after or "the start"
            except KeptFailing as kept:
                rec["kept_failing"] = kept.try_id
                live.kept(kept.try_id, settings.name)
            except LabError as exc:
                rec["error"] = str(exc)
                raise
    except LabError as exc:
        rec.setdefault("error", str(exc))
        raise
    finally:
        rec["steps"] = [judge.as_dict(s) for s in runner.steps] if runner else []
        rec["seconds"] = round(time.monotonic() - wall_start, 3)
        record.finish(rec)
        where = record.write(lab, rec)
        record.prune(lab.reports, settings.keep_reports)
        for path in publish(where) if publish else ():
            live.written(path)
    live.summary(rec)
    return bool(rec["ok"])


def _preflight(r: Runner) -> None:
    """Start from the baseline even if an earlier run was interrupted: teardown, then revert every
    fix of the target, quietly."""
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


def _verify(r: Runner, rec: dict, tries: list[PlannedTry], with_baseline: bool = True) -> None:
    p = r.plan
    versions = r.command("versions", PlannedCommand(p.versions, p.versions, "admin", p.admin, "login"),
                         quiet=True, title="versions in the guest")
    rec["versions"] = {"text": versions.stdout.strip()}
    r.live.versions(versions.stdout)
    rec["evidence"] = []
    for i, ev in enumerate(p.evidence):
        steps = [r.command(f"evidence-{i + 1}-{j + 1}", c, quiet=True) for j, c in enumerate(ev.commands)]
        holds = judge.evidence_holds(ev.expect, [s.stdout for s in steps])
        steps[-1].ok = steps[-1].ok and holds
        rec["evidence"].append({"title": ev.title, "why": ev.why, "expect": ev.expect, "holds": holds,
                                "steps": [s.id for s in steps],
                                "columns": [{"command": s.command, "user": s.user, "title": s.title,
                                             "output": s.stdout} for s in steps]})
        r.live.evidence(ev, steps, holds)
    done: list[judge.TryRecord] = []
    for t in [p.baseline, *tries] if with_baseline else tries:
        r.live.pause(t.id, done[-1].id if done else "the evidence")
        done.append(_try(r, t))
        rec["baseline"] = judge.as_dict(done[0]) if with_baseline else None
        rec["fixes"] = [judge.as_dict(f) for f in (done[1:] if with_baseline else done)]
    if tries:
        again = _try(r, p.baseline, label="baseline-restored", announce="restored baseline")
        rec["restored"] = again.ok
        rec["baseline_restored"] = judge.as_dict(again)


def _try(r: Runner, t: PlannedTry, label: str | None = None, announce: str = "") -> judge.TryRecord:
    p = r.plan
    lid = label or t.id
    r.live.try_header(lid, t, announce)
    rec = judge.TryRecord(id=lid, title=t.title, expected=t.expected, observed="error", ok=False, why=t.why,
                          kind=t.kind)
    if p.teardown:
        step = r.script(f"{lid}:teardown", "tear down before the try", p.teardown.rel, p.teardown)
        if not step.ok:
            raise TestbedError(f"the teardown before {lid} failed: {step.stdout.strip()} {step.stderr.strip()}")
    applied = False
    try:
        if t.apply:
            applied = True
            step = r.script(f"{lid}:apply", f"apply fix {t.id}", script_file(t.id, "apply"), t.apply, quiet=False)
            if not step.ok:
                return rec
        start = r.command(f"{lid}:start", t.start, expected=t.exit_expected,
                          title=t.start.title or "the command as the admin types it", timeout=t.timeout)
        waited = [r.wait(f"{lid}:wait-{n + 1}", w) for n, w in enumerate(t.waits)]
        obs = judge.Observation()
        if p.observe:
            seen = r.script(f"{lid}:observe", "observe the outcome", p.observe.rel, p.observe)
            obs = judge.parse_observation(seen.stdout)
        observed = judge.classify(p.rules, judge.facts(obs, start))
        matched = judge.matched_signatures(t.signatures, [start.stdout, start.stderr, *obs.notes,
                                                          *(f"{k}={v}" for k, v in obs.fields.items())])
        rec.observed, rec.signature_matched, rec.fields, rec.notes = observed, matched, obs.fields, obs.notes[-10:]
        rec.ok = judge.judge(t.expected, observed, t.signatures, matched)
        rec.exit_code, rec.exit_ok = start.exit_code, judge.exit_ok(t.exit_expected, start.exit_code)
        rec.wait = "; ".join(f"{s.title}: ran out; last seen: {(s.stdout + s.stderr).strip()[-200:]!r}"
                             for s, ok in waited if not ok)
        rec.ok = rec.ok and rec.exit_ok and not rec.wait
        start.ok = start.ok and rec.ok
        r.live.outcome(rec)
    finally:
        if r.keep_failing and not rec.ok and r.broken is None:
            raise KeptFailing(lid)
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
    return rec
