"""The run's plan: a scenario rendered for one target, every text, command, script and signature
resolved, so the runner executes data and lab.check can inspect exactly what would run."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from lab.config import scenario as sc
from lab.config.settings import Settings
from lab.core.errors import LabError, did_you_mean
from lab.render.lab import LabFacts, context
from lab.render.templates import render_file, render_string, scenario_environment


@dataclass(frozen=True)
class PlannedCommand:
    """A command as the user types it (shown) and how the runner carries it out.

    channel: "admin" (the admin's persistent login shell), "root" (root's persistent shell through
    sudo) or "ssh" (a fresh SSH login as user); run is the text given to that channel."""

    shown: str
    run: str
    channel: str
    user: str
    via: str
    title: str = ""
    why: str = ""


@dataclass(frozen=True)
class PlannedScript:
    """A root script of the scenario: its file (for the transcript) and its rendered text."""

    rel: str
    text: str


@dataclass(frozen=True)
class PlannedTry:
    """The baseline or one fix on this target."""

    id: str
    title: str
    why: str
    expected: str
    failure: bool  # the expected outcome is a failure: the start is expected to exit non-zero
    signatures: tuple[str, ...]
    start: PlannedCommand
    apply: PlannedScript | None = None
    revert: PlannedScript | None = None


@dataclass(frozen=True)
class PlannedEvidence:
    title: str
    why: str
    expect: str
    commands: tuple[PlannedCommand, ...]


@dataclass(frozen=True)
class Plan:
    """Everything one verify run of a scenario on a target does, rendered."""

    scenario: str
    title: str
    explanation: str
    sources: tuple[str, ...]
    target: str
    target_title: str
    cgroup_layout: str
    note: str
    admin: str
    users: tuple[str, ...]
    versions: str
    evidence: tuple[PlannedEvidence, ...]
    teardown: PlannedScript | None
    observe: PlannedScript | None
    rules: tuple[dict[str, Any], ...]
    outcomes: dict[str, dict[str, Any]]
    baseline: PlannedTry
    fixes: tuple[PlannedTry, ...] = field(default=())
    isolation: str = "snapshot"  # the scenario's: "snapshot" or "teardown"

    def fix(self, fix_id: str) -> PlannedTry:
        """The planned fix; LabError with a did-you-mean when the scenario has none of that id here."""
        for f in self.fixes:
            if f.id == fix_id:
                return f
        ids = [f.id for f in self.fixes]
        raise LabError(f"scenario {self.scenario} has no fix {fix_id!r} on target {self.target}"
                       f"{did_you_mean(fix_id, ids)}", hint=f"fixes there: {', '.join(ids) or 'none'}")

    @property
    def scripts(self) -> dict[str, str]:
        """Every root script of the plan by its file name in the lab directory."""
        found = {s.rel: s.text for s in (self.teardown, self.observe) if s}
        for t in (self.baseline, *self.fixes):
            for phase, s in (("apply", t.apply), ("revert", t.revert)):
                if s:
                    found[script_file(t.id, phase)] = s.text
        return found


def script_file(try_id: str, phase: str) -> str:
    """fixes/pam-cgfs-apply.sh: where a fix's script is written in the lab directory."""
    return f"fixes/{try_id}-{phase}.sh"


def wrap(command: str, via: str, user: str, lab_name: str) -> tuple[str, str, str]:
    """(shown, run, channel) for a command typed through an identity (see config.scenario.Command)."""
    q = shlex.quote
    if via == "login":
        return command, command, "admin"
    if via == "root":
        shown = f"sudo sh -c {q(command)}"
        return shown, command, "root"
    if via == "sudo":
        line = f"sudo -u {q(user)} {command}"
    elif via == "su":
        line = f"sudo su {q(user)} -c {q(command)}"
    elif via == "su-login":
        line = f"sudo su - {q(user)} -c {q(command)}"
    elif via == "machinectl":
        # machinectl shell needs a terminal: without one it ends at once, printing nothing
        # (measured on systemd 252). script(1) gives it one; its exit code is always 0.
        line = f"sudo machinectl shell {q(user)}@ /bin/sh -c {q(command)}"
        return line, f"script -qec {q(line)} /dev/null", "admin"
    elif via == "ssh":
        return f"ssh {user}@{lab_name} {command}", command, "ssh"
    else:
        raise ValueError(f"unknown via {via!r}")
    return line, line, "admin"


class Renderer:
    """Renders a scenario's texts for one lab; every error names the key path it came from."""

    def __init__(self, settings: Settings, facts: LabFacts) -> None:
        self.settings = settings
        self.scenario = settings.scenario_data
        self.target = settings.target_data.name
        self.env = scenario_environment(self.scenario.folder)
        self.ctx = context(settings, facts)
        self.file = self.scenario.file

    def text(self, value: Any, where: str, extra: dict[str, Any] | None = None) -> str:
        value = sc.per_target(value, self.target, "")
        return render_string(self.env, str(value), {**self.ctx, **(extra or {})}, f"{self.file}: {where}").strip()

    def script(self, rel: str, where: str, extra: dict[str, Any] | None = None) -> PlannedScript | None:
        if not rel:
            return None
        text = render_file(self.env, rel, {**self.ctx, **(extra or {})}, where=f"{self.file}: {where}")
        return PlannedScript(rel=rel, text=text)

    def command(self, c: sc.Command, where: str, extra: dict[str, Any] | None = None) -> PlannedCommand:
        typed = self.text(c.command, f"{where}.command", extra)
        shown, run, channel = wrap(typed, c.via, c.user, self.settings.name)
        return PlannedCommand(shown=shown, run=run, channel=channel, user=c.user or self.ctx["admin"], via=c.via,
                              title=self.text(c.title, f"{where}.title", extra),
                              why=self.text(c.why, f"{where}.why", extra))

    def attempt(self, t: sc.Try, tid: str, where: str, baseline: sc.Baseline) -> PlannedTry:
        fix_ctx = {"fix": {"id": tid, "vars": t.vars}}
        start = t.start or baseline.start
        expected = sc.expected(t, self.target)
        outcome = self.scenario.model.outcomes.get(expected)
        return PlannedTry(
            id=tid, title=self.text(t.title, f"{where}.title", fix_ctx), why=self.text(t.why, f"{where}.why", fix_ctx),
            expected=expected, failure=bool(outcome and outcome.failure),
            signatures=tuple(self.text(p, f"{where}.signature", fix_ctx) for p in sc.signatures(t, self.target)),
            start=self.command(start, f"{where}.start", fix_ctx),
            apply=self.script(getattr(t, "apply", ""), f"{where}.apply", fix_ctx),
            revert=self.script(getattr(t, "revert", ""), f"{where}.revert", fix_ctx),
        )


def plan(settings: Settings, facts: LabFacts) -> Plan:
    """Render the settings' scenario for its target; LabError names the key path of a bad template."""
    r = Renderer(settings, facts)
    m = r.scenario.model
    spec = m.targets[r.target]
    evidence = tuple(
        PlannedEvidence(title=r.text(ev.title, f"evidence[{i}].title"), why=r.text(ev.why, f"evidence[{i}].why"),
                        expect=ev.expect,
                        commands=tuple(r.command(c, f"evidence[{i}].commands[{j}]") for j, c in enumerate(ev.commands)))
        for i, ev in enumerate(m.evidence))
    fixes = tuple(r.attempt(f, f.id, f"fixes[{m.fixes.index(f)}]", m.baseline)
                  for f in r.scenario.fixes_for(r.target))
    target = settings.target_data
    return Plan(
        scenario=m.id, title=r.text(m.title, "title"), explanation=r.text(m.explanation, "explanation"),
        sources=tuple(m.sources), target=r.target, target_title=target.title, cgroup_layout=target.cgroup_layout,
        note=r.text(spec.note, f"targets.{r.target}.note"), admin=m.users.admin, users=tuple(m.users.unprivileged),
        versions=r.text(r.scenario.versions_for(r.target), "versions"), evidence=evidence,
        teardown=r.script(m.teardown, "teardown"), observe=r.script(m.observe.script, "observe.script"),
        rules=tuple(rule.model_dump() for rule in m.observe.rules),
        outcomes={name: o.model_dump() for name, o in m.outcomes.items()},
        baseline=r.attempt(m.baseline, "baseline", "baseline", m.baseline), fixes=fixes, isolation=m.isolation,
    )
