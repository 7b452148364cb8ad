"""The run's plan: a scenario rendered for one target, every text, command, script and signature
resolved, so the runner executes data and lab.check can inspect exactly what would run."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from lab.config import scenario as sc
from lab.config.resolved import Lab
from lab.core.errors import LabError, did_you_mean
from lab.render.lab import LabFacts, context
from lab.render.templates import render_file, render_string, scenario_environment


@dataclass(frozen=True)
class PlannedCommand:
    """A command as the user types it (shown) and how the runner carries it out.

    channel: "admin" (the admin's persistent login shell), "root" (root's persistent shell through
    sudo), "ssh" (a fresh SSH login as user), "cron" (a job in user's crontab) or "tty" (a login at a
    terminal): the last two are carried out by lab.run.vias; run is the text given to the channel."""

    shown: str
    run: str
    channel: str
    user: str
    via: str
    title: str = ""
    why: str = ""
    typed: str = ""  # the user's command itself, before any wrapping (lab.check's shellcheck reads it)
    source: str = ""  # the key path it came from (fixes[cgm].start.command)


@dataclass(frozen=True)
class PlannedScript:
    """A root script of the scenario: its file (for the transcript) and its rendered text."""

    rel: str
    text: str


@dataclass(frozen=True)
class PlannedWait:
    """Poll command (as root) until its output matches until, at most seconds, every `every` s."""

    command: str
    until: str
    seconds: float
    every: float
    title: str = ""


@dataclass(frozen=True)
class PlannedTry:
    """The baseline, a variant, a control or a fix on this target.

    exit: what the start command's exit status must be: "zero", "non-zero", "any" or a tuple of
    codes (apart from the outcome); timeout: seconds for the start command (None: the setting)."""

    id: str
    title: str
    why: str
    expected: str
    failure: bool  # the expected outcome is one the scenario calls a failure
    signatures: tuple[str, ...]
    start: PlannedCommand
    apply: PlannedScript | None = None
    revert: PlannedScript | None = None
    kind: str = "fix"  # baseline, variant, control or fix
    exit: str | tuple[int, ...] = "any"
    waits: tuple[PlannedWait, ...] = ()
    timeout: int | None = None

    @property
    def exit_expected(self) -> str:
        """The start step's expectation as the record words it: succeed, fail, any or "exit 0, 3"."""
        if isinstance(self.exit, tuple):
            return "exit " + ", ".join(map(str, self.exit))
        return {"zero": "succeed", "non-zero": "fail"}.get(self.exit, "any")


@dataclass(frozen=True)
class PlannedEvidence:
    """One evidence block on this target: its commands' outputs are shown side by side."""

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


def wrap(command: str, via: str, user: str, lab_name: str, pam: str = "",
         properties: tuple[str, ...] = ()) -> tuple[str, str, str]:
    """(shown, run, channel) for a command typed through an identity (lab.config.vias)."""
    q = shlex.quote
    props = "".join(f" -p {q(p)}" for p in properties)
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
    elif via == "runuser":
        line = f"sudo runuser -u {q(user)} -- sh -c {q(command)}"
    elif via == "runuser-login":
        line = f"sudo runuser -l {q(user)} -c {q(command)}"
    elif via == "setpriv":
        line = f"sudo setpriv --reuid={q(user)} --regid={q(user)} --init-groups --reset-env sh -c {q(command)}"
    elif via == "unit":
        # a transient system service, as systemd starts a daemon: --wait returns the service's exit
        # status, --pipe connects its output to ours (systemd-run(1))
        pam_prop = f" -p PAMName={q(pam)}" if pam else ""
        line = (f"sudo systemd-run --quiet --collect --wait --pipe -p User={q(user)}{pam_prop}{props} "
                f"sh -c {q(command)}")
    elif via == "run0":
        line = f"sudo run0 --user={q(user)}{props.replace(' -p ', ' --property=')} sh -c {q(command)}"
    elif via == "machinectl":
        # machinectl shell needs a terminal: without one it ends at once, printing nothing
        # (measured on systemd 252). script(1) gives it one; its exit code is always 0.
        line = f"sudo machinectl shell {q(user)}@ /bin/sh -c {q(command)}"
        return line, f"script -qec {q(line)} /dev/null", "admin"
    elif via == "ssh":
        return f"ssh {user}@{lab_name} {command}", command, "ssh"
    elif via == "cron":
        return f"@reboot {command}    # in {user}'s crontab, run by cron", command, "cron"
    elif via == "tty":
        return f"{user}@console$ {command}", command, "tty"
    else:
        raise ValueError(f"unknown via {via!r}")
    return line, line, "admin"


class Renderer:
    """Renders a scenario's texts for one lab; every error names the key path it came from."""

    def __init__(self, lab: Lab, facts: LabFacts) -> None:
        self.lab = lab
        self.scenario = lab.scenario
        self.target = lab.target.name
        self.env = scenario_environment(self.scenario.folder)
        self.ctx = context(lab, facts)
        self.file = self.scenario.file

    def _defined(self, extra: dict[str, Any] | None) -> str:
        names = sorted(self.ctx["vars"])
        fix_vars = sorted(((extra or {}).get("fix") or {}).get("vars") or {})
        return (f"vars defined here: {', '.join(names) or 'none'}"
                + (f"; fix.vars: {', '.join(fix_vars)}" if extra and "fix" in extra else ""))

    def text(self, value: Any, where: str, extra: dict[str, Any] | None = None) -> str:
        """value (a text, or a table per target: "" where it has no entry for this target) rendered as a
        jinja2 template with the lab's context and extra (e.g. {"fix": {...}}), whitespace stripped.
        where: its key path in scenario.toml (e.g. "fixes[f1].title"). Raises LabError naming the file
        and key path on a syntax error or an undefined value (its hint lists the vars defined)."""
        value = sc.per_target(value, self.target, "")
        try:
            return render_string(self.env, str(value), {**self.ctx, **(extra or {})},
                                 f"{self.file}: {where}").strip()
        except LabError as exc:
            if "has no attribute" in exc.message or "is undefined" in exc.message:
                raise LabError(exc.message, hint=self._defined(extra)) from None
            raise

    def script(self, rel: Any, where: str, extra: dict[str, Any] | None = None) -> PlannedScript | None:
        """The script file rel (a path relative to the scenario folder, ../shared/X for the shared folder;
        or a table per target) rendered with the lab's context and extra; None when there is none on this
        target. Raises LabError for a missing file, a syntax error or an undefined value (naming where)."""
        rel = sc.per_target(rel, self.target, "")
        if not rel:
            return None
        name = sc.template_name(self.scenario.folder, rel)
        text = render_file(self.env, name, {**self.ctx, **(extra or {})}, where=f"{self.file}: {where}")
        return PlannedScript(rel=rel, text=text)

    def command(self, c: Any, where: str, extra: dict[str, Any] | None = None) -> PlannedCommand:
        """The command c (a Command, or a table of them per target) on this target, every field rendered
        and wrapped for its via (wrap): what is shown and what the runner's channel runs. Raises LabError
        naming file and key path when there is no command for the target, when its user (as rendered) is
        neither the admin nor an unprivileged user of the scenario, or when a field does not render."""
        one = sc.resolve_command(c, self.target)
        if one is None:
            raise LabError(f"{self.file}: {where}: no command for target {self.target}")
        typed = self.text(one.command, f"{where}.command", extra)
        user = self.text(one.user, f"{where}.user", extra)
        users = {self.ctx["admin"], *self.scenario.model.users.names}
        if user and (not re.match(sc.USER, user) or user not in users):
            raise LabError(f"{self.file}: {where}.user: {user!r} (as rendered) is not a user of the scenario "
                           f"({', '.join(sorted(users))})")
        pam = self.text(one.pam, f"{where}.pam", extra)
        properties = tuple(self.text(p, f"{where}.properties[{i}]", extra) for i, p in enumerate(one.properties))
        shown, run, channel = wrap(typed, one.via, user, self.lab.name, pam, properties)
        return PlannedCommand(shown=shown, run=run, channel=channel, user=user or self.ctx["admin"], via=one.via,
                              title=self.text(one.title, f"{where}.title", extra),
                              why=self.text(one.why, f"{where}.why", extra), typed=typed, source=f"{where}.command")

    def attempt(self, t: sc.Try, tid: str, where: str, baseline: sc.Baseline, kind: str) -> PlannedTry:
        """The try t planned for this target: tid its id ("baseline" or the fix's id), where its key path
        (e.g. "fixes[f1]"), kind baseline, variant, control or fix; baseline's start is used when t has
        none. Its texts are rendered with {"fix": {"id": tid, "vars": t.vars}}. Raises LabError (as text,
        script and command do)."""
        fix_ctx = {"fix": {"id": tid, "vars": t.vars}}
        start = t.start if t.start is not None else baseline.start
        start_where = f"{where}.start" if t.start is not None else "baseline.start"
        expected = sc.expected(t, self.target)
        outcome = self.scenario.model.outcomes.get(expected)
        timeout = sc.per_target(t.timeout, self.target, None)
        return PlannedTry(
            id=tid, title=self.text(t.title, f"{where}.title", fix_ctx), why=self.text(t.why, f"{where}.why", fix_ctx),
            expected=expected, failure=bool(outcome and outcome.failure),
            signatures=tuple(self.text(p, f"{where}.signature", fix_ctx) for p in sc.signatures(t, self.target)),
            start=self.command(start, start_where, fix_ctx),
            apply=self.script(getattr(t, "apply", ""), f"{where}.apply", fix_ctx),
            revert=self.script(getattr(t, "revert", ""), f"{where}.revert", fix_ctx),
            kind=kind, exit=sc.exit_codes(sc.per_target(t.exit, self.target, "any")),
            waits=tuple(PlannedWait(command=self.text(w.command, f"{where}.wait.command", fix_ctx),
                                    until=self.text(w.until, f"{where}.wait.until", fix_ctx), seconds=w.seconds,
                                    every=w.every, title=self.text(w.title, f"{where}.wait.title", fix_ctx))
                        for w in sc.waits(t, self.target)),
            timeout=timeout,
        )

    def rule(self, rule: sc.Rule, where: str) -> dict[str, Any]:
        """An observe rule with its regexes rendered (a regex that does not compile is a LabError)."""
        out: dict[str, Any] = {"outcome": rule.outcome}
        for part in ("when", "unless"):
            out[part] = {}
            for field_name, regex in getattr(rule, part).items():
                text = self.text(regex, f"{where}.{part}.{field_name}")
                try:
                    re.compile(text)
                except re.error as exc:
                    raise LabError(f"{self.file}: {where}.{part}.{field_name}: regex {text!r} (as rendered) does "
                                   f"not compile: {exc}") from None
                out[part][field_name] = text
        return out


def plan(lab: Lab, facts: LabFacts) -> Plan:
    """Render the lab's scenario for its target; LabError names the key path of a bad template."""
    r = Renderer(lab, facts)
    m = r.scenario.model
    spec = m.targets[r.target]
    by_target = isinstance(m.evidence, dict)
    evidence = []
    for i, ev in r.scenario.evidence_for(r.target):
        where = f"evidence.{r.target}[{i}]" if by_target else f"evidence[{i}]"
        commands = sc.per_target(ev.commands, r.target, []) or []
        evidence.append(PlannedEvidence(
            title=r.text(ev.title, f"{where}.title"), why=r.text(ev.why, f"{where}.why"),
            expect=str(sc.per_target(ev.expect, r.target, "same")),
            commands=tuple(r.command(c, f"{where}.commands[{j}]") for j, c in enumerate(commands))))
    kinds = {id(f): (kind, i) for kind, i, f in m.tries()}
    fixes = []
    for f in r.scenario.fixes_for(r.target):
        kind, i = kinds[id(f)]
        fixes.append(r.attempt(f, f.id, f"{'fixes' if kind == 'fix' else kind + 's'}[{f.id}]", m.baseline, kind))
    target = lab.target
    return Plan(
        scenario=m.id, title=r.text(m.title, "title"), explanation=r.text(m.explanation, "explanation"),
        sources=tuple(r.text(s, f"sources[{i}]") for i, s in enumerate(m.sources)), target=r.target,
        target_title=target.title, cgroup_layout=target.cgroup_layout,
        note=r.text(spec.note, f"targets.{r.target}.note"), admin=m.users.admin, users=m.users.names,
        versions=r.text(r.scenario.versions_for(r.target), "versions"), evidence=tuple(evidence),
        teardown=r.script(m.teardown, "teardown"), observe=r.script(m.observe.script, "observe.script"),
        rules=tuple(r.rule(rule, f"observe.rules[{i}]") for i, rule in enumerate(m.observe.rules)),
        outcomes={name: {**o.model_dump(), "words": r.text(o.words, f"outcomes.{name}.words")}
                  for name, o in m.outcomes.items()},
        baseline=r.attempt(m.baseline, "baseline", "baseline", m.baseline, "baseline"), fixes=tuple(fixes),
        isolation=m.isolation,
    )
