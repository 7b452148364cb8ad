"""Reports: each format (markdown, JUnit, asciicast, HTML) is a pure function of one run's typed record
(lab.run.record.RunRecord); what a run means comes from lab.run.verdict for every one of them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from lab.core import paths
from lab.core.errors import LabError
from lab.core.files import write_files
from lab.report import cast, html, junit, markdown
from lab.report.rows import output_lines, redact, redacted, redacted_record
from lab.run import record
from lab.run.record import LATEST, RECORD, RecordError, RunRecord

Renderer = Callable[[RunRecord], str]

__all__ = ["cast", "html", "junit", "latest_run", "load_record", "markdown", "output_lines", "redact", "redacted",
           "redacted_record", "renderers", "write_reports"]


def renderers() -> dict[str, tuple[str, Renderer]]:
    """format -> (file name, renderer)."""
    return {"json": (RECORD, record.dumps), "md": ("transcript.md", markdown.render),
            "junit": ("junit.xml", junit.render), "cast": ("verify.cast", cast.render),
            "html": ("report.html", html.render)}


def latest_run(name: str, project_dir: Path | None = None) -> Path:
    """The directory of the lab's latest completed run (reports/latest)."""
    path = paths.lab_dir(name, project_dir).reports / LATEST
    if not path.exists():
        raise LabError(f"no completed verify run for lab {name} ({path})", hint="run: invoke lab.verify")
    return path.resolve()


def load_record(run_dir: Path) -> RunRecord:
    """The record of one run (its verify.json, schema 1 or 2); LabError if it is missing or damaged."""
    path = run_dir / RECORD
    try:
        return record.load(run_dir)
    except FileNotFoundError:
        raise LabError(f"no verify record at {path}", hint="run: invoke lab.verify") from None
    except RecordError as exc:
        raise LabError(f"{path} is {exc}", hint="run lab.verify again") from None


def write_reports(run_dir: Path, formats: Iterable[str] | None = None) -> list[Path]:
    """(Re)write the chosen report files next to the run's verify.json. "json" rewrites verify.json
    itself in the current schema (a record of the previous schema is upgraded)."""
    rec = load_record(run_dir)
    available = renderers()
    chosen = list(formats) if formats else [f for f in available if f != "json"]
    written = []
    for fmt in chosen:
        if fmt not in available:
            raise LabError(f"unknown report format {fmt!r}", hint=f"one of: {', '.join(available)}")
        filename, renderer = available[fmt]
        written += write_files(run_dir, {filename: renderer(rec)})
    return written
