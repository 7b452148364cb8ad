"""Lab settings: lab.toml < LAB_* environment < task flags, validated before anything runs.

Each key is declared once, as a field of Settings: its default, its check, and when it applies
(`applies`): RUN keys (timeouts, fixes, keep_reports) take effect at once, also on a lab that is
already up; VM keys (target, scenario, memory, cpus, libvirt_uri, the box and its sources) were
frozen into the lab's VM by lab.up, and a new value is refused there (for_lab) with lab.destroy as
the way on; `name` names the lab. Every value that later reaches a shell script or the Vagrantfile
is checked here against a strict pattern, so that quoting in the templates is a second line of
defence, not the only one.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lab.config import libvirt_uri as uris
from lab.config import scenario as scenarios
from lab.config.targets import Target, all_targets, get_target
from lab.core.errors import FrozenSetting, LabError, SettingError, did_you_mean
from lab.core.paths import LAB_NAME

IDENT = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
URL_CHARS = re.compile(r"^[A-Za-z0-9._~:/?#\[\]@!&()*+,;=%-]+$")
BOX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
PROVIDERS = ("auto", "libvirt", "virtualbox")
ENV_PREFIX = "LAB_"


def _int_in(lo: int, hi: int) -> Callable[[str, object, str], int]:
    def check(key: str, value: object, source: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise SettingError(key, value, f"a whole number from {lo} to {hi}", source)
        try:
            number = int(value)
        except ValueError:
            raise SettingError(key, value, f"a whole number from {lo} to {hi}", source) from None
        if not lo <= number <= hi:
            raise SettingError(key, value, f"a whole number from {lo} to {hi}", source)
        return number

    return check


def _pattern(regex: re.Pattern[str], allowed: str) -> Callable[[str, object, str], str]:
    def check(key: str, value: object, source: str) -> str:
        if not isinstance(value, str) or not regex.match(value):
            raise SettingError(key, value, allowed, source)
        return value

    return check


def _choice(choices: tuple[str, ...] | Callable[[], tuple[str, ...]]) -> Callable[[str, object, str], str]:
    def check(key: str, value: object, source: str) -> str:
        allowed = choices() if callable(choices) else choices
        if value not in allowed:
            hint = did_you_mean(str(value), allowed)
            raise SettingError(key, value, f"one of {', '.join(allowed)}{hint}", source)
        return str(value)

    return check


def _url(key: str, value: object, source: str) -> str:
    allowed = "an http:// or https:// URL without spaces or shell characters"
    if not isinstance(value, str) or not URL_CHARS.match(value):
        raise SettingError(key, value, allowed, source)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingError(key, value, allowed, source)
    return value.rstrip("/")


def _libvirt_uri(key: str, value: object, source: str) -> str:
    if not isinstance(value, str):
        raise SettingError(key, value, uris.ALLOWED, source)
    try:
        uri = uris.parse(value)
    except uris.BadUri as exc:
        raise SettingError(key, value, f"{uris.ALLOWED} (here: {exc})", source) from None
    for param, path in (("keyfile", uri.keyfile), ("known_hosts", uri.known_hosts)):
        if path and not Path(path).is_file():
            raise SettingError(key, value, f"{uris.ALLOWED} (here: {param} {path} does not exist)", source)
    return value


def _fixes(key: str, value: object, source: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise SettingError(key, value, "a list of fix ids (comma-separated in LAB_FIXES)", source)
    for v in value:
        if not IDENT.match(v):
            raise SettingError(key, v, "fix ids such as pam-systemd, cgm", source)
    return tuple(dict.fromkeys(value))


def _scenario(key: str, value: object, source: str, base: Path | None = None) -> str:
    """A shipped scenario id, or a folder with a scenario.toml (kept as an absolute path; relative
    to the folder of lab.toml when it comes from there, else to the current directory)."""
    if not isinstance(value, str) or not value or any(c in value for c in "\n\0"):
        raise SettingError(key, value, "a shipped scenario id or a folder path", source)
    try:
        folder = scenarios.resolve(value, base)
    except LabError as exc:
        raise SettingError(key, value, f"{exc.message}; {exc.hint}", source) from None
    return value if value in scenarios.shipped() else str(folder)


def _box(key: str, value: object, source: str) -> str:
    allowed = "'' (build the box), an existing .box file, or a box name like owner/name"
    if value == "":
        return ""
    if not isinstance(value, str):
        raise SettingError(key, value, allowed, source)
    if value.endswith(".box"):
        path = Path(value).expanduser()
        if not path.is_file():
            raise SettingError(key, value, f"{allowed} (no such file: {path})", source)
        if not URL_CHARS.match(str(path.resolve())):
            raise SettingError(key, value, f"{allowed} (a path without spaces or shell characters)", source)
        return str(path.resolve())
    if not BOX_NAME.match(value):
        raise SettingError(key, value, allowed, source)
    return value


RUN = "run"  # applies at once, also to a lab that is up
VM = "vm"  # frozen into the lab's VM at lab.up: a new value needs lab.destroy, lab.up
NAMES = "names"  # names the lab: chooses which lab a command acts on


def key(default: object, check: Callable[..., object], applies: str, help: str = "") -> Any:
    """A settings key: its default, its check (key, value, source) -> value, when it applies, and
    its help (shown for its task flag, --KEY, where a task has one)."""
    return field(default=default, metadata={"check": check, "applies": applies, "help": help})


@dataclass(frozen=True)
class Settings:
    """The validated settings of one lab; the only thing the engine reads. Timeouts in seconds,
    memory in MiB."""

    target: str = key("trusty", _choice(lambda: tuple(all_targets())), VM,
                      "target to use: trusty, bookworm, bookworm-unified or trixie (lab.toml: target; "
                      "see lab.scenarios)")
    scenario: str = key(scenarios.DEFAULT_SCENARIO, _scenario, VM,
                        "a shipped scenario id (see lab.scenarios) or a scenario folder (lab.toml: scenario)")
    provider: str = key("auto", _choice(PROVIDERS), VM, "virtualbox, libvirt or auto (lab.toml: provider)")
    name: str = key("", _pattern(LAB_NAME, "lower-case letters, digits and '-', starting with a letter, at most 48"),
                    NAMES, "lab name, default <scenario>-<target>; state lives in .lab/NAME/")
    cpus: int = key(2, _int_in(1, 16), VM)
    memory: int = key(1024, _int_in(512, 32768), VM)
    fixes: tuple[str, ...] = key((), _fixes, RUN)
    debian_mirror: str = key("http://deb.debian.org/debian", _url, VM)
    ubuntu_mirror: str = key("http://archive.ubuntu.com/ubuntu", _url, VM)
    ubuntu_old_mirror: str = key("http://old-releases.ubuntu.com/ubuntu", _url, VM)
    ppa_url: str = key("http://ppa.launchpad.net/ubuntu-lxc/lxc-stable/ubuntu", _url, VM)
    iso_url: str = key("https://releases.ubuntu.com/14.04/ubuntu-14.04.6-server-amd64.iso", _url, VM)
    box: str = key("", _box, VM)
    boot_timeout: int = key(900, _int_in(30, 7200), RUN)
    # an image VM's boot printing nothing on its console this long is a stall (tried once more)
    boot_quiet_timeout: int = key(180, _int_in(10, 3600), RUN)
    ssh_timeout: int = key(300, _int_in(5, 3600), RUN)
    command_timeout: int = key(300, _int_in(5, 3600), RUN)
    build_timeout: int = key(3600, _int_in(60, 14400), RUN)
    libvirt_uri: str = key(uris.LOCAL_URI, _libvirt_uri, VM,
                           "libvirt host: qemu:///system (default) or qemu+ssh://[user@]host[:port]/system"
                           "[?keyfile=PATH&known_hosts=PATH] (lab.toml: libvirt_uri)")
    libvirt_timeout: int = key(60, _int_in(5, 600), RUN)
    keep_reports: int = key(20, _int_in(1, 10000), RUN)  # verify runs kept in .lab/<name>/reports/ (latest stays)
    reach_timeout: int = key(20, _int_in(5, 3600), RUN)  # how long a lab that is up may leave SSH unanswered

    @cached_property
    def libvirt(self) -> uris.LibvirtUri:
        """The libvirt URI, parsed (it was checked when the settings were loaded)."""
        return uris.parse(self.libvirt_uri)

    @cached_property
    def target_data(self) -> Target:
        """The target the setting target names (lab.config.targets), looked up once per Settings value.
        LabError (exit 2, with a did-you-mean) for an unknown name; a loaded Settings was checked already."""
        return get_target(self.target)

    @cached_property
    def scenario_data(self) -> scenarios.Scenario:
        """The scenario, loaded and validated once per Settings value: the one load() that checked
        these settings (_finish) seeds it, so a command reads its scenario file once and every
        layer sees the same scenario even if the file is edited while the command runs."""
        return scenarios.load(self.scenario)

    @cached_property
    def fix_ids(self) -> tuple[str, ...]:
        """The fixes to try: the chosen ones, or every fix of the scenario on the target."""
        return self.fixes or tuple(f.id for f in self.scenario_data.fixes_for(self.target))

    def to_json(self) -> str:
        """Every setting as a JSON object (keys sorted, indented 2): what lab.up writes to the lab's
        settings.json (lab.machine.lifecycle)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)


KEYS = tuple(f.name for f in fields(Settings))
DEFAULTS = Settings()
CHECKS: dict[str, Callable[[str, object, str], object]] = {f.name: f.metadata["check"] for f in fields(Settings)}
APPLIES: dict[str, str] = {f.name: f.metadata["applies"] for f in fields(Settings)}
HELP: dict[str, str] = {f.name: f.metadata["help"] for f in fields(Settings) if f.metadata["help"]}


def read_config_file(path: Path) -> dict[str, object]:
    """The raw keys of lab.toml; a missing default file is fine, an unreadable one is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(f"settings file {path} does not exist",
                       hint="check the path; without --config, ./lab.toml is read (and may be absent)") from None
    except OSError as exc:
        raise LabError(f"settings file {path} cannot be read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LabError(f"settings file {path} is not valid TOML: {exc}", hint="fix the line named") from None
    for key in data:
        if key not in KEYS:
            raise LabError(
                f"settings file {path}: unknown key {key!r}{did_you_mean(key, KEYS)}",
                hint=f"known keys: {', '.join(KEYS)}",
            )
    return data


def env_overrides(environ: Mapping[str, str]) -> dict[str, object]:
    """LAB_<KEY> variables; an unknown LAB_ variable is an error (a typo would be silently ignored)."""
    found: dict[str, object] = {}
    env_keys = {ENV_PREFIX + k.upper(): k for k in KEYS}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        if var not in env_keys:
            raise LabError(f"unknown environment variable {var}{did_you_mean(var, env_keys)}",
                           hint=f"known: {', '.join(env_keys)}")
        found[env_keys[var]] = value
    return found


Given = dict[str, tuple[object, str]]  # key -> (checked value, where it came from: lab.toml, LAB_X, --flag)
Change = tuple[str, str, object, object]  # key, where the new value came from, frozen value, new value


def given(
    config: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, object | None] | None = None,
    project_dir: Path | None = None,
) -> Given:
    """Every key set in lab.toml (or config), LAB_* or flags, later layers winning, each checked, with
    where it came from. Raises LabError (SettingError) on the first bad one."""
    project_dir = project_dir or Path.cwd()
    environ = os.environ if environ is None else environ
    layers: list[tuple[str, Mapping[str, object]]] = []
    if config is not None:
        layers.append((str(config), read_config_file(config)))
    elif (project_dir / "lab.toml").is_file():
        layers.append(("lab.toml", read_config_file(project_dir / "lab.toml")))
    layers.append(("environment", {f"LAB_{k.upper()}": v for k, v in env_overrides(environ).items()}))
    layers.append(("flags", {k: v for k, v in (flags or {}).items() if v is not None}))
    merged: dict[str, tuple[object, str]] = {}
    for source, layer in layers:
        for key, value in layer.items():
            plain = key.removeprefix(ENV_PREFIX).lower() if source == "environment" else key
            if plain not in KEYS:
                raise LabError(f"unknown setting {plain!r}{did_you_mean(plain, KEYS)}")
            label = key if source == "environment" else (f"--{key.replace('_', '-')}" if source == "flags" else source)
            merged[plain] = (value, label)
    checked: Given = {}
    for key, (value, source) in merged.items():
        if key == "scenario" and source in ("lab.toml", str(config)):
            checked[key] = (_scenario(key, value, source, (config.parent if config else project_dir).resolve()), source)
        else:
            checked[key] = (CHECKS[key](key, value, source), source)
    return checked


def load(
    config: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, object | None] | None = None,
    project_dir: Path | None = None,
) -> Settings:
    """Merge lab.toml < LAB_* < flags and validate every value; raise LabError on the first bad one."""
    found = given(config, environ, flags, project_dir)
    return _finish({k: v for k, (v, _) in found.items()}, found)


def _counts(key: str, source: str) -> bool:
    """Whether a key given now is held against a lab that is up: the keys that choose a lab (target,
    scenario) only when given as a flag of this command; from lab.toml or LAB_* they are defaults for
    labs to come, and the lab was chosen by name."""
    return APPLIES[key] != NAMES and (key not in ("target", "scenario") or source.startswith("--"))


def layer(source: str) -> int:
    """How strong the place a value came from is: 0 the default, 1 a settings file, 2 LAB_*, 3 a flag."""
    return 0 if not source else 3 if source.startswith("--") else 2 if source.startswith(ENV_PREFIX) else 1


def sources(now: Given) -> dict[str, str]:
    """{key: where it came from} of the keys given: what lab.up records next to the values it froze."""
    return {k: source for k, (_, source) in now.items()}


def frozen_changes(frozen: Settings, now: Given, at_up: Mapping[str, str] | None = None) -> list[Change]:
    """(key, source, frozen value, value given now) for each VM key given now with another value than
    the lab was brought up with, from a place at least as strong as the one that set it at up
    (at_up: sources() recorded by lab.up; a lab without the record counts as lab.toml's): a value
    in lab.toml is not held against a lab brought up with LAB_MEMORY=2048, an edited lab.toml is."""
    recorded = at_up if at_up is not None else dict.fromkeys(KEYS, "lab.toml")
    return [(k, source, getattr(frozen, k), value) for k, (value, source) in now.items()
            if _counts(k, source) and APPLIES[k] == VM and value != getattr(frozen, k)
            and layer(source) >= layer(recorded.get(k, ""))]


def for_lab(frozen: Settings, now: Given, refuse: bool = True, at_up: Mapping[str, str] | None = None) -> Settings:
    """The settings a lab that is up runs with: what lab.up froze, with the RUN keys given now
    (lab.toml, LAB_*, flags) applied. A VM key given now with another value (frozen_changes) is
    refused (FrozenSetting, exit 2, naming both values and lab.destroy); with refuse=False it is
    left as frozen (lab.status, lab.destroy). Raises SettingError when a RUN key does not fit the
    lab (a fix its scenario does not have on its target)."""
    changed = frozen_changes(frozen, now, at_up)
    if changed and refuse:
        key_, source, was, value = changed[0]
        raise FrozenSetting(key_, source, was, value, frozen.name)
    runtime = {k: (v, source) for k, (v, source) in now.items() if APPLIES[k] == RUN}
    if not runtime:
        return frozen
    values = {**asdict(frozen), **{k: v for k, (v, _) in runtime.items()}}
    return _finish(values, runtime)


def _finish(values: dict[str, object], merged: Mapping[str, tuple[object, str]]) -> Settings:
    """Cross-key checks: the scenario loads and supports the target; name defaults to
    <scenario>-<target>; fixes and provider must fit the target."""
    target = get_target(str(values.get("target", DEFAULTS.target)))
    scenario = scenarios.load(str(values.get("scenario", DEFAULTS.scenario)))
    if target.name not in scenario.target_names:
        source = merged.get("target", (None, "lab.toml default"))[1]
        raise SettingError("target", target.name, f"a target of scenario {scenario.id}: "
                           f"{', '.join(scenario.target_names)}", source)
    values.setdefault("name", f"{scenario.id}-{target.name}"[:48].rstrip("-"))
    fix_ids = [f.id for f in scenario.fixes_for(target.name)]
    for fix_id in values.get("fixes", ()):  # type: ignore[union-attr]
        if fix_id not in fix_ids:
            source = merged.get("fixes", (None, "fixes"))[1]
            raise SettingError("fixes", fix_id, f"fixes of scenario {scenario.id} on {target.name}: "
                               f"{', '.join(fix_ids)}{did_you_mean(str(fix_id), fix_ids)}", source)
    provider = values.get("provider", DEFAULTS.provider)
    if provider != "auto" and provider not in target.providers:
        raise SettingError("provider", provider, f"for target {target.name}: {', '.join(target.providers)}",
                           merged["provider"][1])
    checked = Settings(**values)  # type: ignore[arg-type]
    checked.__dict__["scenario_data"] = scenario  # cached_property's own slot: the load above, once
    return checked


def from_json(text: str, source: str) -> Settings:
    """Settings saved by lab.up, re-validated (the file may have been edited by hand)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabError(f"{source} is not valid JSON: {exc}", hint="run lab.up again or delete it") from None
    if not isinstance(raw, dict):
        raise LabError(f"{source} does not hold settings", hint="run lab.up again or delete it")
    merged = {k: (v, source) for k, v in raw.items()}
    for key in raw:
        if key not in KEYS:
            raise LabError(f"{source}: unknown key {key!r}", hint="run lab.up again or delete it")
    values = {k: CHECKS[k](k, v, source) for k, v in raw.items()}
    return _finish(values, merged)
