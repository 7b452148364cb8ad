"""Targets are data: one TOML file per target, loaded into frozen dataclasses.

Adding a target means adding a file here (and its templates); the engine does not change.
Texts may use the placeholders {admin}, {user} and {container}; see Target.text().
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources

from lab.errors import LabError, did_you_mean


class Outcome(StrEnum):
    """What lxc-start did, as observed in the guest."""

    FAILING = "failing"  # lxc-start failed
    RUNNING = "running"  # the container runs and its memory limit (if any) is in force
    UNLIMITED = "unlimited"  # the container runs but its memory limit was silently not applied
    ERROR = "error"  # the step itself could not be carried out


OUTCOME_WORDS = {
    Outcome.FAILING: "fails",
    Outcome.RUNNING: "runs",
    Outcome.UNLIMITED: "runs without its memory limit",
    Outcome.ERROR: "could not be carried out",
}


@dataclass(frozen=True)
class Stage:
    """Provisioning scripts run together; a reboot may follow (trusty's kernel switch)."""

    stage: str
    scripts: tuple[str, ...]
    reboot: bool = False


@dataclass(frozen=True)
class Fix:
    """One way to make lxc-start work, with the outcome measured (or reported) for this target."""

    id: str
    title: str
    why: str
    expected: Outcome
    start: str = "fixes/sudo-start.sh"
    apply: str = ""
    revert: str = ""
    signature: tuple[str, ...] = ()
    pam_lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    family: str
    release: str
    box_builder: str
    buildable_here: bool
    providers: tuple[str, ...]
    cgroup_layout: str
    kernel_package: str
    kernel_prefix: str
    kernel_cmdline: str
    packages: tuple[str, ...]
    idmap_key: str
    log_keys: tuple[str, str]  # lxc >= 2.1: lxc.log.file/level; lxc 1.x-2.0: lxc.logfile/loglevel
    container_template: str
    memory_limit_key: str
    memory_limit_bytes: int
    container_config: tuple[str, ...]
    provision: tuple[Stage, ...]
    versions_command: str
    baseline: Fix
    fixes: tuple[Fix, ...]

    def fix(self, fix_id: str) -> Fix:
        for f in self.fixes:
            if f.id == fix_id:
                return f
        raise LabError(
            f"target {self.name!r} has no fix {fix_id!r}{did_you_mean(fix_id, self.fix_ids)}",
            hint=f"known fixes: {', '.join(self.fix_ids)}",
        )

    @property
    def fix_ids(self) -> tuple[str, ...]:
        return tuple(f.id for f in self.fixes)


def _fix(raw: dict, default_id: str = "") -> Fix:
    raw = dict(raw)
    raw.setdefault("id", default_id)
    raw.setdefault("title", "the command as the admin types it, no fix")
    raw["expected"] = Outcome(raw["expected"])
    for key in ("signature", "pam_lines"):
        raw[key] = tuple(raw.get(key, ()))
    return Fix(**raw)


def _target(raw: dict) -> Target:
    raw = dict(raw)
    for key in ("providers", "packages", "container_config", "log_keys"):
        raw[key] = tuple(raw[key])
    raw["provision"] = tuple(
        Stage(stage=s["stage"], scripts=tuple(s["scripts"]), reboot=s.get("reboot", False))
        for s in raw["provision"]
    )
    raw["baseline"] = _fix(raw["baseline"], "baseline")
    raw["fixes"] = tuple(_fix(f) for f in raw["fixes"])
    return Target(**raw)


@cache
def all_targets() -> dict[str, Target]:
    """Every target shipped in this package, by name."""
    found = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            target = _target(tomllib.loads(entry.read_text(encoding="utf-8")))
            found[target.name] = target
    return found


def get_target(name: str) -> Target:
    targets = all_targets()
    if name not in targets:
        raise LabError(f"unknown target {name!r}{did_you_mean(name, targets)}; known: {', '.join(targets)}")
    return targets[name]
