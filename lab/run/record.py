"""The run record, typed: what one `lab.verify` saw, step by step and try by try.

`verify.json` is the serialisation of a `RunRecord` (pydantic), versioned by `schema_version`
(SCHEMA_VERSION). Every report and the live presenter read the typed record and ask
`lab.run.verdict` what it means; nothing re-derives a verdict from raw fields. Records of the
previous version (schema 1: a plain dict with `baseline`, `fixes`, `baseline_restored`) are
upgraded when read, so `lab.report` renders old runs too.

Files: each run writes into its own directory, reports/<run>/, so no run overwrites another's;
reports/latest points at the newest run that completed (not one stopped, kept at a failure, or
broken off by an error).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lab.core.files import write_files

SCHEMA_VERSION = 2
LATEST = "latest"
RECORD = "verify.json"

Isolation = Literal["snapshot", "teardown"]
TryKind = Literal["baseline", "fix", "variant", "control", "restored"]
# Steps that only prepare, clean or inspect the guest: counted, but not part of the story.
PLUMBING_SUFFIXES = (":teardown", ":observe", ":cleanup", ":revert-snapshot", ":wait")
PLUMBING_PREFIX = "preflight:"


class Model(BaseModel):
    """A part of the record: unknown keys are refused (a damaged or foreign file is not a record)."""

    model_config = ConfigDict(extra="forbid")


class StepRecord(Model):
    """One command of the run as it ran: the command as shown, who ran it, what came back.

    expected: "succeed" (exit 0), "fail" (non-zero), "any" or "exit 0, 3" (one of those codes); ok:
    whether it met that (and, for a start command, whether its try met its expectation). seconds:
    wall time on the host; guest_seconds: the guest's own time for it (None when the channel cannot
    tell); started: seconds since the run began (the asciicast's clock)."""

    id: str
    title: str = ""
    command: str
    user: str
    expected: Annotated[str, Field(pattern=r"^(succeed|fail|any|exit -?\d+(, -?\d+)*)$")] = "succeed"
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    guest_seconds: float | None = None
    started: float = 0.0
    ok: bool
    why: str = ""
    note: str = ""

    @property
    def plumbing(self) -> bool:
        """A step that prepares or inspects the guest (teardown, observe, revert, preflight)."""
        return is_plumbing(self.id)


def is_plumbing(step_id: str) -> bool:
    """Whether a step id names plumbing (teardown, observe, cleanup, a snapshot revert, preflight)."""
    return step_id.startswith(PLUMBING_PREFIX) or step_id.endswith(PLUMBING_SUFFIXES)


class Column(Model):
    """One command of an evidence block and what it printed."""

    command: str
    user: str
    title: str = ""
    output: str = ""


class EvidenceRecord(Model):
    """Commands shown side by side; holds: their outputs are as `expect` says (same/differ/any)."""

    title: str
    why: str = ""
    expect: Literal["same", "differ", "any"] = "same"
    holds: bool
    steps: list[str] = Field(default_factory=list)
    columns: list[Column] = Field(default_factory=list)


class TryRecord(Model):
    """The baseline, a fix, a variant or control, or the restored baseline: expected and observed.

    observed: an outcome name of the scenario, "unclassified" (no rule matched) or "error" (the
    try broke off before it could be judged; `error` says why). ok: observed as expected (with its
    signature, when the try lists some for the target) and cleaned up. reverted: True/False when
    the scenario's teardown and the fix's revert script ran (teardown isolation); None when no
    script had to clean up (snapshot isolation: the next try starts from the baseline snapshot).
    kept: --keep-failing left this try as it failed."""

    id: str
    kind: TryKind
    title: str = ""
    why: str = ""
    expected: str
    observed: str = "error"
    ok: bool = False
    signature_matched: list[str] = Field(default_factory=list)
    fields: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    reverted: bool | None = None
    kept: bool = False
    error: str | None = None
    # the start command's exit status and whether it was as the try's `exit` says; what a wait that
    # ran out last saw (lab.config.scenario.Try: exit and wait)
    exit_code: int | None = None
    exit_ok: bool = True
    wait: str = ""


class ScenarioInfo(Model):
    """The scenario as the reports tell it."""

    id: str
    title: str = ""
    explanation: str = ""
    sources: list[str] = Field(default_factory=list)
    note: str = ""


class Revert(Model):
    """One return to the baseline snapshot during the run: before which try, how, and its cost in
    seconds (the revert itself, and until the admin's shells answered again)."""

    before: str
    how: str
    seconds: float
    until_shells: float


class RunRecord(Model):
    """One verify run. `tries` are in run order (baseline, fixes/variants/controls, restored
    baseline); `planned` lists the try ids the run meant to run. `ok` and `not_run` are written
    from lab.run.verdict at the end of the run, for readers of the JSON; the verdict function is
    what every report asks."""

    schema_version: int = SCHEMA_VERSION
    run: str
    name: str
    target: str
    provider: str = ""
    title: str = ""
    target_title: str = ""
    cgroup_layout: str = ""
    scenario: ScenarioInfo
    admin_user: str = ""
    users: list[str] = Field(default_factory=list)
    outcomes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    started_at: str = ""
    isolation: Isolation = "teardown"
    isolation_note: str = ""  # why the run used another isolation than the scenario asked for
    versions: str = ""
    evidence: list[EvidenceRecord] = Field(default_factory=list)
    steps: list[StepRecord] = Field(default_factory=list)
    tries: list[TryRecord] = Field(default_factory=list)
    planned: list[str] = Field(default_factory=list)
    started_from: str | None = None
    stopped: str | None = None
    kept_failing: str | None = None
    error: str | None = None
    seconds: float = 0.0
    reverts: list[Revert] = Field(default_factory=list)
    ok: bool = False
    not_run: list[str] = Field(default_factory=list)

    def try_(self, try_id: str) -> TryRecord | None:
        """The try of that id, or None."""
        return next((t for t in self.tries if t.id == try_id), None)

    def steps_of(self, try_id: str) -> list[StepRecord]:
        """Every step of one try (ids "<try>:..."), plumbing included."""
        return [s for s in self.steps if s.id.startswith(f"{try_id}:")]

    @property
    def story_steps(self) -> list[StepRecord]:
        """The steps a reader follows (plumbing left out)."""
        return [s for s in self.steps if not s.plumbing]

    @property
    def complete(self) -> bool:
        """A run that went to its end (met its expectations or not): not stopped, kept at a
        failure or broken off."""
        return not self.stopped and not self.kept_failing and self.error is None


class RecordError(ValueError):
    """A file that is not a verify record of a known schema (the message says what is wrong)."""


def parse(data: object) -> RunRecord:
    """A RunRecord from the JSON value of a verify.json of schema 2, or of schema 1 (upgraded).

    Raises RecordError naming what is wrong."""
    if not isinstance(data, dict):
        raise RecordError("not a verify record (a JSON object)")
    version = data.get("schema_version", 1)
    if version == 1:
        data = upgrade_v1(data)
    elif version != SCHEMA_VERSION:
        raise RecordError(f"not of a schema this version reads (schema_version {version!r}; it reads 1 and "
                          f"{SCHEMA_VERSION}: a newer cgroup-lab wrote it)")
    try:
        return RunRecord.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RecordError(f"not a verify record: {where}: {first['msg']}") from None


def coerce(value: RunRecord | dict[str, Any]) -> RunRecord:
    """A RunRecord as it is, or the JSON value of a verify.json (schema 1 or 2) parsed into one."""
    return value if isinstance(value, RunRecord) else parse(value)


def upgrade_v1(old: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 record (the untyped dict before the typed record) in the schema-2 shape: the
    tries from baseline/fixes/baseline_restored, versions as text, the isolation it ran with
    (teardown: the only one then)."""
    if not isinstance(old.get("steps"), list) or not isinstance(old.get("scenario"), dict):
        raise RecordError("not a verify record (an object with scenario, steps and fixes)")
    if not isinstance(old.get("fixes", []), list):
        raise RecordError("not a verify record (fixes is not a list)")
    tries = []
    for kind, row in [("baseline", old.get("baseline")), *(("fix", f) for f in old.get("fixes", [])),
                      ("restored", old.get("baseline_restored"))]:
        if isinstance(row, dict):
            tries.append({"kind": kind, **{k: v for k, v in row.items() if k in TryRecord.model_fields}})
    keep = set(RunRecord.model_fields) - {"schema_version", "tries", "versions", "isolation"}
    new = {k: v for k, v in old.items() if k in keep}
    new.update({"schema_version": SCHEMA_VERSION, "tries": tries, "isolation": "teardown",
                "versions": (old.get("versions") or {}).get("text", "") if isinstance(old.get("versions"), dict)
                else str(old.get("versions") or "")})
    new["evidence"] = [{k: v for k, v in ev.items() if k in EvidenceRecord.model_fields}
                       for ev in old.get("evidence") or [] if isinstance(ev, dict)]
    new["steps"] = [{k: v for k, v in st.items() if k in StepRecord.model_fields}
                    for st in old.get("steps") or [] if isinstance(st, dict)]
    if not new.get("planned"):  # schema 1 wrote `planned` only in later runs: what ran, then what did not
        new["planned"] = [t["id"] for t in tries if "id" in t] + [t for t in old.get("not_run") or []
                                                                 if isinstance(t, str)]
    new.setdefault("run", "")
    new.setdefault("name", "")
    new.setdefault("target", "")
    return new


def dumps(rec: RunRecord) -> str:
    """The record as verify.json's text."""
    return json.dumps(rec.model_dump(mode="json"), indent=2) + "\n"


def run_dir(reports: Path, run: str) -> Path:
    """reports/<run>/, made unique if two runs start within the same second."""
    path, n = reports / run, 1
    while path.exists():
        n += 1
        path = reports / f"{run}-{n}"
    return path


def write(reports: Path, rec: RunRecord) -> Path:
    """Write verify.json into the run's own directory under reports/; move `latest` there if the
    run completed. Sets rec.run to the directory's name. Returns the run directory."""
    where = run_dir(reports, rec.run)
    rec.run = where.name
    write_files(where, {RECORD: dumps(rec)})
    if rec.complete:
        point_latest(reports, where.name)
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


def load(path: Path) -> RunRecord:
    """The record in a run directory (or a verify.json path). OSError passes through (a missing
    file is FileNotFoundError); RecordError for a file that is not valid JSON or not a record."""
    file = path / RECORD if path.is_dir() else path
    text = file.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON ({exc})") from None
    return parse(data)
