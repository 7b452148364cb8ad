"""The lab's tasks: a thin shell over lab/. Parse flags, call one function, turn a LabError into one
red line and its exit code (README, "Exit codes"). One collection, run two ways: `invoke lab.up` in a
checkout (tasks/__init__.py re-exports `ns`) and the installed `cgroup-lab up` (lab.cli.main)."""

from __future__ import annotations

import errno
import functools
import shlex
import shutil
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke import Collection, Exit, Task, task
from invoke.parser import ParserContext
from rich.markup import escape

from lab.config.settings import HELP
from lab.core import console
from lab.core.errors import LabError, TestbedError, user_path

# A settings key's flag help is declared with the key (lab.config.settings.HELP); these are the rest.
FLAG_HELP = {
    **HELP,
    "config": "settings file to read instead of ./lab.toml",
    "verbose": "print every line the tools print",
}


def flags(*keys: str, **extra: str) -> dict[str, str]:
    """The help texts of the named shared flags plus task-specific ones."""
    return {**{k: FLAG_HELP[k] for k in keys}, **extra}


LAB_FLAGS = ("target", "scenario", "provider", "name", "config", "libvirt_uri")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """LabError -> one red line per problem and its exit code (README, "Exit codes"); any other
    OSError -> exit 3 naming what failed where (a path the user gave was already turned into a
    LabError, exit 2, by errors.user_path); Ctrl-C or SIGTERM -> exit 130 after the cleanup ran.

    SIGINT and SIGTERM are handled explicitly: a shell starts background jobs with SIGINT ignored,
    and Python's default SIGTERM would exit without stopping the Vagrant or Packer we started."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signal.signal(signal.SIGINT, _interrupted)
        signal.signal(signal.SIGTERM, _interrupted)
        try:
            return fn(*args, **kwargs)
        except LabError as exc:
            problems = getattr(exc, "problems", None)
            for line in [str(p) for p in problems] if problems else [exc.message]:
                console.error(line)
            if exc.hint:
                # one line however long (a command to copy must not be wrapped), no markup from the hint
                console.err_console.print(f"  [dim]hint: {escape(exc.hint)}[/]", soft_wrap=True)
            raise Exit(code=exc.exit_code) from None
        except OSError as exc:  # the machine, not the input: a full disk, an I/O error, a file gone
            error = machine_failed(exc)
            console.error(error.message)
            console.err_console.print(f"  [dim]hint: {error.hint}[/]")
            raise Exit(code=error.exit_code) from None
        except KeyboardInterrupt:
            console.error("interrupted; the processes this command started were stopped")
            raise Exit(code=130) from None

    return wrapper


def machine_failed(exc: OSError) -> TestbedError:
    """The TestbedError (exit 3) for an OSError of the machinery: what failed, on which file, in
    which of the tool's functions, and what to do (for a full disk: free space there)."""
    where = f": {exc.filename}" if exc.filename else ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/lab/" in f.filename]
    during = f" (in {Path(frames[-1].filename).name}:{frames[-1].lineno}, {frames[-1].name})" if frames else ""
    if exc.errno == errno.ENOSPC:
        hint = f"the disk is full: free space on the file system of {exc.filename or 'the lab or the cache'}, then " \
               "run the command again"
    else:
        hint = "the machine failed, not the settings; fix what the message names, then run the command again"
    return TestbedError(f"{exc.strerror or exc}{where}{during}", hint=hint)


def _settings(target: str | None = None, scenario: str | None = None, provider: str | None = None,
              name: str | None = None, config: str | None = None, libvirt_uri: str | None = None) -> Any:
    from lab.config import settings

    return settings.load(config=Path(config) if config else None,
                         flags={"target": target, "scenario": scenario, "provider": provider, "name": name,
                                "libvirt_uri": libvirt_uri})


def _lab_name(target: str | None, name: str | None, scenario: str | None,
              config: str | None = None) -> tuple[str | None, Any]:
    """(--name, else the default name of --target and --scenario, else None for the lab brought up
    last; the settings of lab.toml, LAB_* and those flags, checked for every task)."""
    from lab.config import settings

    chosen = _settings(target=target, scenario=scenario, config=config)
    if name is None and (target is not None or scenario is not None):
        name = chosen.name
    if name is not None:
        settings.CHECKS["name"]("name", name, "--name")
    return name, chosen


def _now(target: str | None = None, scenario: str | None = None, config: str | None = None, **flags: Any) -> Any:
    """The keys set now (lab.toml or --config, LAB_*, these flags), each with where it came from."""
    from lab.config import settings

    return settings.given(config=Path(config) if config else None,
                          flags={"target": target, "scenario": scenario, **flags})


def _existing(target: str | None, name: str | None, scenario: str | None = None, config: str | None = None) -> Any:
    """The lab to act on (--name, else the default name of --target and --scenario, else the one
    brought up last in this checkout), with what lab.up froze and the run-time keys given now; a
    VM key given now with another value is refused (exit 2, naming both values and lab.destroy)."""
    from lab.machine import lifecycle

    name, _ = _lab_name(target, name, scenario, config)
    return lifecycle.load_lab(name, now=_now(target, scenario, config))


def _any_lab(target: str | None, name: str | None, scenario: str | None, set_aside: bool,
             config: str | None = None) -> tuple[Any, list[str]]:
    """_existing() for lab.status and lab.destroy, which work whatever state the lab is in
    (lifecycle.salvage_lab): (settings, notes on what was wrong)."""
    from lab.core import paths
    from lab.machine import lifecycle

    name, chosen = _lab_name(target, name, scenario, config)
    name = name or paths.current_name()
    if not set_aside and not paths.lab_dir(name).root.is_dir():
        lifecycle.load_lab(name)  # says it was never brought up here
    return lifecycle.salvage_lab(name, chosen, set_aside)


@task(help=flags(*LAB_FLAGS, out="directory to write into (default .lab/NAME/)"))
@guarded
def render(c, target=None, scenario=None, provider=None, name=None, config=None, libvirt_uri=None, out=None):
    """Write the Vagrantfile and every script of a lab, without starting anything."""
    from lab.machine import lifecycle

    s = _settings(target, scenario, provider, name, config, libvirt_uri)
    with user_path("--out", Path(out or ".")):
        where = lifecycle.render_lab(s, Path(out) if out else None)
    console.info(f"[green]✓[/] rendered lab {s.name} (scenario {s.scenario_data.id}, target {s.target}) into {where}")


@task(help=flags(*LAB_FLAGS))
@guarded
def doctor(c, target=None, scenario=None, provider=None, name=None, config=None, libvirt_uri=None):
    """Check the host tools the chosen target needs, with an install hint for each missing one."""
    from lab.machine import doctor as doc

    if not doc.report(_settings(target, scenario, provider, name, config, libvirt_uri)):
        raise Exit(code=1)


KEEP_FAILING_BUILD = ("leave the build VM running when a provisioning script fails, and print how to get a "
                      "shell in it (lab.destroy or the next build removes it)")


@task(help=flags(*LAB_FLAGS, "verbose", force="rebuild even when the cache has the images",
                 keep_failing=KEEP_FAILING_BUILD))
@guarded
def build(c, target=None, scenario=None, provider=None, name=None, config=None, libvirt_uri=None, force=False,
          verbose=False, keep_failing=False):
    """Build what the lab starts from: the target's base image and the scenario's layer (or the ISO box)."""
    from lab.host import proc
    from lab.images.build import build as build_images
    from lab.machine.resolve import resolve

    proc.set_verbose(verbose)
    build_images(resolve(_settings(target, scenario, provider, name, config, libvirt_uri)), force=force,
                 verbose=verbose, keep_failing=keep_failing)


@task(help=flags(*LAB_FLAGS, "verbose", rebuild="rebuild the images even when they are cached",
                 keep_failing=KEEP_FAILING_BUILD))
@guarded
def up(c, target=None, scenario=None, provider=None, name=None, config=None, libvirt_uri=None, verbose=False,
       rebuild=False, keep_failing=False):
    """Check the scenario, build its images if needed, start the lab from them, take the baseline."""
    from lab.host import proc
    from lab.machine import lifecycle
    from lab.render.check import check

    proc.set_verbose(verbose)
    s = _settings(target, scenario, provider, name, config, libvirt_uri)
    now = _now(target, scenario, provider=provider, name=name, libvirt_uri=libvirt_uri, config=config)
    was_up = lifecycle.hold_settings(s.name, now)
    notes: list[str] = []
    _, problems = check(s.scenario, targets=(s.target,), shellcheck=shutil.which("shellcheck") is not None,
                        mirror=s.debian_mirror, notes=notes)
    for line in notes:
        console.info(f"[yellow]note: {line}[/]")
    if problems:
        for line in problems:
            console.error(line)
        raise Exit(code=2)
    lifecycle.up(s, verbose=verbose, force_build=rebuild, keep_failing=keep_failing)
    if not was_up:
        lifecycle.record_given(s.name, now)


@task(iterable=["fix"], help={"target": "act on the lab of this target", "scenario": "... and this scenario",
                              "name": "act on this lab",
                              "fix": "run only this fix; repeat it for several (--fix a --fix b)",
                              "list_fixes": "list the scenario's fixes on the lab's target",
                              "step": "pause before each try (Enter or space goes on, q stops and restores)",
                              "from": "start at this fix, after the evidence (a demo resumed)",
                              "keep_failing": "stop at the first unmet expectation, left as it failed",
                              "isolation": "snapshot (every try from the baseline snapshot) or teardown (the "
                                           "scenario's teardown and reverts between tries); default: the scenario's",
                              "config": FLAG_HELP["config"]})
@guarded
def verify(c, target=None, scenario=None, name=None, fix=None, list_fixes=False, step=False, from_=None,
           keep_failing=False, isolation=None, config=None):
    """Show the evidence, reproduce the bug, try each fix, restore the baseline, write the reports."""
    from lab.report import write_reports
    from lab.run import verify as v
    from lab.run.verdict import verdict

    s = _existing(target, name, scenario, config)
    if list_fixes:
        console.info(f"[bold]{s.scenario_data.id}[/] on {s.target} — fixes (expected outcome):")
        for fix_id, title, expected in v.list_fixes(s):
            console.info(f"  [cyan]{fix_id:<14}[/] {title}  [dim]→ {expected}[/]")
        return
    rec = v.verify(s, only=tuple(fix or ()), step_mode=step, publish=write_reports, start_from=from_ or "",
                   keep_failing=keep_failing, isolation=isolation or "")
    if not verdict(rec).ok:
        raise Exit(code=1)


@task(help={"target": "the lab of this target", "scenario": "... and this scenario", "name": "this lab",
            "config": FLAG_HELP["config"]})
@guarded
def status(c, target=None, scenario=None, name=None, config=None):
    """Show the lab's scenario, what its state.json says next to what libvirt and Vagrant say."""
    from lab.config import settings
    from lab.machine import lifecycle

    s, notes = _any_lab(target, name, scenario, set_aside=False, config=config)
    for key, value in lifecycle.status(s).items():
        console.info(f"{key:>9}: {value}")
    for note in notes:
        console.info(f"[yellow]{'settings':>9}: {note}[/]")
    changes = settings.frozen_changes(s, _now(target, scenario), lifecycle.given_at_up(s.name)) if not notes else []
    for key, source, frozen, now in changes:
        console.info(f"[yellow]{'changed':>9}: {key} is {now!r} in {source}, but the lab was brought up with "
                     f"{frozen!r}: lab.destroy, then lab.up, to apply it[/]")


@task(help={"target": "the lab of this target", "scenario": "... and this scenario", "name": "this lab",
            "config": FLAG_HELP["config"],
            "command": "run this instead of a shell"})
@guarded
def ssh(c, target=None, scenario=None, name=None, command=None, config=None):
    """Open an SSH session as the lab's admin (the way the bug's user logged in)."""
    from lab.machine import lifecycle

    lifecycle.ssh(_existing(target, name, scenario, config), command)


@task(help={"target": "the lab of this target", "scenario": "... and this scenario", "name": "this lab",
            "config": FLAG_HELP["config"]})
@guarded
def destroy(c, target=None, scenario=None, name=None, config=None):
    """Remove the lab's VM, its volumes and its network; running it twice is fine."""
    from lab.core import paths
    from lab.machine import lifecycle

    if name is None and target is None and scenario is None and not (paths.state_root() / paths.CURRENT).exists():
        console.info("no lab to destroy")
        return
    s, notes = _any_lab(target, name, scenario, set_aside=True, config=config)
    root = paths.lab_dir(s.name).root
    existed = root.is_dir()
    for note in notes if existed else ():
        console.info(f"[yellow]{note}; destroying lab {s.name} on {s.libvirt_uri} all the same[/]")
    removed = lifecycle.destroy(s)
    if not existed:  # what destroy made (its lock) goes; a lab whose folder was deleted by hand was still looked for
        shutil.rmtree(root, ignore_errors=True)
        if not removed:
            console.info(f"no lab {s.name} here nor on {s.libvirt_uri}: nothing to destroy")
            return
    console.info(f"[green]✓[/] lab {s.name} destroyed" + (f": {', '.join(removed)}" if removed else ""))
    if paths.state_root().joinpath(paths.CURRENT).exists() and paths.current_name() == s.name:
        paths.state_root().joinpath(paths.CURRENT).unlink()


@task(help={"target": "the lab of this target", "scenario": "... and this scenario", "name": "this lab",
            "config": FLAG_HELP["config"]})
@guarded
def reset(c, target=None, scenario=None, name=None, config=None):
    """Return the lab to its freshly provisioned state from its baseline snapshot (seconds)."""
    from lab.machine import lifecycle

    done = lifecycle.reset(_existing(target, name, scenario, config))
    console.info(f"[green]✓[/] lab reset to its baseline snapshot in {done.seconds:.1f}s ({done.method} "
                 f"{done.revert_s:.2f}s, first command in the {done.via} {done.first_command_s:.2f}s, proven by "
                 f"its {done.proof} {done.fingerprint_s:.2f}s)")


@task(help=flags(*LAB_FLAGS, fresh="first rebuild the images from nothing and time build + up + verify (~3 min)",
                 matrix="also time lab.matrix of the scenario over its Debian targets with --jobs 1 (~3-5 min)"))
@guarded
def bench(c, target=None, scenario=None, provider=None, name=None, fresh=False, config=None, libvirt_uri=None,
          matrix=False):
    """Measure up from a cached image, reset, edit-and-retry, verify overhead, connection cost; print the figures."""
    from lab.machine.resolve import use_libvirt
    from lab.run import bench as b

    s = _settings(target, scenario, provider, name, config, libvirt_uri)
    use_libvirt(s)
    b.run(s, fresh=fresh, matrix=matrix)


@task(help={"target": "the lab of this target", "scenario": "... and this scenario", "name": "this lab",
            "config": FLAG_HELP["config"],
            "format": "md, junit, json, cast or html (default: all)",
            "run": "a run directory name (default: latest)"})
@guarded
def report(c, target=None, scenario=None, name=None, format=None, run=None, config=None):
    """Re-render the reports of a verify run from its verify.json, without a VM."""
    from lab.core import paths
    from lab.report import latest_run, write_reports

    s = _existing(target, name, scenario, config)
    where = paths.lab_dir(s.name).reports / run if run else latest_run(s.name)
    for path in write_reports(where, formats=(format,) if format else None):
        console.info(f"[green]✓[/] {path}")


class KeepsHelpFlag(Task):
    """A task none of whose flags takes the short form -h, which stays invoke's per-task help."""

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        """invoke's Argument options for the flag of parameter name (default: its default value),
        computed as if "h" were among taken_names, so no flag is given the short form -h. Overrides
        invoke's Task.arg_opts (not a documented extension point; pyproject.toml bounds invoke <4)."""
        return super().arg_opts(name, default, taken_names | {"h"})


@task(klass=KeepsHelpFlag,
      help={"scenario": FLAG_HELP["scenario"], "targets": "comma-separated targets (default: all of the scenario's)",
            "keep": "keep the labs the matrix brought up",
            "jobs": "labs to run at once (1-8; each is a VM: 2 fit a 2-core host; with --hosts: one per host)",
            "config": FLAG_HELP["config"], "libvirt_uri": FLAG_HELP["libvirt_uri"],
            "hosts": "comma-separated libvirt URIs to spread the labs over (each host runs as many at once as it "
                     "has room for)"})
@guarded
def matrix(c, scenario=None, targets=None, keep=False, jobs=None, config=None, libvirt_uri=None, hosts=None):
    """Run one scenario over several targets: up, verify, destroy each; one combined report."""
    from lab.report import write_reports
    from lab.report.matrix import write_matrix_reports
    from lab.run import matrix as m
    from lab.run.hosts import parse as parse_hosts

    base = _settings(scenario=scenario, config=config, libvirt_uri=libvirt_uri,
                     target=(targets.split(",")[0].strip() if targets else None))
    wanted = tuple(t.strip() for t in targets.split(",") if t.strip()) if targets else base.scenario_data.target_names
    spread = parse_hosts(hosts) if hosts is not None else ()
    at_once = _jobs(jobs) if jobs is not None else min(len(spread), m.MAX_JOBS) if spread else 1
    if not m.run(base, wanted, keep=keep, publish_run=write_reports, publish=write_matrix_reports, jobs=at_once,
                 hosts=spread):
        raise Exit(code=1)


def _jobs(text: str) -> int:
    """--jobs as a number; anything else is a usage error (exit 2)."""
    from lab.core.errors import SettingError

    try:
        return int(text)
    except ValueError:
        raise SettingError("jobs", text, "a whole number from 1 to 8", "--jobs") from None


@task
@guarded
def scenarios(c):
    """Every shipped scenario: its title, targets and fixes."""
    from lab.config import scenario as sc

    for sid in sc.shipped():
        s = sc.load(sid)
        default = "  [dim](default)[/]" if sid == sc.DEFAULT_SCENARIO else ""
        console.info(f"[bold cyan]{sid}[/]  {escape(_title(s))}{default}")
        for target in s.target_names:
            fixes = ", ".join(f.id if s.kind(f) == "fix" else f"{f.id} ({s.kind(f)})"
                              for f in s.fixes_for(target)) or "no fixes"
            console.info(f"   ↳ {target}: {fixes}")


def _title(s: Any) -> str:
    """A scenario's title rendered as verify renders it (render.lab.context, for its first target);
    the text as written when it needs more than a lab's context."""
    from lab.config.resolved import Lab
    from lab.config.settings import Settings
    from lab.render.lab import context, facts_for_render
    from lab.render.templates import render_string, scenario_environment

    lab = Lab.of(Settings(target=s.target_names[0], scenario=str(s.folder), name=s.id), "libvirt", scenario=s)
    try:
        return render_string(scenario_environment(s.folder), s.model.title, context(lab, facts_for_render(lab.name)),
                             f"{s.file}: title")
    except LabError:
        return str(s.model.title)


@task(help={"scenario": "a shipped scenario id or a folder (default: the settings' scenario)",
            "target": "check for this target only (default: every target of the scenario)",
            "config": FLAG_HELP["config"]})
@guarded
def check(c, scenario=None, target=None, config=None):
    """Validate a scenario before any VM exists: schema, templates for every target, shellcheck."""
    from lab.render.check import check as run_check

    settings = _settings(config=config)
    ref = scenario or settings.scenario
    notes: list[str] = []
    found, problems = run_check(ref, targets=(target,) if target else (), mirror=settings.debian_mirror, notes=notes)
    for line in notes:
        console.info(f"[yellow]note: {line}[/]")
    for line in problems:
        console.error(line)
    if problems:
        raise Exit(code=2)
    assert found is not None
    console.info(f"[green]✓[/] scenario {found.id} ({found.folder}) is fine on "
                 f"{', '.join((target,) if target else found.target_names)}")


@task(help={"path": "the folder to create: must not exist, the folder above it must"})
@guarded
def new(c, path):
    """Scaffold a commented scenario folder that checks and verifies on bookworm as it is."""
    from lab.config.scaffold import scaffold

    with user_path("PATH", Path(path)):
        where, sid = scaffold(Path(path))
    console.info(f"[green]✓[/] scenario {sid} created in {where}\n"
                 f"next: edit {where / 'scenario.toml'}, then\n"
                 f"  invoke lab.check --scenario {where}\n"
                 f"  invoke lab.up --scenario {where} --target bookworm lab.verify")


@task(help={"yes": "remove them (without it: only show what would be removed, what stays and why)",
            "libvirt_uri": FLAG_HELP["libvirt_uri"], "config": FLAG_HELP["config"]})
@guarded
def prune(c, yes=False, libvirt_uri=None, config=None):
    """List this tool's cached images (bases, saved states, layers), what nothing uses; --yes removes those."""
    from lab.machine import prune as p
    from lab.machine.resolve import use_libvirt

    use_libvirt(_settings(config=config, libvirt_uri=libvirt_uri))
    again = "".join(f" --{flag} {shlex.quote(value)}" for flag, value in (("config", config),
                                                                          ("libvirt-uri", libvirt_uri)) if value)
    p.run(yes, flags=again)


@task(name="list", help={"json": "print the labs as a JSON list (one object per lab) instead of a table"})
@guarded
def list_(c, json=False):
    """Every lab of this directory: scenario, target, libvirt host, state (libvirt's), last verdict and when."""
    import json as jsonlib

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from lab.core import paths
    from lab.run import inventory

    _settings()  # lab.toml and LAB_* are checked for every task
    labs = inventory.rows()
    if json:
        print(jsonlib.dumps([row.as_dict() for row in labs], indent=2))
        return
    if not labs:
        console.info(f"no labs in {paths.state_root()} (bring one up with: invoke lab.up)")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("lab", "scenario", "target", "libvirt host", "domain", "phase", "last verify", "at (UTC)"):
        table.add_column(column, no_wrap=True)
    for row in labs:
        table.add_row(*(escape(cell) for cell in (row.name, row.scenario, row.target, row.host, row.domain, row.phase,
                                                  row.verdict or "none", row.verified_at)))
    wide = Console(highlight=False, width=max(console.console.width, 400))  # a row per line, even in a pipe
    with wide.capture() as text:
        wide.print(table)
    console.console.out("\n".join(line.rstrip() for line in text.get().splitlines()), highlight=False)


# The value a repeatable flag (a task's `iterable`) takes, as its --help shows it. invoke shows STRING
# or INT after a flag with one value and nothing after a repeatable one, which then reads like a switch.
PLACEHOLDERS = {"fix": "ID"}
_invokes_help_for = ParserContext.help_for


def help_for(context: ParserContext, flag: str) -> tuple[str, str]:
    """(a flag's names, its help) for --help, as invoke's ParserContext.help_for gives them, but a
    repeatable flag's names with its value's placeholder (PLACEHOLDERS, else VALUE): `-f ID, --fix=ID`
    where invoke shows `-f, --fix`.

    Put in place of invoke's method (below): `invoke lab.verify` parses with invoke's own Program, which
    builds the plain ParserContext of each task from a plain copy of our collection, so no subclass of
    ours would be used; pyproject.toml bounds invoke <4."""
    names, text = _invokes_help_for(context, flag)
    arg = context.flags[flag]
    if arg.kind is list:
        holder = PLACEHOLDERS.get(arg.name, "VALUE")
        names = ", ".join(sorted((f"{n} {holder}" if len(n.strip("-")) == 1 else f"{n}={holder}"
                                  for n in context.names_for(flag)), key=len))
    return names, text


ParserContext.help_for = help_for  # type: ignore[method-assign]

lab = Collection("lab", render, doctor, build, up, verify, reset, bench, status, ssh, destroy, report,
                 scenarios, check, new, matrix, list_, prune)
ns = Collection(lab)
