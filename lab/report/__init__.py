"""Reports: each format is a pure function of the run record (verify.json)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from lab import paths
from lab.errors import LabError

Renderer = Callable[[dict], str]


def renderers() -> dict[str, tuple[str, Renderer]]:
    """format -> (file name, renderer)."""
    found: dict[str, tuple[str, Renderer]] = {"json": ("verify.json", lambda r: json.dumps(r, indent=2) + "\n")}
    try:
        from lab.report import cast, junit, markdown

        found.update({"md": ("transcript.md", markdown.render), "junit": ("junit.xml", junit.render),
                      "cast": ("verify.cast", cast.render)})
    except ImportError:
        pass
    return found


def load_record(name: str, project_dir: Path | None = None) -> dict:
    path = paths.lab_dir(name, project_dir).reports / "verify.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"no verify record for lab {name} ({path})", hint="run: invoke lab.verify") from None
    except json.JSONDecodeError as exc:
        raise LabError(f"{path} is not valid JSON ({exc})", hint="run lab.verify again") from None


def write_reports(name: str, formats: Iterable[str] | None = None, project_dir: Path | None = None) -> list[Path]:
    """(Re)write the chosen report files next to verify.json; json is the record itself."""
    record = load_record(name, project_dir)
    available = renderers()
    chosen = list(formats) if formats else [f for f in available if f != "json"]
    written = []
    for fmt in chosen:
        if fmt not in available:
            raise LabError(f"unknown report format {fmt!r}", hint=f"one of: {', '.join(available)}")
        filename, renderer = available[fmt]
        path = paths.lab_dir(name, project_dir).reports / filename
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(renderer(record), encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written
