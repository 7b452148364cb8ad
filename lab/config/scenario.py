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
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator

from lab.config import vias
from lab.config.targets import all_targets
from lab.core.errors import LabError, did_you_mean
from lab.core.resources import SCENARIOS_DIR

SCENARIO_FILE = "scenario.toml"
DEFAULT_SCENARIO = "sudo-lxc-cgroups"

ID = r"^[a-z][a-z0-9-]{0,39}$"
USER = r"^[a-z_][a-z0-9_-]{0,30}$"
VIAS = vias.NAMES
Via = Literal["login", "root", "sudo", "su", "su-login", "runuser", "runuser-login", "setpriv", "machinectl", "ssh",
              "cron", "unit", "run0", "tty"]
KINDS = ("baseline", "variant", "control", "fix")  # the order tries run in: baseline, variants, controls, fixes
TEMPLATE_MARK = re.compile(r"\{\{|\{%|\{#")


def target_keys() -> set[str]:
    """The keys of a per-target table: every known target name and "*" (every other target)."""
    return {*all_targets(), "*"}


def _one_or_by_target(fields: tuple[str, ...]) -> Any:
    """A discriminator: a table whose keys are all target names or "*" is per target; any other
    value (a table with one of the model's own keys, a text) is one value for every target."""

    def which(value: Any) -> str:
        if isinstance(value, dict) and value and not (set(value) & set(fields)) and set(value) <= target_keys():
            return "by-target"
        return "value"

    return Discriminator(which)


def per_target_of(tp: Any, fields: tuple[str, ...] = ()) -> Any:
    """tp, or a table keyed by target name (with an optional "*") of tp."""
    return Annotated[Union[Annotated[tp, Tag("value")], Annotated[dict[str, tp], Tag("by-target")]],  # noqa: UP007
                     _one_or_by_target(fields)]


class Strict(BaseModel):
    """Frozen, and an unknown key is an error (a typo would otherwise be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PerTarget = str | dict[str, str]
PerTargetList = list[str] | dict[str, list[str]]
ViaValue = Via | dict[str, Via]


class Command(Strict):
    """A command as someone types it, and through what identity it runs (lab.config.vias.VIAS).

    via: login (default: the admin's SSH login shell, the command as written), root (lab plumbing),
    sudo, su, su-login, runuser, runuser-login, setpriv, machinectl, ssh (a fresh SSH login as user),
    cron (a job in user's crontab run by cron), unit (a transient system service with User=; pam
    gives it PAMName=), run0, tty (a login at a terminal through agetty and login). command, via,
    user, title and why may each be a table per target; every text is a jinja2 template.
    properties: systemd unit properties for unit and run0 (systemd-run -p)."""

    command: PerTarget = Field(min_length=1)
    via: ViaValue = "login"
    user: PerTarget = ""
    title: PerTarget = ""
    why: PerTarget = ""
    pam: str = ""
    properties: list[str] = []


COMMAND_KEYS = tuple(Command.model_fields)
PerCommand = per_target_of(Command, COMMAND_KEYS)


class Wait(Strict):
    """Poll a root command until its output (stdout and stderr) matches `until`, at most `seconds`
    seconds, every `every` seconds: logind closing a session, a job ending. A wait that runs out
    leaves the try unmet and says what it last saw."""

    command: str = Field(min_length=1)
    until: str = Field(min_length=1)
    seconds: float = Field(default=30, gt=0, le=3600)
    every: float = Field(default=0.5, gt=0, le=60)
    title: str = ""


WAIT_KEYS = tuple(Wait.model_fields)
Waits = list[Wait] | Wait
PerWaits = per_target_of(Waits, WAIT_KEYS)

ExitValue = Literal["zero", "non-zero", "any"] | int | list[int]
PerExit = per_target_of(ExitValue)


class Evidence(Strict):
    """Commands whose outputs are shown side by side; expect says whether they must be identical.
    targets: only on these targets; commands (the list, or each command) may be per target."""

    title: PerTarget
    why: PerTarget = ""
    commands: per_target_of(list[PerCommand])  # type: ignore[valid-type]
    expect: Literal["same", "differ", "any"] | dict[str, Literal["same", "differ", "any"]] = "same"
    targets: list[str] = []


EVIDENCE_KEYS = tuple(Evidence.model_fields)


class OutcomeDef(Strict):
    """One of the scenario's outcome names: the words a presenter says (a template), and whether it
    is a failure (shown as one; whether the start command exits non-zero is the try's `exit`)."""

    words: str
    failure: bool = False


class Rule(Strict):
    """First matching rule wins. when: every field must match its regex (re.search, multiline);
    unless: no field may match. Fields: what observe printed as key=value, plus exit_code and output
    (stdout and stderr) of the start command. Regexes are templates (rendered with the vars)."""

    outcome: str
    when: dict[str, str] = {}
    unless: dict[str, str] = {}


class Observe(Strict):
    """How an outcome is observed: an optional root script run right after the start command."""

    script: str = ""
    rules: list[Rule] = Field(min_length=1)


class Try(Strict):
    """Fields shared by the baseline, variants, controls and fixes. Every field but vars may be a
    table per target. exit: what the start command's exit status must be ("zero", "non-zero", "any",
    a number or a list of numbers; default "any"), apart from which outcome is seen. wait: polled
    after the start, before observing. timeout: seconds for the start command (default: the
    command_timeout setting)."""

    title: PerTarget
    why: PerTarget = ""
    start: PerCommand | None = None  # type: ignore[valid-type]
    expect: PerTarget
    exit: PerExit = "any"  # type: ignore[valid-type]
    signature: PerTargetList = []  # regexes; when given for a target, one must be seen there
    wait: PerWaits = []  # type: ignore[valid-type]
    timeout: int | dict[str, int] | None = None
    vars: dict[str, Any] = {}


class Baseline(Try):
    """The baseline try: the command as the admin types it, with no fix applied. The Try fields, but start
    is required and title has a default."""

    title: PerTarget = "the command as the admin types it, no fix"
    start: PerCommand  # type: ignore[assignment,valid-type]


class Fix(Try):
    """A fix (a change that may make the bug go away), a variant (another way that also shows the
    bug) or a control (a way that must not show it): the same fields."""

    id: Annotated[str, Field(pattern=ID)]
    targets: list[str] = []
    apply: PerTarget = ""
    revert: PerTarget = ""


class UserSpec(Strict):
    """An unprivileged user and how it is made. create: useradd (home 0755 on Debian 12 and 13) or
    adduser (0700 homes on Debian 13); home_mode: chmod of the home after creation; shell: its login
    shell (/usr/sbin/nologin for a service user); groups: extra groups (made when missing); linger:
    enable lingering at provisioning (its systemd manager runs from boot)."""

    name: Annotated[str, Field(pattern=USER)]
    create: Literal["useradd", "adduser"] = "useradd"
    home_mode: Annotated[str, Field(pattern=r"^0?[0-7]{3}$")] = ""
    shell: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._/-]+$")] = "/bin/bash"
    groups: list[Annotated[str, Field(pattern=USER)]] = []
    linger: bool = False

    def __str__(self) -> str:
        return self.name


class Users(Strict):
    """admin logs in over SSH (the lab's key, passwordless sudo); unprivileged users (a name, or a
    table saying how it is made); ssh_login lists users who also get the lab's key."""

    admin: Annotated[str, Field(pattern=USER)] = "labadmin"
    unprivileged: list[UserSpec] = []
    ssh_login: list[Annotated[str, Field(pattern=USER)]] = []

    @field_validator("unprivileged", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @property
    def names(self) -> tuple[str, ...]:
        """The unprivileged users' names."""
        return tuple(u.name for u in self.unprivileged)

    def spec(self, name: str) -> UserSpec | None:
        """The unprivileged user called name (None: the admin, or no such user)."""
        return next((u for u in self.unprivileged if u.name == name), None)


class TargetSpec(Strict):
    """What differs on one target: packages, template variables, the versions command, a note
    explaining why this target's outcomes differ from the others."""

    packages: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]+$")]] = []
    vars: dict[str, Any] = {}
    versions: str = ""
    note: str = ""


class Provision(Strict):
    """A provisioning script (a template in the scenario folder or its shared folder), run as root."""

    script: str
    targets: list[str] = []


class ScenarioModel(Strict):
    """A scenario.toml as validated data (README: Write a scenario for your bug)."""

    id: Annotated[str, Field(pattern=ID)]
    title: str
    explanation: str
    sources: list[str] = []
    targets: dict[str, TargetSpec] = Field(min_length=1)
    users: Users = Users()
    vars: dict[str, Any] = {}
    versions: str = "uname -r"
    provision: list[Provision] = []
    evidence: per_target_of(list[Evidence], EVIDENCE_KEYS) = []  # type: ignore[valid-type]
    teardown: str = ""
    # how tries are kept apart: every try from the baseline snapshot, or the teardown between tries
    isolation: Literal["snapshot", "teardown"] = "snapshot"
    outcomes: dict[str, OutcomeDef] = Field(min_length=1)
    observe: Observe
    baseline: Baseline
    variants: list[Fix] = []
    controls: list[Fix] = []
    fixes: list[Fix] = []

    def tries(self) -> list[tuple[str, int, Fix]]:
        """(kind, index in its list, try) of every variant, control and fix, in the order they run."""
        return [(kind, i, t) for kind, group in (("variant", self.variants), ("control", self.controls),
                                                 ("fix", self.fixes)) for i, t in enumerate(group)]


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
        """The scenario's id (its scenario.toml's id, e.g. sudo-lxc-cgroups)."""
        return self.model.id

    @property
    def file(self) -> Path:
        """Its scenario.toml: <folder>/scenario.toml."""
        return self.folder / SCENARIO_FILE

    @property
    def target_names(self) -> tuple[str, ...]:
        """The names of the targets the scenario has a table for, in the order of its scenario.toml."""
        return tuple(self.model.targets)

    @property
    def shared(self) -> Path:
        """The user's own library next to the scenario folder (shared/), whether it exists or not."""
        return shared_folder(self.folder)

    def fixes_for(self, target: str) -> tuple[Fix, ...]:
        """Every try beyond the baseline that applies on target (variants, controls, fixes), in the
        order they run."""
        return tuple(f for _, _, f in self.model.tries() if not f.targets or target in f.targets)

    def kind(self, fix: Fix) -> str:
        """variant, control or fix."""
        return next(kind for kind, _, f in self.model.tries() if f is fix)

    def fix(self, target: str, fix_id: str) -> Fix:
        """The variant, control or fix with id fix_id that applies on target. Raises LabError (exit 2)
        naming the scenario, the id (with a did-you-mean) and the ids there are on target."""
        for f in self.fixes_for(target):
            if f.id == fix_id:
                return f
        ids = [f.id for f in self.fixes_for(target)]
        raise LabError(f"scenario {self.id} has no fix {fix_id!r} on target {target}{did_you_mean(fix_id, ids)}",
                       hint=f"fixes there: {', '.join(ids) or 'none'}")

    def packages(self, target: str) -> tuple[str, ...]:
        """The Debian packages the scenario adds on target (its targets.<target>.packages; the target's
        own packages are not included). KeyError for a target the scenario has no table for."""
        return tuple(self.model.targets[target].packages)

    def vars_for(self, target: str) -> dict[str, Any]:
        """Scenario vars with the target's vars laid over them."""
        return {**self.model.vars, **self.model.targets[target].vars}

    def provision_for(self, target: str) -> tuple[str, ...]:
        """Template names of the provisioning scripts on target (shared/NAME for the user's library)."""
        return tuple(template_name(self.folder, p.script) for p in self.model.provision
                     if not p.targets or target in p.targets)

    def versions_for(self, target: str) -> str:
        """The versions command (a shell template, run in the guest for the report) on target: the
        target's own versions, else the scenario's (default "uname -r"). KeyError for an unknown target."""
        return self.model.targets[target].versions or self.model.versions

    def outcome(self, name: str) -> OutcomeDef:
        """The definition of the outcome called name. KeyError for an undefined name (loading checks that
        every outcome the scenario uses is defined)."""
        return self.model.outcomes[name]

    def evidence_for(self, target: str) -> list[tuple[int, Evidence]]:
        """(index, block) of the evidence shown on target."""
        blocks = per_target(self.model.evidence, target, []) or []
        return [(i, ev) for i, ev in enumerate(blocks) if not ev.targets or target in ev.targets]


SHARED = "shared"


def shared_folder(folder: Path) -> Path:
    """A user's library of scripts for several scenarios: the folder `shared` next to them."""
    return folder.resolve().parent / SHARED


def template_name(folder: Path, rel: str) -> str:
    """The jinja2 name of a file key: the path itself inside the scenario folder, shared/PATH for a
    file of the shared folder next to it (e.g. ../shared/lxc.sh)."""
    path = (folder / rel).resolve()
    shared = shared_folder(folder)
    if not path.is_relative_to(folder.resolve()) and path.is_relative_to(shared):
        return f"{SHARED}/{path.relative_to(shared).as_posix()}"
    return rel


def per_target(value: Any, target: str, default: Any = None) -> Any:
    """A plain value, or a table keyed by target name with an optional "*" for every other target."""
    if isinstance(value, dict):
        return value.get(target, value.get("*", default))
    return value


def resolve_command(c: Command | dict[str, Command] | None, target: str) -> Command | None:
    """The command on target, every per-target field resolved to its plain value (None: none there)."""
    one = per_target(c, target)
    if one is None:
        return None
    return one.model_copy(update={k: per_target(getattr(one, k), target, "" if k != "via" else "login")
                                  for k in ("command", "via", "user", "title", "why")})


def evidence_commands(ev: Evidence, target: str) -> list[Command]:
    """The evidence block's commands on target, resolved."""
    out = []
    for c in per_target(ev.commands, target, []) or []:
        resolved = resolve_command(c, target)
        if resolved is not None:
            out.append(resolved)
    return out


def expected(t: Try, target: str) -> str:
    """The outcome name the try is expected to show on target."""
    return str(per_target(t.expect, target, ""))


def signatures(t: Try, target: str) -> tuple[str, ...]:
    """The try's signature regexes on target (templates, not rendered yet)."""
    return tuple(per_target(t.signature, target, []) or [])


def waits(t: Try, target: str) -> tuple[Wait, ...]:
    """The try's waits on target, in order."""
    found = per_target(t.wait, target, []) or []
    return (found,) if isinstance(found, Wait) else tuple(found)


def exit_codes(value: Any) -> str | tuple[int, ...]:
    """A try's `exit` on one target, normalised: "zero", "non-zero", "any" or a tuple of codes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return str(value or "any")


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

TRY_LISTS = ("variants", "controls", "fixes")


def locate(text: str, loc: Iterable[str | int]) -> int | None:
    """The line (1-based) where a key path such as ('fixes', 2, 'expect') is written, best effort.

    tomllib keeps no positions, so this walks the text: a key is found as `key =`, as part of a
    dotted key (`why.bookworm =`), inside an inline table or in a table header, the n-th element of
    an array of tables as the n-th `[[...key]]` header."""
    lines = text.splitlines()
    pos, prefix, found = 0, "", None
    parts = list(loc)
    for i, part in enumerate(parts):
        if isinstance(part, int):
            header = re.compile(rf"^\s*\[\[\s*{re.escape(prefix)}\s*\]\]")
            hits = [n for n in range(len(lines)) if header.match(lines[n])]
            if not hits and found is not None:  # an inline array: its n-th element opening a line
                hits = [n for n in range(found, len(lines)) if lines[n].lstrip().startswith("{")]
            if part < len(hits):
                pos = found = hits[part]
            continue
        prefix = f"{prefix}.{part}" if prefix and isinstance(parts[i - 1], str) else part
        name = rf"(\"{re.escape(part)}\"|{re.escape(part)})"
        key = re.compile(rf"(^\s*|[{{,.]\s*){name}\s*(=|\.)|^\s*\[\[?\s*[\w.\"*-]*{name}\s*\]\]?")
        for n in range(pos, len(lines)):
            if key.search(lines[n]):
                pos = found = n
                break
    return None if found is None else found + 1


def _dotted(loc: Iterable[str | int], raw: Any = None) -> str:
    """A key path as the user reads it: fixes[cgm].expect (a try by its id), evidence[0].title."""
    out = ""
    parts = list(loc)
    for i, part in enumerate(parts):
        if isinstance(part, int):
            label = str(part)
            parent = _at(raw, parts[:i])
            if i and parts[i - 1] in TRY_LISTS and isinstance(parent, list) and part < len(parent) \
                    and isinstance(parent[part], dict) and re.match(ID, str(parent[part].get("id", ""))):
                label = parent[part]["id"]
                same = [e for e in parent if isinstance(e, dict) and e.get("id") == label]
                if len(same) > 1 and parent[part].get("targets"):
                    label += "@" + ",".join(map(str, parent[part]["targets"]))
            out += f"[{label}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _at(raw: Any, loc: list[str | int]) -> Any:
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


TAGS = ("str", "int", "dict[str,str]", "list[str]", "dict[str,list[str]]", "value", "by-target", "list[int]",
        "Wait", "list[Wait]", "literal['zero','non-zero','any']", "dict[str,int]", "function-after[_names()]")


def _schema_problems(file: Path, text: str, raw: Any, exc: ValidationError) -> list[Problem]:
    errors = exc.errors()
    # a misspelt key shows as "unknown key" and as "required key missing": say it once
    unknown = {(tuple(e["loc"][:-1]), str(e["loc"][-1])) for e in errors if e["type"] == "extra_forbidden"}
    problems, said = [], set()

    def bare(loc: tuple) -> tuple:  # the location without pydantic's union-branch labels
        return tuple(x for x in loc if not (isinstance(x, str) and x.startswith(("literal[", "union[", "dict["))))

    # a per-target value (one value or a table) that is neither: the value's own error says it; the
    # table branch's "should be a valid dictionary" only repeats it
    said_plainly = {bare(tuple(e["loc"])) for e in errors if e["type"] != "dict_type"}
    for err in errors:
        if err["type"] == "dict_type" and bare(tuple(err["loc"])) in said_plainly:
            continue
        if err["type"] == "missing" and any(parent == tuple(err["loc"][:-1]) and
                                            did_you_mean(key, [str(err["loc"][-1])]) for parent, key in unknown):
            continue
        loc = [p for p in err["loc"] if not (isinstance(p, str) and (p in TAGS or p.startswith(("literal[",
                                                                                                  "union["))))]
        message = err["msg"]
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            key = str(loc[-1])
            model = _model_at(loc[:-1])
            known = list(model.model_fields) if model else []
            message = f"unknown key {key!r}{did_you_mean(key, known)}" + (f"; known: {', '.join(known)}"
                                                                          if known else "")
            if key in target_keys() and model is not None:
                message = (f"{_dotted(loc[:-1], raw) or 'this table'} cannot differ by target ({key!r} is a target); "
                           f"its keys are: {', '.join(known)}")
        elif err["type"] == "missing":
            message = f"required key {loc[-1]!r} is missing"
        elif isinstance(value, dict) and value and set(value) <= target_keys():
            message = ("cannot differ by target: give one value (a template may use {{ target.name }}), "
                       "or separate entries with targets = [...]")
        elif err["type"] in ("literal_error", "string_pattern_mismatch", "enum"):
            message = f"{value!r} is not valid: {message}"
            choices = err.get("ctx", {}).get("expected", "")
            if err["type"] == "literal_error" and isinstance(value, str):
                message += did_you_mean(value, re.findall(r"'([^']+)'", str(choices)))
        where = _dotted(loc, raw)
        if (where, message) in said:
            continue
        said.add((where, message))
        problems.append(Problem(file, where, message, locate(text, loc)))
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


LOGIN_SHELL_REFUSES = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false")
RULE_BUILTIN_FIELDS = ("exit_code", "output")


def _cross_problems(folder: Path, text: str, raw: Any, m: ScenarioModel) -> list[Problem]:
    file = folder / SCENARIO_FILE
    out: list[Problem] = []

    def add(loc: list[str | int], message: str) -> None:
        problem = Problem(file, _dotted(loc, raw), message, locate(text, loc))
        if problem not in out:  # the same on several targets: said once
            out.append(problem)

    known_targets = all_targets()
    for name in m.targets:
        if name not in known_targets:
            add(["targets", name], f"unknown target {name!r}{did_you_mean(name, known_targets)}; "
                                   f"known: {', '.join(known_targets)}")
    supported = [t for t in m.targets if t in known_targets]

    def keys_ok(loc: list[str | int], value: Any) -> None:
        """A per-target table names only the scenario's targets and "*"."""
        if isinstance(value, dict):
            for key in value:
                if key != "*" and key not in m.targets:
                    add([*loc, key], f"target {key!r} is not one of the scenario's: {', '.join(m.targets)}"
                                     f"{did_you_mean(key, m.targets)}")

    def check_file(loc: list[str | int], rel: str) -> None:
        if not rel:
            return
        path = (folder / rel).resolve()
        shared = shared_folder(folder)
        if not (path.is_relative_to(folder.resolve()) or path.is_relative_to(shared)):
            add(loc, f"{rel!r} points outside the scenario folder and its shared folder ({shared})")
        elif TEMPLATE_MARK.search(rel):
            add(loc, f"{rel!r}: a file name is not a template; name the file as it is")
        elif not path.is_file():
            add(loc, f"file {rel!r} does not exist in {path.parent}")

    for i, p in enumerate(m.provision):
        check_file(["provision", i, "script"], p.script)
        for t in p.targets:
            if t not in m.targets:
                add(["provision", i, "targets"], f"target {t!r} is not one of the scenario's: {', '.join(m.targets)}")
    check_file(["teardown"], m.teardown)
    check_file(["observe", "script"], m.observe.script)

    # values are data for the templates, not templates: {{ }} in one would reach the guest as it is
    def no_template(loc: list[str | int], value: Any) -> None:
        if isinstance(value, str) and TEMPLATE_MARK.search(value):
            add(loc, f"{value!r} is a value, not a template: it is used as written, so the template text would "
                     "stay in it (use the value itself)")
        elif isinstance(value, dict):
            for k, v in value.items():
                no_template([*loc, k], v)
        elif isinstance(value, list):
            for v in value:
                no_template(loc, v)

    no_template(["vars"], m.vars)
    for name, spec in m.targets.items():
        no_template(["targets", name, "vars"], spec.vars)
    for name in m.outcomes:
        no_template(["outcomes", name], name)

    users = {m.users.admin, *m.users.names}
    if m.users.admin in m.users.names:
        add(["users", "unprivileged"], f"the admin {m.users.admin!r} cannot also be an unprivileged user")
    for u in m.users.ssh_login:
        if u not in users:
            add(["users", "ssh_login"], f"{u!r} is not the admin nor an unprivileged user")
    for i, spec in enumerate(m.users.unprivileged):
        if spec.linger and any(known_targets[t].systemd == 0 for t in supported):
            without = ", ".join(t for t in supported if not known_targets[t].systemd)
            add(["users", "unprivileged", i, "linger"], f"{spec.name}: linger needs systemd; {without} has none")

    def check_command(loc: list[str | int], c: Any, targets: list[str], exit_spec: Any = None) -> None:
        if c is None:
            return
        keys_ok(loc, c)
        for target in targets:
            one = resolve_command(c, target)
            if one is None:
                add(loc, f"no command for target {target!r} (add {target} = {{ ... }} or \"*\")")
                continue
            at = [*loc, target] if isinstance(c, dict) else loc
            raw_one = per_target(c, target)
            for key in ("command", "via", "user", "title", "why"):
                keys_ok([*at, key], getattr(raw_one, key))
            via, user = one.via, one.user
            facts = vias.VIAS[via]
            tgt = known_targets[target]
            templated = bool(TEMPLATE_MARK.search(user))
            if not facts.needs_user and user:
                add([*at, "user"], f"via = {via!r} runs as the admin or root; drop user or pick another via")
            if facts.needs_user and not templated:
                if not user:
                    add([*at, "user"], f"via = {via!r} needs user = one of {', '.join(sorted(users))}")
                elif not re.match(USER, user):
                    add([*at, "user"], f"{user!r} is not a Unix user name (lower-case letters, digits, '_', '-')")
                elif user not in users:
                    add([*at, "user"], f"{user!r} is not a user of the scenario ({', '.join(sorted(users))})")
            if via == "ssh" and user and not templated and user not in m.users.ssh_login and user != m.users.admin:
                add([*at, "user"], f"via = 'ssh' as {user!r}: add it to users.ssh_login so it gets the lab's key")
            if one.pam and via != "unit":
                add([*at, "pam"], f"pam (PAMName=) is for via = 'unit'; via = {via!r} has its own PAM stack "
                                  f"({facts.pam or 'none'})")
            if one.properties and via not in ("unit", "run0"):
                add([*at, "properties"], f"properties are systemd-run -p for via = 'unit' or 'run0', not {via!r}")
            if facts.min_systemd and tgt.systemd < facts.min_systemd:
                add([*at, "via"], f"via = {via!r} on {target}: it came with systemd {facts.min_systemd}, "
                                  f"{target} has {'systemd ' + str(tgt.systemd) if tgt.systemd else 'no systemd'} "
                                  f"(give this target another start: {loc[-1]}.{target} = {{ ... }})")
            have = {*tgt.packages, *m.targets[target].packages}
            for pkg in facts.packages:
                if pkg not in have:
                    add([*at, "via"], f"via = {via!r} needs the package {pkg!r} on {target}: "
                                      f"add it to targets.{target}.packages")
            spec = m.users.spec(user)
            if facts.login_shell and spec is not None and spec.shell in LOGIN_SHELL_REFUSES:
                add([*at, "via"], f"via = {via!r} runs {user}'s login shell, {spec.shell}, which refuses "
                                  "every command; use sudo, setpriv, unit or cron for a service user")
            if exit_spec is not None and facts.exit_status == "zero":
                codes = exit_codes(per_target(exit_spec, target, "any"))
                if codes == "non-zero" or (isinstance(codes, tuple) and 0 not in codes):
                    add([*at, "via"], f"expects a non-zero exit through via = {via!r}, whose exit status is always "
                                      "0: judge it by output or observe fields and say exit = \"any\"")

    keys_ok(["evidence"], m.evidence if isinstance(m.evidence, dict) else None)
    for target in supported:
        blocks = per_target(m.evidence, target, []) or []
        for i, ev in enumerate(blocks):
            loc: list[str | int] = ["evidence", *([target] if isinstance(m.evidence, dict) else []), i]
            for t in ev.targets:
                if t not in m.targets:
                    add([*loc, "targets"], f"target {t!r} is not one of the scenario's: {', '.join(m.targets)}")
            if ev.targets and target not in ev.targets:
                continue
            keys_ok([*loc, "commands"], ev.commands)
            keys_ok([*loc, "expect"], ev.expect)
            commands = per_target(ev.commands, target, []) or []
            if len(commands) < 2:
                add([*loc, "commands"], f"evidence shows commands side by side: give at least two on {target}")
            for j, c in enumerate(commands):
                check_command([*loc, "commands", j], c, [target])

    outcomes = set(m.outcomes)
    rules = m.observe.rules
    for i, rule in enumerate(rules):
        if rule.outcome not in outcomes:
            add(["observe", "rules", i, "outcome"], f"outcome {rule.outcome!r} is not defined in [outcomes]"
                                                    f"{did_you_mean(rule.outcome, outcomes)}")
        if not rule.when and not rule.unless and i < len(rules) - 1:
            add(["observe", "rules", i], f"rule {i} ({rule.outcome}) has no when or unless, so it matches everything: "
                                         f"the {len(rules) - 1 - i} rule(s) after it can never match; put it last")
        for field, regex in {**rule.when, **rule.unless}.items():
            if not m.observe.script and field not in RULE_BUILTIN_FIELDS:
                add(["observe", "rules", i], f"field {field!r}: there is no observe script to print it, so this "
                                             f"rule can never match; the fields are {', '.join(RULE_BUILTIN_FIELDS)}")
            if TEMPLATE_MARK.search(regex):
                continue  # compiled once rendered (lab.check renders it for every target)
            try:
                re.compile(regex)
            except re.error as exc:
                add(["observe", "rules", i], f"regex for {field!r} does not compile: {exc}")

    def check_try(loc: list[str | int], t: Try, targets: list[str], kind: str) -> None:
        check_command([*loc, "start"], t.start if t.start is not None else m.baseline.start, targets, t.exit)
        for key in ("title", "why", "expect", "exit", "signature", "wait", "timeout", "apply", "revert"):
            keys_ok([*loc, key], getattr(t, key, None))
        for target in targets:
            name = expected(t, target)
            if not name:
                add([*loc, "expect"], f"no expected outcome for target {target!r} (add {target} = \"...\" or \"*\")")
            elif name not in outcomes:
                add([*loc, "expect"], f"outcome {name!r} is not defined in [outcomes]{did_you_mean(name, outcomes)}")
            elif kind == "control" and name == expected(m.baseline, target):
                add([*loc, "expect"], f"a control must not show the bug, but it expects {name!r} on {target}, the "
                                      "baseline's outcome there; make it a variant (another way to the bug)")
            for w in waits(t, target):
                try:
                    re.compile(w.until)
                except re.error as exc:
                    add([*loc, "wait"], f"regex {w.until!r} does not compile: {exc}")
        patterns = t.signature.values() if isinstance(t.signature, dict) else [t.signature]
        for group in patterns:
            for regex in group:
                if TEMPLATE_MARK.search(regex):
                    continue
                try:
                    re.compile(regex)
                except re.error as exc:
                    add([*loc, "signature"], f"regex {regex!r} does not compile: {exc}")

    check_try(["baseline"], m.baseline, supported, "baseline")
    seen: dict[tuple[str, str], str] = {}
    for kind, i, fix in m.tries():
        loc: list[str | int] = [f"{kind}s" if kind != "fix" else "fixes", i]
        for t in fix.targets:
            if t not in m.targets:
                add([*loc, "targets"], f"target {t!r} is not one of the scenario's: {', '.join(m.targets)}")
        on = [t for t in (fix.targets or supported) if t in supported]
        check_try(loc, fix, on, kind)
        for target in on:
            apply, revert = per_target(fix.apply, target, ""), per_target(fix.revert, target, "")
            check_file([*loc, "apply"], apply)
            check_file([*loc, "revert"], revert)
            if apply and not revert:
                add([*loc, "revert"], f"{kind} {fix.id!r} applies a change on {target} but has no revert script "
                                      "there; every applied change must be reverted to prove the baseline again")
        if fix.id in ("baseline", "baseline-restored", "evidence", "versions", "preflight"):
            add([*loc, "id"], f"id {fix.id!r} is reserved")
        for t in on:
            if (t, fix.id) in seen:
                add([*loc, "id"], f"id {fix.id!r} appears twice for target {t!r} (also {seen[(t, fix.id)]})")
            seen[(t, fix.id)] = _dotted(loc, raw)
    return out


# --- reading the file --------------------------------------------------------------------------


def _first_line(lines: list[str], before: int | None, pattern: str) -> int | None:
    """The number (from 1) of the first of lines, above line `before`, that matches pattern; None when none does."""
    return next((i + 1 for i, text in enumerate(lines[: (before or 1) - 1]) if re.match(pattern, text)), None)


def toml_problem(file: Path, text: str, exc: tomllib.TOMLDecodeError) -> Problem:
    """A TOML syntax error as one line that names the key, and for a key given twice (a value,
    then a table under it) where the first was set."""
    m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
    line = int(m.group(1)) if m else None
    reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
    lines = text.splitlines()
    key = ""
    if line and line <= len(lines):
        km = re.match(r"\s*\[*\s*([A-Za-z0-9_.\"*-]+?)\s*(\]|=)", lines[line - 1])
        key = km.group(1).replace('"', "") if km else ""
    if key and "overwrite" in reason.lower():
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:n])
            first = _first_line(lines, line, rf"\s*{re.escape(head)}\s*=")
            if first:
                return Problem(file, key, f"{head!r} already has a value (line {first}); a key is either one value "
                                          f"or a table of per-target values ({head}.bookworm = ..., {head}.\"*\" = "
                                          f"...), not both", line)
        first = _first_line(lines, line, rf"\s*{re.escape(key)}\.")
        if first:
            return Problem(file, key, f"{key!r} is already a table of per-target values (line {first}); a key is "
                                      f"either one value or per-target values ({key}.bookworm = ..., "
                                      f"{key}.\"*\" = ...), not both", line)
        return Problem(file, key, f"{key!r} is given twice (TOML: {reason})", line)
    return Problem(file, key, f"not valid TOML: {reason}", line)


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
        return None, [toml_problem(file, text, exc)]
    try:
        model = ScenarioModel.model_validate(raw)
    except ValidationError as exc:
        return None, _schema_problems(file, text, raw, exc)
    problems = _cross_problems(folder, text, raw, model)
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
