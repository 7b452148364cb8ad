"""lab.matrix: one scenario over several targets. For each target: bring its lab up (or use it when
it is up), verify, destroy it unless kept; a target whose sources do not answer from this host (a
probe made now) is "not run" with what the probe found. With jobs > 1, that many labs run side by
side, each writing its output into its own log. Then one combined record (matrix.json) in its own
directory, rendered by lab.report.matrix."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

from lab.config.settings import Settings
from lab.config.targets import get_target
from lab.core import console, paths
from lab.core.errors import LabError, TestbedError
from lab.core.files import write_files
from lab.host.probes import sources_silent
from lab.images.build import built_here
from lab.machine import lifecycle, state
from lab.machine.resolve import resolve
from lab.run import engine, record
from lab.run.hosts import HostPool, PoolHost
from lab.run.record import RecordError, RunRecord
from lab.run.verdict import verdict
from lab.run.verify import verify

MATRIX_DIR = "matrix"


def matrix_root(scenario_id: str, project_dir: Path | None = None) -> Path:
    """.lab/matrix/<scenario>/: one directory per matrix run, and `latest`."""
    return paths.state_root(project_dir) / MATRIX_DIR / scenario_id


def why_not(settings: Settings) -> str:
    """Why a lab of these settings cannot run from this host, as a probe finds it now ("" when it
    can): each source its target downloads (Target.sources), the build's only while there is no box
    (settings.box, or the cache has it), must answer at one of its URLs."""
    has_box = built_here(resolve(settings))
    return sources_silent(settings.target_data.sources, lambda key: str(getattr(settings, key)), has_box)


def _cell(settings: Settings, rec: RunRecord) -> dict:
    """A matrix cell from one verify run's record (its verdict from lab.run.verdict)."""
    return {"status": "ran" if rec.complete else "error", "ok": verdict(rec).ok,
            "error": rec.error, "run_dir": str(paths.lab_dir(settings.name).reports / rec.run),
            "versions": rec.versions, "evidence_holds": [e.holds for e in rec.evidence],
            "isolation": rec.isolation,
            "tries": {t.id: {"kind": t.kind, "expected": t.expected, "observed": t.observed, "ok": t.ok}
                      for t in rec.tries}}


MAX_JOBS = 8


def run(settings: Settings, targets: tuple[str, ...], keep: bool = False, publish_run: engine.Publish | None = None,
        publish: engine.Publish | None = None, jobs: int = 1, hosts: tuple[str, ...] = ()) -> bool:
    """Verify settings' scenario on each target; True when every cell that ran met its expectation.

    A lab that was already up is used and left up; the labs the matrix brought up are destroyed
    unless keep. jobs (1-8) labs run at once; with more than one, each cell's output goes to
    logs/<target>.log in the run's directory and the terminal shows their steps, labelled. Each
    verify writes its own run's reports (publish_run); the combined record goes to
    .lab/matrix/<scenario>/<run>/matrix.json, then publish(dir) renders the other formats.
    hosts: libvirt URIs to spread the labs over (lab.run.hosts; default: the settings' one), each
    cell records the host that ran it.
    Raises LabError for an unknown target or a jobs value out of range, before anything starts;
    TestbedError when none of the hosts answers."""
    if not 1 <= jobs <= MAX_JOBS:
        raise LabError(f"--jobs must be between 1 and {MAX_JOBS}, not {jobs}",
                       hint="each job is one VM; two fit a 2-core host")
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
                 "targets": [], "ok": False, "jobs": jobs}
    root = matrix_root(scenario.id)
    where = record.run_dir(root, rec["run"])
    rec["run"] = where.name
    started = time.monotonic()
    labs = [replace(settings, target=t, name=f"{scenario.id}-{t}"[:48].rstrip("-"), fixes=()) for t in targets]
    pool = HostPool.probe(settings, hosts) if hosts else HostPool.single(settings.libvirt_uri, jobs)
    jobs = rec["jobs"] = min(jobs, pool.room())
    try:
        if jobs == 1:
            for n, (s, target) in enumerate(zip(labs, targets, strict=True), start=1):
                done = ", ".join(f"{c['target']} {c['seconds']['total']:.0f}s" for c in rec["targets"]) or "none yet"
                console.info(f"[bold]matrix {n}/{len(targets)}: {target}[/] [dim](done: {done})[/]")
                rec["targets"].append(_on_host(pool, s, target, keep, publish_run))
        else:
            console.info(f"[bold]matrix: {len(targets)} targets, {jobs} at a time[/] [dim](each lab's output: "
                         f"{where / 'logs'})[/]")
            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="matrix") as workers:
                cells = [workers.submit(_logged, pool, s, target, keep, publish_run, where / "logs" / f"{target}.log")
                         for s, target in zip(labs, targets, strict=True)]
                rec["targets"] = [cell.result() for cell in cells]
    finally:
        rec["seconds"] = round(time.monotonic() - started, 1)
        rec["hosts"] = pool.summary()
        ran = [c for c in rec["targets"] if c["status"] != "not run"]
        rec["ok"] = bool(ran) and all(c["ok"] and c["status"] == "ran" for c in ran) and \
            len(rec["targets"]) == len(targets)
        _write(root, where, rec)
        for path in publish(where) if publish else ():
            console.info(f"[dim]report: {path}[/]")
    return bool(rec["ok"])


def _logged(pool: HostPool, s: Settings, target: str, keep: bool, publish_run: engine.Publish | None,
            log: Path) -> dict:
    """_on_host in a worker thread, its output in log; the cell records where the log is."""
    with console.redirected(log, target):
        cell = _on_host(pool, s, target, keep, publish_run)
    cell["log"] = str(log)
    return cell


def _on_host(pool: HostPool, s: Settings, target: str, keep: bool, publish_run: engine.Publish | None) -> dict:
    """_one on a host of the pool (the one its lab is up on, if it is); the cell says which host.
    A lab that failed on a host that then no longer answers takes that host out of the pool."""
    why = why_not(s)
    if why:
        return _one(s, target, keep, publish_run, why)
    try:
        with pool.slot(target, _pinned(s)) as host:
            return _on(pool, replace(s, libvirt_uri=host.uri), host, target, keep, publish_run)
    except TestbedError as exc:  # no host for this lab (pool.slot)
        console.error(f"{target}: {exc.message}")
        return {"target": target, "title": s.target_data.title, "name": s.name, "status": "error", "ok": False,
                "why": exc.message, "host": "", "seconds": {"up": 0.0, "verify": 0.0, "destroy": 0.0, "total": 0.0},
                "tries": {}, "kept": False}


def _on(pool: HostPool, s: Settings, host: PoolHost, target: str, keep: bool,
        publish_run: engine.Publish | None) -> dict:
    if len(pool.hosts) > 1:
        console.info(f"  {target} runs on host {host.label}")
    cell = _one(s, target, keep, publish_run)
    cell.update(host=host.label, libvirt_uri=host.uri)
    if cell["status"] == "error":
        pool.check(s, host)
    return cell


def _pinned(s: Settings) -> str:
    """The libvirt URI a lab that is already up runs on ("" when it is not up here)."""
    st, _ = state.peek(paths.lab_dir(s.name))
    if st is None or st.phase not in state.READY:
        return ""
    try:
        return lifecycle.load_lab(s.name).libvirt_uri
    except LabError:
        return ""


def _one(s: Settings, target: str, keep: bool, publish_run: engine.Publish | None, why: str = "") -> dict:
    """One cell: not run (why, from why_not()), or up, verify, destroy (unless kept), timed."""
    cell: dict = {"target": target, "title": s.target_data.title, "name": s.name, "status": "not run", "ok": False,
                  "why": "", "seconds": {"up": 0.0, "verify": 0.0, "destroy": 0.0, "total": 0.0}, "tries": {}}
    began = time.monotonic()
    if why:
        cell["why"] = why
        console.info(f"  [yellow]not run[/]: {why}")
        return cell
    lab = paths.lab_dir(s.name)
    st, _ = state.peek(lab)  # a damaged state.json fails this cell in lifecycle.up, not the matrix
    was_up = st is not None and st.phase in state.READY
    brought_up = False
    try:
        t = time.monotonic()
        lifecycle.up(s)
        brought_up = not was_up
        cell["seconds"]["up"] = round(time.monotonic() - t, 1)
        t, since = time.monotonic(), time.time()
        try:
            rec = verify(s, publish=publish_run)
        except LabError:
            ran = _newest_run(lab, since)
            if ran is not None:  # the verify got far enough to record its run
                with suppress(RecordError):
                    cell.update(_cell(s, record.load(ran)))
            raise
        finally:
            cell["seconds"]["verify"] = round(time.monotonic() - t, 1)
        cell.update(_cell(s, rec))
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


def _newest_run(lab: paths.LabDir, since: float) -> Path | None:
    """The lab's run directory whose record was written last, at or after since (a time.time()); None
    when no run recorded since then (a verify that failed before it began)."""
    runs = [p for p in lab.reports.iterdir() if p.is_dir() and not p.is_symlink() and (p / record.RECORD).exists()
            and (p / record.RECORD).stat().st_mtime >= since] if lab.reports.is_dir() else []
    return max(runs, key=lambda p: (p / record.RECORD).stat().st_mtime, default=None)


def _write(root: Path, where: Path, rec: dict) -> None:
    write_files(where, {"matrix.json": json.dumps(rec, indent=2) + "\n"})
    record.point_latest(root, where.name)
