"""lab.matrix: one scenario over several targets. For each target: bring its lab up (or use it when
it is up), verify, destroy it unless kept; a target that cannot be built here is "not run" with its
reason. Then one combined record (matrix.json) in its own directory, rendered by lab.report.matrix."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from lab.config.settings import Settings
from lab.config.targets import get_target
from lab.core import console, paths
from lab.core.errors import LabError
from lab.core.files import write_files
from lab.machine import lifecycle, state
from lab.run import engine, record

MATRIX_DIR = "matrix"


def matrix_root(scenario_id: str, project_dir: Path | None = None) -> Path:
    """.lab/matrix/<scenario>/: one directory per matrix run, and `latest`."""
    return paths.state_root(project_dir) / MATRIX_DIR / scenario_id


def _why_not(settings: Settings) -> str:
    target = settings.target_data
    if settings.box or target.buildable_here:
        return ""
    return target.why_not or f"target {target.name} cannot be built on this host"


def _cell(settings: Settings, rec: dict) -> dict:
    tries = [rec.get("baseline"), *rec.get("fixes", []), rec.get("baseline_restored")]
    return {"status": "ran" if record.complete(rec) else "error", "ok": bool(rec.get("ok")),
            "error": rec.get("error"), "run_dir": str(paths.lab_dir(settings.name).reports / rec["run"]),
            "versions": (rec.get("versions") or {}).get("text", ""), "evidence_holds":
                [bool(e.get("holds")) for e in rec.get("evidence") or []],
            "tries": {t["id"]: {"expected": t["expected"], "observed": t["observed"], "ok": t["ok"]}
                      for t in tries if t}}


def run(settings: Settings, targets: tuple[str, ...], keep: bool = False, publish_run: engine.Publish | None = None,
        publish: engine.Publish | None = None) -> bool:
    """Verify settings' scenario on each target; True when every cell that ran met its expectation.

    A lab that was already up is used and left up; the labs the matrix brought up are destroyed
    unless keep. Each verify writes its own run's reports (publish_run); the combined record goes
    to .lab/matrix/<scenario>/<run>/matrix.json, then publish(dir) renders the other formats."""
    scenario = settings.scenario_data
    for t in targets:
        get_target(t)
        if t not in scenario.target_names:
            raise LabError(f"scenario {scenario.id} has no target {t!r}",
                           hint=f"its targets: {', '.join(scenario.target_names)}")
    rec: dict = {"kind": "matrix", "run": time.strftime("%Y%m%d-%H%M%S", time.gmtime()),
                 "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "scenario": {"id": scenario.id, "title": scenario.model.title,
                              "notes": {t: scenario.model.targets[t].note for t in targets}},
                 "outcomes": {k: v.model_dump() for k, v in scenario.model.outcomes.items()},
                 "targets": [], "ok": False}
    started = time.monotonic()
    try:
        for n, target in enumerate(targets, start=1):
            s = replace(settings, target=target, name=f"{scenario.id}-{target}"[:48].rstrip("-"), fixes=())
            done = ", ".join(f"{c['target']} {c['seconds']['total']:.0f}s" for c in rec["targets"]) or "none yet"
            console.info(f"[bold]matrix {n}/{len(targets)}: {target}[/] [dim](done: {done})[/]")
            rec["targets"].append(_one(s, target, keep, publish_run))
    finally:
        rec["seconds"] = round(time.monotonic() - started, 1)
        ran = [c for c in rec["targets"] if c["status"] != "not run"]
        rec["ok"] = bool(ran) and all(c["ok"] and c["status"] == "ran" for c in ran) and \
            len(rec["targets"]) == len(targets)
        where = _write(matrix_root(scenario.id), rec)
        for path in publish(where) if publish else ():
            console.info(f"[dim]report: {path}[/]")
    return bool(rec["ok"])


def _one(s: Settings, target: str, keep: bool, publish_run: engine.Publish | None) -> dict:
    cell: dict = {"target": target, "title": s.target_data.title, "name": s.name, "status": "not run", "ok": False,
                  "why": "", "seconds": {"up": 0.0, "verify": 0.0, "destroy": 0.0, "total": 0.0}, "tries": {}}
    began = time.monotonic()
    why = _why_not(s)
    if why:
        cell["why"] = why
        console.info(f"  [yellow]not run[/]: {why}")
        return cell
    lab = paths.lab_dir(s.name)
    was_up = state.read(lab).phase in state.READY
    brought_up = False
    try:
        t = time.monotonic()
        lifecycle.up(s)
        brought_up = not was_up
        cell["seconds"]["up"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        try:
            engine.run(s, publish=publish_run)
        finally:
            cell["seconds"]["verify"] = round(time.monotonic() - t, 1)
        cell.update(_cell(s, record.load(_newest_run(lab))))
    except LabError as exc:
        cell.update(status="error", why=exc.message, ok=False)
        console.error(f"{target}: {exc.message}")
    finally:
        if brought_up and not keep:
            t = time.monotonic()
            try:
                lifecycle.destroy(s)
            except LabError as exc:
                console.error(f"{target}: destroying the lab failed: {exc.message}")
            cell["seconds"]["destroy"] = round(time.monotonic() - t, 1)
        cell["seconds"]["total"] = round(time.monotonic() - began, 1)
        cell["kept"] = bool(keep or was_up)
    return cell


def _newest_run(lab: paths.LabDir) -> Path:
    runs = [p for p in lab.reports.iterdir() if p.is_dir() and not p.is_symlink() and (p / record.RECORD).exists()]
    return max(runs, key=lambda p: (p / record.RECORD).stat().st_mtime)


def _write(root: Path, rec: dict) -> Path:
    where = record.run_dir(root, rec["run"])
    rec["run"] = where.name
    write_files(where, {"matrix.json": json.dumps(rec, indent=2) + "\n"})
    record.point_latest(root, where.name)
    return where
