"""Reports: each format is a pure function of the run record (verify.json)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lab import paths
from lab.errors import LabError
from lab.files import write_files

Renderer = Callable[[dict], str]

# Steps that only prepare or inspect the guest: counted, but not part of the story.
PLUMBING_SUFFIXES = (":reset", ":observe", ":stop")
PLUMBING_PREFIX = "preflight:"

_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|.*\Z)",  # an unterminated block: to the end
    re.DOTALL,
)
REDACTED = "[private key redacted]"


def redact(text: str) -> str:
    """Replace every OpenSSH/PEM private key block: reports get pasted into bug trackers."""
    return _PRIVATE_KEY.sub(REDACTED, text)


def redacted(value: Any) -> Any:
    """A copy of a record with every string redacted, so no renderer can forget a field."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(v) for v in value]
    return value


def is_plumbing(step_id: str) -> bool:
    return step_id.startswith(PLUMBING_PREFIX) or step_id.endswith(PLUMBING_SUFFIXES)


def fix_rows(record: dict) -> list[dict]:
    """The fixes in run order: baseline, each fix, the restored baseline (those that ran)."""
    rows = [record.get("baseline"), *record.get("fixes", []), record.get("baseline_restored")]
    return [row for row in rows if row]


def steps_of(record: dict, fix_id: str) -> list[dict]:
    """Every step of one fix, plumbing included."""
    return [s for s in record.get("steps", []) if s["id"].startswith(f"{fix_id}:")]


def story_steps(record: dict) -> list[dict]:
    return [s for s in record.get("steps", []) if not is_plumbing(s["id"])]


def output_lines(step: dict) -> list[str]:
    """stdout then stderr, as lines, without the trailing blank ones."""
    text = (step.get("stdout") or "") + (step.get("stderr") or "")
    if step.get("stdout") and not step["stdout"].endswith("\n") and step.get("stderr"):
        text = step["stdout"] + "\n" + step["stderr"]
    return text.rstrip().splitlines()


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
        written += write_files(paths.lab_dir(name, project_dir).reports, {filename: renderer(record)})
    return written


def verdict(row: dict) -> str:
    """The presenter's sentence for a fix row (as lab.live says it): failing can be good news."""
    from lab.targets import OUTCOME_WORDS, Outcome

    def words(value: str) -> str:
        return OUTCOME_WORDS.get(Outcome(value), value) if value in set(Outcome) else value

    seen = words(row.get("observed", ""))
    if row.get("ok") and row["id"].startswith("baseline"):
        text = f"{seen}, as the bug predicts (reproduced)"
    elif row.get("ok") and row.get("observed") == "failing":
        text = f"still {seen}, as measured for this target"
    elif row.get("ok"):
        text = f"{seen}, as expected"
    elif row.get("observed") != row.get("expected"):
        text = f"{seen}, but expected: {words(row.get('expected', ''))}"
    elif not row.get("reverted", True):
        text = f"{seen}, as expected, but the fix could not be reverted"
    else:
        text = f"{seen}, but without the expected failure's signature"
    return text
