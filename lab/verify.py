"""lab.verify: evidence, baseline, each fix with its revert, the restored baseline, and the record.

Runs over one paramiko connection. Whatever happens inside a fix, its container is stopped and the
fix reverted in a `finally`; a revert that fails, or a baseline that no longer reproduces at the
end, fails the run. The record goes to .lab/<name>/reports/verify.json, then the other reports.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import lifecycle, paths, render, scenario
from lab.console import console
from lab.errors import LabError
from lab.files import write_files
from lab.live import Live
from lab.remote import Remote
from lab.settings import Settings
from lab.shell import Shell
from lab.targets import Fix, Outcome


class Stop(Exception):
    """The presenter pressed q: stop after restoring the baseline."""


@dataclass
class Run:
    settings: Settings
    remote: Remote
    facts: render.LabFacts
    live: Live
    began: float = field(default_factory=time.monotonic)
    steps: list[scenario.StepRecord] = field(default_factory=list)
    shells: dict[bool, Shell] = field(default_factory=dict)

    def shell(self, as_root: bool) -> Shell:
        """One persistent bash per identity: the admin's, and root's through sudo."""
        if as_root not in self.shells:
            self.shells[as_root] = Shell(self.remote, as_root=as_root, user=self.settings.admin_user,
                                         label=f"lab {self.settings.name}")
        return self.shells[as_root]

    def close(self) -> None:
        for shell in self.shells.values():
            shell.close()

    def step(self, id: str, title: str, command: str, *, as_root: bool = False, stdin: str | None = None,
             expected: str = "succeed", why: str = "", shown: str | None = None, ok: bool | None = None,
             quiet: bool = False) -> scenario.StepRecord:
        started = time.monotonic() - self.began
        if not quiet:
            self.live.before(id, title, shown or command, self.settings.admin_user, why)
        result = self.shell(as_root).run(command, stdin=stdin, step=id, timeout=self.settings.command_timeout)
        # the admin types every command; root's steps are shown as the `sudo bash script` they are
        record = scenario.StepRecord.from_result(id, title, result, expected, started, why=why, ok=ok, shown=shown,
                                                 user=self.settings.admin_user)
        self.steps.append(record)
        if not quiet:
            self.live.after(record)
        return record

    def script(self, id: str, title: str, rel: str, script: str, why: str = "",
               quiet: bool = False) -> scenario.StepRecord:
        return self.step(id, title, script, as_root=True, stdin=script, why=why, shown=f"sudo bash {rel}",
                         quiet=quiet)


def list_fixes(settings: Settings) -> None:
    target = settings.target_data
    console.print(f"[bold]{target.title}[/] — fixes (expected outcome on this target):")
    for fix in target.fixes:
        console.print(f"  [cyan]{fix.id:<12}[/] {scenario.fill(fix.title, settings)}  "
                      f"[dim]→ {fix.expected.value}[/]")


def run(settings: Settings, only: tuple[str, ...] = (), step_mode: bool = False) -> bool:
    """Verify the lab; True when every step met its expectation. Writes the reports either way."""
    target = settings.target_data
    fixes = [target.fix(f) for f in (only or settings.fix_ids)]
    lab = paths.lab_dir(settings.name)
    facts = lifecycle.load_facts(lab)
    live = Live(settings, step_mode=step_mode)
    record: dict = {"target": settings.target, "provider": facts.provider, "name": settings.name,
                    "title": target.title, "cgroup_layout": target.cgroup_layout,
                    "admin_user": settings.admin_user, "container_user": settings.container_user,
                    "container_name": settings.container_name,
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "ok": False, "versions": {}, "evidence": {}, "steps": [], "fixes": [], "restored": None}
    wall_start = time.monotonic()
    try:
        with lifecycle.connect(settings) as remote:
            r = Run(settings, remote, facts, live)
            try:
                _preflight(r)
                _verify(r, record, fixes)
            except Stop:
                record["stopped"] = True
            except LabError as exc:
                record["error"] = str(exc)
                raise
            finally:
                r.close()
                record["steps"] = [scenario.as_dict(s) for s in r.steps]
    finally:
        record["seconds"] = round(time.monotonic() - wall_start, 3)
        record["ok"] = bool(record["steps"]) and all(s["ok"] for s in record["steps"]) and \
            all(f["ok"] for f in record["fixes"]) and record.get("restored") is not False and \
            not record.get("stopped") and record.get("error") is None
        _write(lab, record)
    live.summary(record)
    return bool(record["ok"])


def _preflight(r: Run) -> None:
    """Start from the baseline even if an earlier run was interrupted: revert every fix, quietly."""
    target = r.settings.target_data
    for fix in target.fixes:
        if fix.revert:
            script = render.render_fix(r.settings, fix, "revert", r.facts)
            step = r.script(f"preflight:{fix.id}:revert", f"make sure {fix.id} is not applied",
                            f"fixes/{fix.id}-revert.sh", script, quiet=True)
            if not step.ok:
                raise LabError(f"could not return to the baseline before verifying: reverting {fix.id} failed: "
                               f"{step.stderr.strip() or step.stdout.strip()}",
                               hint="inspect with: invoke lab.ssh; or start over: invoke lab.destroy lab.up")


def _verify(r: Run, record: dict, fixes: list[Fix]) -> None:
    s = r.settings
    target = s.target_data
    versions = r.step("versions", "versions in the guest", target.versions_command, quiet=True)
    record["versions"] = {"text": versions.stdout.strip()}
    r.live.versions(versions.stdout)
    admin = r.step("evidence-admin", f"{s.admin_user}'s own cgroups", "cat /proc/self/cgroup",
                   why=f"{s.admin_user} logged in over SSH: logind put the session in its own scope.", quiet=True)
    sudo = r.step("evidence-sudo", f"the cgroups of a process started with sudo -u {s.container_user}",
                  f"sudo -u {s.container_user} cat /proc/self/cgroup", quiet=True,
                  why=f"sudo opened no login session, so {s.container_user} still sits in {s.admin_user}'s cgroups.")
    same = scenario.inherited(admin.stdout, sudo.stdout)
    sudo.ok = sudo.ok and same
    record["evidence"] = {"admin": admin.stdout, "sudo_user": sudo.stdout, "inherited": same}
    r.live.evidence(admin, sudo, same)
    outcomes = []
    for fix in [target.baseline, *fixes]:
        r.live.pause(fix)
        outcomes.append(_try_fix(r, fix))
        record["fixes"] = [scenario.as_dict(f) for f in outcomes if f.id != "baseline"]
        record["baseline"] = scenario.as_dict(outcomes[0])
    if fixes:
        again = _try_fix(r, target.baseline, label="baseline-restored", announce="restored baseline")
        record["restored"] = again.ok
        record["baseline_restored"] = scenario.as_dict(again)


def _try_fix(r: Run, fix: Fix, label: str | None = None, announce: str = "") -> scenario.FixRecord:
    s = r.settings
    lid = label or fix.id
    files = {phase: render.render_fix(s, fix, phase, r.facts) for phase in ("apply", "start", "revert")
             if getattr(fix, phase)}
    reset = render.render_all_guest(s, r.facts)
    is_baseline = fix.id == "baseline"
    title = scenario.fill(fix.title, s)
    r.live.fix_header(lid, title, scenario.fill(fix.why, s), fix.expected, announce)
    rec = scenario.FixRecord(id=lid, title=title, expected=fix.expected.value, observed=Outcome.ERROR.value,
                             ok=False, why=scenario.fill(fix.why, s))
    step = r.script(f"{lid}:reset", "stop the container, empty its log", "guest/reset.sh", reset["guest/reset.sh"],
                    quiet=True)
    if not step.ok:
        raise LabError(f"could not reset the container before {lid}: {step.stdout.strip()} {step.stderr.strip()}")
    applied = False
    try:
        if "apply" in files:
            applied = True
            step = r.script(f"{lid}:apply", f"apply fix {fix.id}", f"fixes/{fix.id}-apply.sh", files["apply"])
            if not step.ok:
                return rec
        start = files["start"].strip()
        step = r.step(f"{lid}:start", "start the container as the admin would", start,
                      expected=scenario.start_expectation(fix))
        observe = r.script(f"{lid}:observe", "look at the container", "guest/observe.sh", reset["guest/observe.sh"],
                           quiet=True)
        obs = scenario.parse_observation(observe.stdout)
        observed = scenario.classify(obs)
        sigs = scenario.matched_signatures(fix, s, [step.stdout, step.stderr, *obs.log])
        rec.observed, rec.signature_matched, rec.limit, rec.cgroup = observed.value, sigs, obs.limit, obs.cgroup
        rec.ok = scenario.judge(fix, observed, sigs)
        step.ok = step.ok and rec.ok
        r.live.outcome(fix, observed, rec.ok, is_baseline, obs, sigs)
    finally:
        stop = r.script(f"{lid}:stop", "stop the container", "guest/reset.sh", reset["guest/reset.sh"], quiet=True)
        reverted = stop.ok
        if applied and "revert" in files:
            rv = r.script(f"{lid}:revert", f"revert fix {fix.id}", f"fixes/{fix.id}-revert.sh", files["revert"],
                          quiet=True)
            reverted = reverted and rv.ok
            r.live.reverted(fix.id, rv)
        rec.reverted = reverted
        if not reverted:
            rec.ok = False
    return rec


def _write(lab: paths.LabDir, record: dict) -> Path:
    [path] = write_files(lab.reports, {"verify.json": json.dumps(record, indent=2) + "\n"})
    try:
        from lab.report import write_reports

        for written in write_reports(lab.name, project_dir=lab.root.parent.parent):
            console.print(f"[dim]report: {written}[/]")
    except ImportError:
        pass
    return path
