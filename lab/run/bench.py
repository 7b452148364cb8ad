"""lab.bench: where the time goes, as figures against goals (printed, never asserted): connection
cost per command, verify overhead over the guest's own work, snapshot reset vs destroy + up, up vs
the guest's own boot with up's phases, the fix matrix on one VM vs a fresh VM per fix, and (with
fresh) a box build from nothing + up + verify. Writes .lab/<name>/reports/bench.json."""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from lab.config.settings import Settings
from lab.core import paths
from lab.core.console import console
from lab.core.errors import VerifyFailed
from lab.host import libvirt, proc, tools
from lab.images.build import build
from lab.machine import lifecycle, phases
from lab.remote.shell import Shell
from lab.run.record import RunRecord
from lab.run.verdict import verdict
from lab.run.verify import verify

SSH_SAMPLES_VAGRANT = 5
SSH_SAMPLES_PARAMIKO = 30
RESETS = 3


def timed(fn: Callable[..., object], *args: object) -> tuple[float, object]:
    started = time.monotonic()
    value = fn(*args)
    return time.monotonic() - started, value


def vagrant_ssh_seconds(settings: Settings, samples: int) -> list[float]:
    lab = paths.lab_dir(settings.name)
    exe = tools.vagrant_exe()
    found = []
    for _ in range(samples):
        started = time.monotonic()
        proc.run([exe, "ssh", "-c", "true"], step="vagrant ssh -c true", timeout=120, cwd=lab.root)
        found.append(time.monotonic() - started)
    return found


def paramiko_seconds(settings: Settings, samples: int) -> tuple[list[float], list[float]]:
    """`true` over one connection: a new channel per command, and in verify's persistent shell."""
    with lifecycle.connect(settings) as remote:
        remote.run("true")  # connect outside the measurement
        per_channel = [remote.run("true").seconds for _ in range(samples)]
        shell = Shell(remote, as_root=False, user=settings.scenario_data.model.users.admin)
        try:
            shell.run("true")  # open the shell outside the measurement
            in_shell = [shell.run("true").seconds for _ in range(samples)]
        finally:
            shell.close()
    return per_channel, in_shell


def guest_boot_seconds(settings: Settings) -> float | None:
    """systemd-analyze's 'Startup finished ... = N s' inside the guest."""
    with lifecycle.connect(settings) as remote:
        out = remote.run("systemd-analyze 2>/dev/null | head -n 1").stdout
    m = re.search(r"=\s*(?:(\d+)min\s*)?([\d.]+)s", out)
    if not m:
        return None
    return int(m.group(1) or 0) * 60 + float(m.group(2))


def verify_figures(settings: Settings, only: tuple[str, ...] = (),
                   isolation: str = "") -> tuple[float, float, RunRecord]:
    """(wall seconds, sum of guest-side seconds, record) of one verify run ("" isolation: the scenario's)."""
    started = time.monotonic()
    rec = verify(settings, only=only, isolation=isolation)
    wall = time.monotonic() - started
    if not verdict(rec).ok:
        raise VerifyFailed("verify did not meet its expectations during the benchmark; see reports/latest/verify.json")
    guest = sum(s.guest_seconds or 0.0 for s in rec.steps)
    return wall, guest, rec


def run(settings: Settings, fresh: bool = False) -> dict:
    """Measure and print the figures; writes reports/bench.json. Brings the lab up if needed and
    destroys and re-creates it once (for destroy + up). fresh: first destroy the lab and rebuild
    its box from nothing (--force), timing build + up + verify. Returns the figures."""
    figures: dict = {"target": settings.target, "name": settings.name}
    console.rule("[bold]lab.bench[/]")
    if fresh:
        lifecycle.destroy(settings)
        began = time.monotonic()
        build(settings, force=True)
        figures["fresh_build_s"] = round(time.monotonic() - began, 2)
        lifecycle.up(settings)
        figures["fresh_up_s"] = round(time.monotonic() - began - figures["fresh_build_s"], 2)
        verify_figures(settings)
        figures["fresh_build_up_verify_s"] = round(time.monotonic() - began, 2)
    elif libvirt.domain_state(lifecycle.domain_name(settings)) != "running":
        lifecycle.up(settings)
    lifecycle.reset(settings)  # verify from the baseline, as after lab.up or lab.reset
    wall, guest, rec = verify_figures(settings)
    figures["verify_wall_s"] = round(wall, 2)
    figures["verify_guest_s"] = round(guest, 2)
    figures["verify_overhead"] = round((wall - guest) / guest, 4)
    figures["verify_commands"] = len(rec.steps)
    gaps = [st.seconds - (st.guest_seconds or 0.0) for st in rec.steps]
    figures["verify_per_command_overhead_s"] = round(statistics.median(gaps), 4)
    figures["verify_fixed_overhead_s"] = round(wall - guest - figures["verify_per_command_overhead_s"] * len(gaps), 2)
    figures["matrix_one_vm_s"] = round(wall, 2)
    fixes = len([t for t in rec.tries if t.kind == "fix"])

    v = vagrant_ssh_seconds(settings, SSH_SAMPLES_VAGRANT)
    per_channel, in_shell = paramiko_seconds(settings, SSH_SAMPLES_PARAMIKO)
    figures["vagrant_ssh_per_command_s"] = round(statistics.median(v), 4)
    figures["paramiko_per_command_s"] = round(statistics.median(in_shell), 4)
    figures["paramiko_channel_per_command_s"] = round(statistics.median(per_channel), 4)
    figures["ssh_speedup"] = round(figures["vagrant_ssh_per_command_s"] / figures["paramiko_per_command_s"], 1)

    resets = [lifecycle.reset(settings) for _ in range(RESETS)]
    figures["reset_s"] = round(statistics.median(resets), 2)
    figures["reset_method"] = "libvirt internal snapshot revert (disk + memory) until the admin's SSH answers"

    destroy_s, _ = timed(lifecycle.destroy, settings)
    up_s, _ = timed(lifecycle.up, settings)
    figures["destroy_s"] = round(destroy_s, 2)
    figures["up_cached_s"] = round(up_s, 2)
    figures["destroy_up_s"] = round(destroy_s + up_s, 2)
    figures["reset_speedup"] = round(figures["destroy_up_s"] / figures["reset_s"], 1)
    boot = guest_boot_seconds(settings)
    figures["guest_boot_s"] = boot
    figures["up_vs_boot"] = round(up_s / boot, 2) if boot else None
    figures["up_phases_s"] = (phases.load(paths.lab_dir(settings.name).root / lifecycle.UP_PHASES) or {}).get("phases")

    first_fix = next((t.id for t in rec.tries if t.kind == "fix"), "")
    one_wall = verify_figures(settings, only=(first_fix,))[0] if first_fix else 0.0
    per_fix_fresh = figures["destroy_up_s"] + one_wall
    figures["fresh_vm_per_fix_s"] = round(per_fix_fresh * (fixes + 1), 2)
    figures["fresh_vm_per_fix_method"] = (f"measured once (destroy + up + verify of one fix = {per_fix_fresh:.1f}s), "
                                          f"multiplied by {fixes + 1} (baseline + {fixes} fixes)")
    figures["matrix_speedup"] = round(figures["fresh_vm_per_fix_s"] / figures["matrix_one_vm_s"], 1)
    _write(settings, figures)
    _print(figures)
    return figures


# The goals of issue 13 (speed, round 2) and the earlier ones; a figure not measured has no verdict.
GOALS = {
    "verify_overhead": ("< 0.05", lambda f: f["verify_overhead"] < 0.05),
    "ssh_speedup": (">= 20x", lambda f: f["ssh_speedup"] >= 20),
    "reset_speedup": (">= 20x", lambda f: f["reset_speedup"] >= 20),
    "up_vs_boot": ("<= 1.3x", lambda f: f["up_vs_boot"] is not None and f["up_vs_boot"] <= 1.3),
    "matrix_speedup": (">= 3x", lambda f: f["matrix_speedup"] >= 3),
    "fresh_build_up_verify_s": ("< 180 s (plus setup.sh)", lambda f: f["fresh_build_up_verify_s"] < 180),
}


def _write(settings: Settings, figures: dict) -> Path:
    reports = paths.lab_dir(settings.name).reports
    reports.mkdir(parents=True, exist_ok=True)
    figures["goals"] = {k: {"goal": g, "met": bool(check(figures))} for k, (g, check) in GOALS.items()
                        if k in figures}
    path = reports / "bench.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    return path


def _print(figures: dict) -> None:
    from rich.table import Table

    table = Table(title=f"lab.bench {figures['target']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    for key, value in figures.items():
        if key in ("goals", "target", "name", "up_phases_s"):
            continue
        goal = figures["goals"].get(key)
        if goal is None:
            mark = ""
        else:
            mark = f"[green]{goal['goal']} met[/]" if goal["met"] else f"[red]{goal['goal']} not met[/]"
        table.add_row(key, str(value), mark)
    console.print(table)
    if figures.get("up_phases_s"):
        up = Table(title="where lab.up's time goes (seconds)")
        up.add_column("phase")
        up.add_column("s", justify="right")
        for name, seconds in figures["up_phases_s"]:
            up.add_row(name, f"{seconds:.2f}")
        console.print(up)
