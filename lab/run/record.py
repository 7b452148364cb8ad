"""The run record (verify.json): made at the start of a run, finished and written at its end into
the run's own directory, reports/<run>/, so no run ever overwrites another's. reports/latest points
at the newest run that completed (not one that was stopped or broke off with an error)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from lab.config.settings import Settings
from lab.core.files import write_files
from lab.core.paths import LabDir
from lab.render.lab import LabFacts
from lab.render.plan import Plan

LATEST = "latest"
RECORD = "verify.json"


def new(settings: Settings, facts: LabFacts, plan: Plan) -> dict:
    """A fresh record for a run of plan on the lab: everything the reports need besides the steps."""
    return {
        "run": time.strftime("%Y%m%d-%H%M%S", time.gmtime()),
        "name": settings.name, "target": plan.target, "provider": facts.provider,
        "title": plan.title, "target_title": plan.target_title, "cgroup_layout": plan.cgroup_layout,
        "scenario": {"id": plan.scenario, "title": plan.title, "explanation": plan.explanation,
                     "sources": list(plan.sources), "note": plan.note},
        "admin_user": plan.admin, "users": list(plan.users), "outcomes": plan.outcomes,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ok": False, "versions": {}, "evidence": [], "steps": [], "fixes": [], "restored": None,
    }


def finish(rec: dict) -> dict:
    """Set ok: every step and try that ran met its expectation, the baseline came back (when fixes
    ran), nothing broke off. A run the presenter stopped can be ok: it says where it stopped
    (rec["stopped"]) and never becomes `latest`."""
    tries = [rec.get("baseline"), *rec.get("fixes", []), rec.get("baseline_restored")]
    ran = [t for t in tries if t]
    rec["ok"] = (bool(rec.get("steps")) and all(s["ok"] for s in rec["steps"]) and all(t["ok"] for t in ran)
                 and (bool(ran) or bool(rec.get("stopped"))) and rec.get("restored") is not False
                 and rec.get("error") is None)
    rec["not_run"] = [t for t in rec.get("planned", []) if t not in {r["id"] for r in ran}]
    return rec


def complete(rec: dict) -> bool:
    """A run that went to its end (met its expectations or not), not stopped, kept at a failure or
    broken off."""
    return not rec.get("stopped") and not rec.get("kept_failing") and rec.get("error") is None


def run_dir(reports: Path, run: str) -> Path:
    """reports/<run>/, made unique if two runs start within the same second."""
    path, n = reports / run, 1
    while path.exists():
        n += 1
        path = reports / f"{run}-{n}"
    return path


def write(lab: LabDir, rec: dict) -> Path:
    """Write verify.json into the run's own directory; move `latest` there if the run completed.
    Returns the run directory."""
    where = run_dir(lab.reports, rec["run"])
    rec["run"] = where.name
    write_files(where, {RECORD: json.dumps(rec, indent=2) + "\n"})
    if complete(rec):
        point_latest(lab.reports, where.name)
    return where


def prune(reports: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` run directories (those holding a verify.json; names sort by
    time) and never the one `latest` points at. Returns what was deleted."""
    runs = sorted((p for p in reports.iterdir() if p.is_dir() and not p.is_symlink() and (p / RECORD).is_file()),
                  key=lambda p: p.name)
    latest = (reports / LATEST).resolve() if (reports / LATEST).is_symlink() else None
    gone = [p for p in runs[:-keep] if p.resolve() != latest]
    for path in gone:
        shutil.rmtree(path)
    return gone


def point_latest(reports: Path, run: str) -> None:
    """Atomically repoint reports/latest at reports/<run> (a relative symlink)."""
    tmp = reports / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(run, tmp)
    os.replace(tmp, reports / LATEST)


def load(path: Path) -> dict:
    """A record from a run directory or a verify.json path; OSError/ValueError pass through."""
    file = path / RECORD if path.is_dir() else path
    return json.loads(file.read_text(encoding="utf-8"))
