"""Targets are data: one TOML file per release and cgroup layout in lab/config/targets/.

A target says how to get a booting guest (box builder, base packages, kernel command line) and the
provisioning stages every lab on it runs (users, trusty's kernel switch); what a bug needs on top
(packages, scripts, expectations) belongs to its scenario. Adding a target is adding a file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from lab.core.errors import LabError, did_you_mean


@dataclass(frozen=True)
class Stage:
    """Provisioning scripts run together; a reboot may follow (trusty's kernel switch). The
    scenario's own provisioning scripts are appended to the last stage."""

    stage: str
    scripts: tuple[str, ...]
    reboot: bool = False


@dataclass(frozen=True)
class Source:
    """Something labs of a target download, probed before one starts (lab.host.probes): what it is,
    the settings that hold its URL (alternatives: one answering is enough), the path probed under
    the URL, and when it is needed: "build" (only while the box is not built) or "lab" (every up)."""

    what: str
    settings: tuple[str, ...]
    path: str = ""
    needed: str = "build"


@dataclass(frozen=True)
class Target:
    """One release and cgroup layout. packages: the base set every box of this target has (the
    scenario's are added); sources: what its labs download (whether they answer from this host is
    probed when it matters, never written down)."""

    name: str
    title: str
    family: str
    vagrant_guest: str  # Vagrant's guest plugin (config.vm.guest): skips its guest OS autodetection
    release: str
    box_builder: str  # "mmdebstrap" (Debian's mirror + Packer) or "iso" (Packer from the ISO)
    providers: tuple[str, ...]
    cgroup_layout: str  # legacy, hybrid or unified
    systemd: int  # systemd's major version in the release; 0 where there is none (trusty: upstart)
    kernel_package: str
    kernel_prefix: str
    kernel_cmdline: str
    packages: tuple[str, ...]
    provision: tuple[Stage, ...]
    sources: tuple[Source, ...] = ()


def _target(raw: dict) -> Target:
    raw = dict(raw)
    for key in ("providers", "packages"):
        raw[key] = tuple(raw[key])
    raw["provision"] = tuple(
        Stage(stage=s["stage"], scripts=tuple(s["scripts"]), reboot=s.get("reboot", False))
        for s in raw["provision"]
    )
    raw["sources"] = tuple(Source(**{**s, "settings": tuple(s["settings"])}) for s in raw.get("sources", ()))
    return Target(**raw)


@cache
def all_targets() -> dict[str, Target]:
    """Every target shipped in lab/config/targets/, by name."""
    found = {}
    for entry in sorted(resources.files("lab.config").joinpath("targets").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            target = _target(tomllib.loads(entry.read_text(encoding="utf-8")))
            found[target.name] = target
    return found


def get_target(name: str) -> Target:
    """The target called name; LabError with a did-you-mean when there is none."""
    targets = all_targets()
    if name not in targets:
        raise LabError(f"unknown target {name!r}{did_you_mean(name, targets)}; known: {', '.join(targets)}")
    return targets[name]
