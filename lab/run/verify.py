"""lab.verify at the top: resolve the lab once (its settings, facts, plan and testbed), take its
lock, run the engine, move the lifecycle state."""

from __future__ import annotations

from lab.config.settings import Settings
from lab.core import paths
from lab.machine import lifecycle, state
from lab.machine.resolve import resolve
from lab.machine.state import Phase
from lab.machine.testbed import VmTestbed
from lab.render.lab import facts_for_render
from lab.render.plan import Plan, plan
from lab.run import engine
from lab.run.record import RunRecord

ISOLATIONS = ("snapshot", "teardown")


def lab_plan(settings: Settings) -> Plan:
    """The scenario rendered for the lab, with the facts lab.up rendered the lab with."""
    return plan(resolve(settings), lifecycle.load_facts(paths.lab_dir(settings.name)))


def list_fixes(settings: Settings) -> list[tuple[str, str, str]]:
    """(id, title, expected outcome) of every fix of the scenario on the settings' target."""
    return engine.list_fixes(plan(resolve(settings), facts_for_render(settings.name)))


def verify(settings: Settings, only: tuple[str, ...] = (), step_mode: bool = False,
           publish: engine.Publish | None = None, start_from: str = "", keep_failing: bool = False,
           isolation: str = "") -> RunRecord:
    """Verify the lab of settings; its record (lab.run.verdict.verdict tells what it means).
    isolation: "" for the scenario's, else "snapshot" or "teardown".

    Raises LabError for an unknown fix or isolation (before anything runs), LabBusy when another
    command holds the lab, TestbedError when the VM cannot be reached or reverted."""
    from lab.core.errors import SettingError

    if isolation and isolation not in ISOLATIONS:
        raise SettingError("isolation", isolation, " or ".join(ISOLATIONS), "--isolation")
    lab = paths.lab_dir(settings.name)
    for fix_id in (*only, *([start_from] if start_from else [])):
        settings.scenario_data.fix(settings.target, fix_id)  # an unknown fix is refused before anything
    with state.locked(lab, "verify"):
        state.require(lab, "verify", *state.READY)
        lifecycle.require_running(settings)
        p = lab_plan(settings)
        options = engine.Options(only=only or settings.fixes, step_mode=step_mode, start_from=start_from,
                                 keep_failing=keep_failing, isolation=isolation or p.isolation,
                                 command_timeout=settings.command_timeout, ssh_timeout=settings.ssh_timeout,
                                 keep_reports=settings.keep_reports)
        rec = engine.run(VmTestbed(settings), p, lab, lifecycle.load_facts(lab).provider, options, publish)
        state.advance(lab, Phase.VERIFIED, "verify")
        return rec
