"""invoke tasks: a thin shell over lab/. Parse flags, call one function, turn LabError into one
red line and a non-zero exit code (2 for usage errors, 1 when verification fails)."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from invoke import Collection, Exit, task

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import console
from lab.errors import LabError

FLAG_HELP = {
    "target": "target to use: trusty, bookworm or bookworm-unified (lab.toml: target)",
    "provider": "virtualbox, libvirt or auto (lab.toml: provider)",
    "name": "lab name, default the target's name; state lives in .lab/NAME/",
    "config": "settings file to read instead of ./lab.toml",
    "verbose": "print every line the tools print",
}


def flags(*keys: str, **extra: str) -> dict[str, str]:
    """The help texts of the named shared flags plus task-specific ones."""
    return {**{k: FLAG_HELP[k] for k in keys}, **extra}


LAB_FLAGS = ("target", "provider", "name", "config")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """LabError -> one red line and its exit code; Ctrl-C or SIGTERM -> exit 130 after cleanup ran.

    SIGINT and SIGTERM are handled explicitly: a shell starts background jobs with SIGINT ignored,
    and Python's default SIGTERM would exit without stopping the Vagrant or Packer we started."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signal.signal(signal.SIGINT, _interrupted)
        signal.signal(signal.SIGTERM, _interrupted)
        try:
            return fn(*args, **kwargs)
        except LabError as exc:
            console.error(exc.message)
            if exc.hint:
                console.err_console.print(f"  [dim]hint: {exc.hint}[/]")
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            console.error("interrupted; what was started has been stopped")
            raise Exit(code=130) from None

    return wrapper


def _settings(target: str | None = None, provider: str | None = None, name: str | None = None,
              config: str | None = None) -> Any:
    from lab import settings

    return settings.load(config=Path(config) if config else None,
                         flags={"target": target, "provider": provider, "name": name})


def _existing(target: str | None, name: str | None) -> Any:
    """The lab to act on: --name, else the default name of --target, else the last one brought up."""
    from lab import lifecycle, settings

    if name is None and target is not None:
        name = settings.CHECKS["target"]("target", target, "--target")  # a target's default lab name is its own
    if name is not None:
        settings.CHECKS["name"]("name", name, "--name")
    return lifecycle.load_lab(name)


@task(help=flags(*LAB_FLAGS, out="directory to write into (default .lab/NAME/)"))
@guarded
def render(c, target=None, provider=None, name=None, config=None, out=None):
    """Write the Vagrantfile and provisioning scripts for a lab, without starting anything."""
    from lab import lifecycle

    s = _settings(target, provider, name, config)
    where = lifecycle.render_lab(s, Path(out) if out else None)
    console.info(f"[green]✓[/] rendered lab {s.name} (target {s.target}) into {where}")


@task(help=flags(*LAB_FLAGS))
@guarded
def doctor(c, target=None, provider=None, name=None, config=None):
    """Check the host tools the chosen target needs, with an install hint for each missing one."""
    from lab import doctor as doc

    s = _settings(target, provider, name, config)
    if not doc.report(s):
        raise Exit(code=1)


@task(help=flags(*LAB_FLAGS, "verbose", force="rebuild even when the cache has the box"))
@guarded
def build(c, target=None, provider=None, name=None, config=None, force=False, verbose=False):
    """Build the target's base box (mmdebstrap + Packer, or Packer from the ISO) into the cache."""
    from lab import build as b

    b.build(_settings(target, provider, name, config), force=force, verbose=verbose)


@task(help=flags(*LAB_FLAGS, "verbose", rebuild="rebuild the box even when it is cached"))
@guarded
def up(c, target=None, provider=None, name=None, config=None, verbose=False, rebuild=False):
    """Build the box if needed, bring the VM up and provision it; later tasks act on this lab."""
    from lab import lifecycle

    lifecycle.up(_settings(target, provider, name, config), verbose=verbose, force_build=rebuild)


@task(iterable=["fix"], help={"target": "act on the lab of this target", "name": "act on this lab",
                              "fix": "run only this fix (repeatable)", "list_fixes": "list the target's fixes",
                              "step": "pause before each step (Enter goes on, q stops and restores)"})
@guarded
def verify(c, target=None, name=None, fix=None, list_fixes=False, step=False):
    """Show the inherited cgroups, reproduce the failure, try each fix, restore the baseline, report."""
    from lab import verify as v

    s = _existing(target, name)
    if list_fixes:
        v.list_fixes(s)
        return
    if not v.run(s, only=tuple(fix or ()), step_mode=step):
        raise Exit(code=1)


@task(help={"target": "the lab of this target", "name": "this lab"})
@guarded
def status(c, target=None, name=None):
    """Show the lab's VM, domain and Vagrant state."""
    from lab import lifecycle

    for key, value in lifecycle.status(_existing(target, name)).items():
        console.info(f"{key:>9}: {value}")


@task(help={"target": "the lab of this target", "name": "this lab", "command": "run this instead of a shell"})
@guarded
def ssh(c, target=None, name=None, command=None):
    """Open an SSH session as the lab's admin (the way the bug's user logged in)."""
    from lab import lifecycle

    lifecycle.ssh(_existing(target, name), command)


@task(help={"target": "the lab of this target", "name": "this lab"})
@guarded
def destroy(c, target=None, name=None):
    """Remove the lab's VM, its volumes and its network; running it twice is fine."""
    from lab import lifecycle, paths

    try:
        s = _existing(target, name)
    except LabError:
        if name is None and target is None:
            console.info("no lab to destroy")
            return
        from lab import settings

        s = settings.load(flags={"target": target, "name": name})
    removed = lifecycle.destroy(s)
    console.info(f"[green]✓[/] lab {s.name} destroyed" + (f": {', '.join(removed)}" if removed else ""))
    if paths.state_root().joinpath(paths.CURRENT).exists() and paths.current_name() == s.name:
        paths.state_root().joinpath(paths.CURRENT).unlink()


@task(help={"target": "the lab of this target", "name": "this lab"})
@guarded
def reset(c, target=None, name=None):
    """Return the lab to its freshly provisioned state from a snapshot (seconds, not a rebuild)."""
    from lab import lifecycle

    seconds = lifecycle.reset(_existing(target, name))
    console.info(f"[green]✓[/] lab reset to its baseline snapshot in {seconds:.1f}s")


@task(help=flags(*LAB_FLAGS))
@guarded
def bench(c, target=None, provider=None, name=None, config=None):
    """Measure connection cost, verify overhead, reset vs destroy+up, boot vs up; print the figures."""
    from lab import bench as b

    b.run(_settings(target, provider, name, config))


@task(help={"target": "the lab of this target", "name": "this lab",
            "format": "md, junit, json or cast (default: all)"})
@guarded
def report(c, target=None, name=None, format=None):
    """Re-render the reports of the last verify run from verify.json, without a VM."""
    from lab.report import write_reports

    s = _existing(target, name)
    for path in write_reports(s.name, formats=(format,) if format else None):
        console.info(f"[green]✓[/] {path}")


lab = Collection("lab", render, doctor, build, up, verify, reset, bench, status, ssh, destroy, report)
ns = Collection(lab)
