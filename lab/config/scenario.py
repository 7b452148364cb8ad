"""Scenarios as data: a bug written as one scenario.toml plus its script templates, in a folder.

A scenario says what the guest needs (packages per target, provisioning scripts, users), what the
admin does (evidence, a baseline, fixes with apply/start/revert), how an outcome is observed
(an observe script printing key=value lines and rules that name the outcome) and what each target
is expected to show. The engine knows nothing of lxc or cgroups; everything specific is here.

Loading validates the schema (unknown keys get a did-you-mean), then cross-checks what the schema
cannot: targets exist, outcomes used are defined, regexes compile, files exist, every applied fix
has a revert. Each problem names the file and, where it can be found, the line.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lab.config.targets import all_targets
from lab.core.errors import LabError, did_you_mean
from lab.core.resources import SCENARIOS_DIR

SCENARIO_FILE = "scenario.toml"
DEFAULT_SCENARIO = "sudo-lxc-cgroups"

ID = r"^[a-z][a-z0-9-]{0,39}$"
USER = r"^[a-z_][a-z0-9_-]{0,30}$"
VIAS = ("login", "root", "sudo", "su", "su-login", "machinectl", "ssh")
Via = Literal["login", "root", "sudo", "su", "su-login", "machinectl", "ssh"]


class Strict(BaseModel):
    """Frozen, and an unknown key is an error (a typo would otherwise be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Command(Strict):
    """A command as someone types it, and through what identity it runs.

    via: login (default: the admin's SSH login shell, the command as written), root (a root shell
    through sudo, for lab plumbing), sudo (`sudo -u USER CMD`), su (`sudo su USER -c CMD`),
    su-login (`sudo su - USER -c CMD`), machinectl (`sudo machinectl shell USER@ /bin/sh -c CMD`, run
    under script(1) for the terminal it needs; its exit code is always 0, so judge it by output),
    ssh (a fresh SSH login as USER with the lab's key). The command is a jinja2 template."""

    command: str = Field(min_length=1)
    via: Via = "login"
    user: str = ""
    title: str = ""
    why: str = ""

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if value and not re.match(USER, value):
            raise ValueError(f"{value!r} is not a Unix user name (lower-case letters, digits, '_', '-')")
        return value


class Evidence(Strict):
    """Commands whose outputs are shown side by side; expect says whether they must be identical."""

    title: str
    why: str = ""
    commands: list[Command] = Field(min_length=2)
    expect: Literal["same", "differ", "any"] = "same"


class OutcomeDef(Strict):
    """One of the scenario's outcome names: the words a presenter says, and whether it is a failure
    (then the start command is expected to exit non-zero and a signature, if given, must be seen)."""

    words: str
    failure: bool = False


class Rule(Strict):
    """First matching rule wins. when: every field must match its regex (re.search, multiline);
    unless: no field may match. Fields: what observe printed as key=value, plus exit_code and output
    (stdout and stderr) of the start command."""

    outcome: str
    when: dict[str, str] = {}
    unless: dict[str, str] = {}


class Observe(Strict):
    """How an outcome is observed: an optional root script run right after the start command."""

    script: str = ""
    rules: list[Rule] = Field(min_length=1)


PerTarget = str | dict[str, str]
PerTargetList = list[str] | dict[str, list[str]]


class Try(Strict):
    """Fields shared by the baseline and each fix."""

    title: str
    why: PerTarget = ""
    start: Command | None = None
    expect: PerTarget
    signature: PerTargetList = []  # regexes; when given for a target, one must be seen there
    vars: dict[str, Any] = {}


class Baseline(Try):
    title: str = "the command as the admin types it, no fix"
    start: Command  # type: ignore[assignment]


class Fix(Try):
    id: Annotated[str, Field(pattern=ID)]
    targets: list[str] = []
    apply: str = ""
    revert: str = ""


class Users(Strict):
    """admin logs in over SSH (the lab's key, passwordless sudo); unprivileged users are made with
    useradd; ssh_login lists users who also get the lab's key, for steps with via = "ssh"."""

    admin: Annotated[str, Field(pattern=USER)] = "labadmin"
    unprivileged: list[Annotated[str, Field(pattern=USER)]] = []
    ssh_login: list[Annotated[str, Field(pattern=USER)]] = []


class TargetSpec(Strict):
    """What differs on one target: packages, template variables, the versions command, a note
    explaining why this target's outcomes differ from the others."""

    packages: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]+$")]] = []
    vars: dict[str, Any] = {}
    versions: str = ""
    note: str = ""


class Provision(Strict):
    """A provisioning script (a template in the scenario folder), run as root at lab.up."""

    script: str
    targets: list[str] = []


class ScenarioModel(Strict):
    id: Annotated[str, Field(pattern=ID)]
    title: str
    explanation: str
    sources: list[str] = []
    targets: dict[str, TargetSpec] = Field(min_length=1)
    users: Users = Users()
    vars: dict[str, Any] = {}
    versions: str = "uname -r"
    provision: list[Provision] = []
    evidence: list[Evidence] = []
    teardown: str = ""
    # how tries are kept apart: every try from the baseline snapshot, or the teardown between tries
    isolation: Literal["snapshot", "teardown"] = "snapshot"
    outcomes: dict[str, OutcomeDef] = Field(min_length=1)
    observe: Observe
    baseline: Baseline
    fixes: list[Fix] = []


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a scenario: where (file, line if known, key path) and what."""

    file: Path
    where: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        at = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{at}: {self.where}: {self.message}" if self.where else f"{at}: {self.message}"


class ScenarioError(LabError):
    """A scenario with problems; each is one line naming the file (and line) and what to do."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        first = str(problems[0])
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(first + more, hint="see every problem with: invoke lab.check --scenario ...")


@dataclass(frozen=True)
class Scenario:
    """A loaded, validated scenario and the folder it came from."""

    folder: Path
    model: ScenarioModel

    @property
    def id(self) -> str:
        return self.model.id

    @property
    def file(self) -> Path:
        return self.folder / SCENARIO_FILE

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(self.model.targets)

    def fixes_for(self, target: str) -> tuple[Fix, ...]:
        """The fixes that apply on target, in file order."""
        return tuple(f for f in self.model.fixes if not f.targets or target in f.targets)

    def fix(self, target: str, fix_id: str) -> Fix:
        for f in self.fixes_for(target):
            if f.id == fix_id:
                return f
        ids = [f.id for f in self.fixes_for(target)]
        raise LabError(f"scenario {self.id} has no fix {fix_id!r} on target {target}{did_you_mean(fix_id, ids)}",
                       hint=f"fixes there: {', '.join(ids) or 'none'}")

    def packages(self, target: str) -> tuple[str, ...]:
        return tuple(self.model.targets[target].packages)

    def vars_for(self, target: str) -> dict[str, Any]:
        """Scenario vars with the target's vars laid over them."""
        return {**self.model.vars, **self.model.targets[target].vars}

    def provision_for(self, target: str) -> tuple[str, ...]:
        return tuple(p.script for p in self.model.provision if not p.targets or target in p.targets)

    def versions_for(self, target: str) -> str:
        return self.model.targets[target].versions or self.model.versions

    def outcome(self, name: str) -> OutcomeDef:
        return self.model.outcomes[name]


def per_target(value: str | list[str] | dict[str, Any], target: str, default: Any = None) -> Any:
    """A plain value, or a table keyed by target name with an optional "*" for every other target."""
    if isinstance(value, dict):
        return value.get(target, value.get("*", default))
    return value


def expected(t: Try, target: str) -> str:
    """The outcome name the try is expected to show on target."""
    return str(per_target(t.expect, target, ""))


def signatures(t: Try, target: str) -> tuple[str, ...]:
    return tuple(per_target(t.signature, target, []) or [])


# --- finding things --------------------------------------------------------------------------


def shipped() -> dict[str, Path]:
    """Scenario folders shipped with the project, by id (the folder's name)."""
    if not SCENARIOS_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(SCENARIOS_DIR.iterdir()) if (p / SCENARIO_FILE).is_file()}


def resolve(ref: str, base: Path | None = None) -> Path:
    """The folder of a scenario given as a shipped id or as a path (relative to base or cwd).

    Raises LabError naming the known ids when it is neither."""
    found = shipped()
    if ref in found:
        return found[ref]
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    if path.is_dir() and (path / SCENARIO_FILE).is_file():
        return path.resolve()
    if path.is_file() and path.name == SCENARIO_FILE:
        return path.parent.resolve()
    looks_like_path = "/" in ref or ref.startswith(".")
    if looks_like_path:
        raise LabError(f"scenario {ref!r}: no {SCENARIO_FILE} in {path}",
                       hint="give a folder with a scenario.toml (invoke lab.new PATH makes one)")
    raise LabError(f"unknown scenario {ref!r}{did_you_mean(ref, found)}",
                   hint=f"shipped: {', '.join(found) or 'none'}; or give a folder path")


# --- locating a key path in the TOML text ------------------------------------------------------


def locate(text: str, loc: Iterable[str | int]) -> int | None:
    """The line (1-based) where a key path such as ('fixes', 2, 'expect') is written, best effort.

    tomllib keeps no positions, so this walks the text: a key is found as `key =` or in a table
    header, the n-th element of an array of tables as the n-th `[[...key]]` header."""
    lines = text.splitlines()
    pos, prefix, found = 0, "", None
    parts = list(loc)
    for i, part in enumerate(parts):
        if isinstance(part, int):
            header = re.compile(rf"^\s*\[\[\s*{re.escape(prefix)}\s*\]\]")
            hits = [n for n in range(len(lines)) if header.match(lines[n])]
            if part < len(hits):
                pos = found = hits[part]
            continue
        prefix = f"{prefix}.{part}" if prefix and isinstance(parts[i - 1], str) else part
        key = re.compile(rf"^\s*(\"?{re.escape(part)}\"?\s*=|\[\[?\s*[\w.\"-]*{re.escape(part)}\"?\s*\]\]?)")
        for n in range(pos, len(lines)):
            if key.match(lines[n]):
                pos = found = n
                break
    return None if found is None else found + 1


def _dotted(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_problems(file: Path, text: str, exc: ValidationError) -> list[Problem]:
    errors = exc.errors()
    # a misspelt key shows as "unknown key" and as "required key missing": say it once
    unknown = {(tuple(e["loc"][:-1]), str(e["loc"][-1])) for e in errors if e["type"] == "extra_forbidden"}
    problems = []
    for err in errors:
        if err["type"] == "missing" and any(parent == tuple(err["loc"][:-1]) and
                                            did_you_mean(key, [str(err["loc"][-1])]) for parent, key in unknown):
            continue
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p in ("str", "dict[str,str]",
                                                                         "list[str]", "dict[str,list[str]]"))]
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            model = _model_at(loc[:-1])
            known = list(model.model_fields) if model else []
            message = f"unknown key {key!r}{did_you_mean(key, known)}" + (f"; known: {', '.join(known)}"
                                                                          if known else "")
        elif err["type"] == "missing":
            message = f"required key {loc[-1]!r} is missing"
        elif err["type"] in ("literal_error", "string_pattern_mismatch", "enum"):
            message = f"{err['input']!r} is not valid: {message}"
            choices = err.get("ctx", {}).get("expected", "")
            if err["type"] == "literal_error" and isinstance(err["input"], str):
                message += did_you_mean(err["input"], re.findall(r"'([^']+)'", str(choices)))
        problems.append(Problem(file, _dotted(loc), message, locate(text, loc)))
    return problems


def _model_at(loc: list[str | int]) -> type[BaseModel] | None:
    """The model class a key path points into, to list its known keys."""
    model: Any = ScenarioModel
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or not hasattr(model, "model_fields") or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = _inner_model(annotation)
    return model if model is not None and hasattr(model, "model_fields") else None


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


# --- cross checks the schema cannot express ----------------------------------------------------


def _cross_problems(folder: Path, text: str, m: ScenarioModel) -> list[Problem]:
    file = folder / SCENARIO_FILE
    out: list[Problem] = []

    def add(loc: list[str | int], message: str) -> None:
        out.append(Problem(file, _dotted(loc), message, locate(text, loc)))

    known_targets = all_targets()
    for name in m.targets:
        if name not in known_targets:
            add(["targets", name], f"unknown target {name!r}{did_you_mean(name, known_targets)}; "
                                   f"known: {', '.join(known_targets)}")
    supported = [t for t in m.targets if t in known_targets]

    def check_file(loc: list[str | int], rel: str) -> None:
        if not rel:
            return
        path = (folder / rel).resolve()
        if not path.is_relative_to(folder.resolve()):
            add(loc, f"{rel!r} points outside the scenario folder")
        elif not path.is_file():
            add(loc, f"file {rel!r} does not exist in {folder}")

    for i, p in enumerate(m.provision):
        check_file(["provision", i, "script"], p.script)
        for t in p.targets:
            if t not in m.targets:
                add(["provision", i, "targets"], f"target {t!r} is not one of the scenario's: {', '.join(m.targets)}")
    check_file(["teardown"], m.teardown)
    check_file(["observe", "script"], m.observe.script)

    users = {m.users.admin, *m.users.unprivileged}
    if m.users.admin in m.users.unprivileged:
        add(["users", "unprivileged"], f"the admin {m.users.admin!r} cannot also be an unprivileged user")
    for u in m.users.ssh_login:
        if u not in users:
            add(["users", "ssh_login"], f"{u!r} is not the admin nor an unprivileged user")

    def check_command(loc: list[str | int], c: Command | None) -> None:
        if c is None:
            return
        if c.via in ("login", "root") and c.user:
            add([*loc, "user"], f"via = {c.via!r} runs as the admin or root; drop user or pick another via")
        if c.via not in ("login", "root"):
            if not c.user:
                add([*loc, "user"], f"via = {c.via!r} needs user = one of {', '.join(sorted(users))}")
            elif c.user not in users:
                add([*loc, "user"], f"{c.user!r} is not a user of the scenario ({', '.join(sorted(users))})")
        if c.via == "ssh" and c.user and c.user not in m.users.ssh_login and c.user != m.users.admin:
            add([*loc, "user"], f"via = 'ssh' as {c.user!r}: add it to users.ssh_login so it gets the lab's key")

    for i, ev in enumerate(m.evidence):
        for j, c in enumerate(ev.commands):
            check_command(["evidence", i, "commands", j], c)

    outcomes = set(m.outcomes)
    for i, rule in enumerate(m.observe.rules):
        if rule.outcome not in outcomes:
            add(["observe", "rules", i, "outcome"], f"outcome {rule.outcome!r} is not defined in [outcomes]"
                                                    f"{did_you_mean(rule.outcome, outcomes)}")
        for field, regex in {**rule.when, **rule.unless}.items():
            try:
                re.compile(regex)
            except re.error as exc:
                add(["observe", "rules", i], f"regex for {field!r} does not compile: {exc}")

    def check_try(loc: list[str | int], t: Try, targets: list[str]) -> None:
        check_command([*loc, "start"], t.start)
        if isinstance(t.expect, dict):
            for key in t.expect:
                if key != "*" and key not in m.targets:
                    add([*loc, "expect"], f"target {key!r} is not one of the scenario's: {', '.join(m.targets)}")
        for target in targets:
            name = expected(t, target)
            if not name:
                add([*loc, "expect"], f"no expected outcome for target {target!r} (add {target} = \"...\" or \"*\")")
            elif name not in outcomes:
                add([*loc, "expect"], f"outcome {name!r} is not defined in [outcomes]{did_you_mean(name, outcomes)}")
        patterns = t.signature.values() if isinstance(t.signature, dict) else [t.signature]
        for group in patterns:
            for regex in group:
                try:
                    re.compile(regex)
                except re.error as exc:
                    add([*loc, "signature"], f"regex {regex!r} does not compile: {exc}")

    check_try(["baseline"], m.baseline, supported)
    seen: dict[tuple[str, str], int] = {}
    for i, fix in enumerate(m.fixes):
        loc: list[str | int] = ["fixes", i]
        for t in fix.targets:
            if t not in m.targets:
                add([*loc, "targets"], f"target {t!r} is not one of the scenario's: {', '.join(m.targets)}")
        on = [t for t in (fix.targets or supported) if t in supported]
        check_try(loc, fix, on)
        check_file([*loc, "apply"], fix.apply)
        check_file([*loc, "revert"], fix.revert)
        if fix.apply and not fix.revert:
            add([*loc, "revert"], f"fix {fix.id!r} applies a change but has no revert script; every applied "
                                  "fix must be reverted to prove the baseline again")
        if fix.id in ("baseline", "baseline-restored", "evidence", "versions", "preflight"):
            add([*loc, "id"], f"fix id {fix.id!r} is reserved")
        for t in on:
            if (t, fix.id) in seen:
                add([*loc, "id"], f"fix id {fix.id!r} appears twice for target {t!r} (also fixes[{seen[(t, fix.id)]}])")
            seen[(t, fix.id)] = i
    return out


def check_data(folder: Path) -> tuple[Scenario | None, list[Problem]]:
    """Parse and validate one scenario folder: (the scenario or None, every problem found)."""
    file = folder / SCENARIO_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        return None, [Problem(file, "", f"cannot be read: {exc.strerror}")]
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        return None, [Problem(file, "", f"not valid TOML: {exc}", int(m.group(1)) if m else None)]
    try:
        model = ScenarioModel.model_validate(raw)
    except ValidationError as exc:
        return None, _schema_problems(file, text, exc)
    problems = _cross_problems(folder, text, model)
    if model.id != folder.name and folder.parent == SCENARIOS_DIR:
        problems.append(Problem(file, "id", f"a shipped scenario's id must be its folder's name ({folder.name!r})",
                                locate(text, ["id"])))
    return (None if problems else Scenario(folder=folder, model=model)), problems


@cache
def _load_cached(folder: Path, mtime_ns: int) -> Scenario:
    scenario, problems = check_data(folder)
    if problems or scenario is None:
        raise ScenarioError(problems)
    return scenario


def load(ref: str, base: Path | None = None) -> Scenario:
    """A scenario by shipped id or folder path; ScenarioError lists every problem of its data."""
    folder = resolve(ref, base)
    try:
        mtime = (folder / SCENARIO_FILE).stat().st_mtime_ns
    except OSError:
        mtime = 0
    return _load_cached(folder, mtime)
