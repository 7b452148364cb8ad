"""Reports: each format (markdown, JUnit, asciicast) is a pure function of one run's record."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from lab.core import paths
from lab.core.errors import LabError
from lab.core.files import write_files
from lab.report import cast, html, junit, markdown
from lab.report.rows import (
    fix_rows,
    is_plumbing,
    output_lines,
    redact,
    redacted,
    steps_of,
    story_steps,
    verdict,
)
from lab.run import record
from lab.run.record import LATEST, RECORD

Renderer = Callable[[dict], str]

__all__ = ["cast", "fix_rows", "is_plumbing", "junit", "latest_run", "load_record", "markdown", "output_lines",
           "redact", "redacted",
           "steps_of", "story_steps", "verdict", "write_reports"]


def renderers() -> dict[str, tuple[str, Renderer]]:
    """format -> (file name, renderer)."""
    return {"json": (RECORD, lambda r: json.dumps(r, indent=2) + "\n"), "md": ("transcript.md", markdown.render),
            "junit": ("junit.xml", junit.render), "cast": ("verify.cast", cast.render),
            "html": ("report.html", html.render)}


def latest_run(name: str, project_dir: Path | None = None) -> Path:
    """The directory of the lab's latest completed run (reports/latest)."""
    path = paths.lab_dir(name, project_dir).reports / LATEST
    if not path.exists():
        raise LabError(f"no completed verify run for lab {name} ({path})", hint="run: invoke lab.verify")
    return path.resolve()


def load_record(run_dir: Path) -> dict:
    """The record of one run (its verify.json); LabError if it is missing or damaged."""
    path = run_dir / RECORD
    try:
        rec = record.load(run_dir)
    except FileNotFoundError:
        raise LabError(f"no verify record at {path}", hint="run: invoke lab.verify") from None
    except json.JSONDecodeError as exc:
        raise LabError(f"{path} is not valid JSON ({exc})", hint="run lab.verify again") from None
    shape_ok = isinstance(rec, dict) and isinstance(rec.get("steps"), list) and isinstance(rec.get("scenario"), dict)
    if not shape_ok or not isinstance(rec.get("fixes", []), list):
        raise LabError(f"{path} is not a verify record (an object with scenario, steps and fixes)",
                       hint="run lab.verify again")
    return rec


def write_reports(run_dir: Path, formats: Iterable[str] | None = None) -> list[Path]:
    """(Re)write the chosen report files next to the run's verify.json (json is the record itself)."""
    record = load_record(run_dir)
    available = renderers()
    chosen = list(formats) if formats else [f for f in available if f != "json"]
    written = []
    for fmt in chosen:
        if fmt not in available:
            raise LabError(f"unknown report format {fmt!r}", hint=f"one of: {', '.join(available)}")
        filename, renderer = available[fmt]
        written += write_files(run_dir, {filename: renderer(record)})
    return written
