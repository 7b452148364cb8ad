"""Render the Vagrantfile and every guest script from jinja2 templates, without starting anything.

One Environment with StrictUndefined: a missing value is an error, never an empty string.
Values reach shell through the `sh` filter (shlex.quote) and Ruby through `rb` (a single-quoted
literal); settings were validated against strict patterns before, so quoting is a second guard.
"""

from __future__ import annotations

import shlex
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import PurePosixPath

import jinja2

from lab.errors import LabError
from lab.paths import PROJECT_DIR
from lab.settings import Settings
from lab.targets import Fix, Target

TEMPLATES_DIR = PROJECT_DIR / "templates"
VAGRANTFILE_TEMPLATE = "Vagrantfile.j2"
GUEST_SCRIPTS = ("guest/observe.sh", "guest/reset.sh")
FIX_PHASES = ("apply", "start", "revert")


def sh(value: object) -> str:
    """Quote one value for POSIX shell."""
    return shlex.quote(str(value))


def rb(value: object) -> str:
    """A Ruby single-quoted string literal: only backslash and quote are special there."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def rb_bool(value: object) -> str:
    if not isinstance(value, bool):
        raise LabError(f"internal: rb_bool got {value!r}")
    return "true" if value else "false"


def rb_int(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LabError(f"internal: rb_int got {value!r}")
    return str(value)


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(TEMPLATES_DIR), str(PROJECT_DIR)]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(sh=sh, rb=rb, rb_bool=rb_bool, rb_int=rb_int)
    return env


@dataclass(frozen=True)
class LabFacts:
    """Values derived from the settings and the host, given to every template."""

    provider: str
    libvirt_driver: str
    box_name: str
    box_url: str
    public_key: str
    network_octet: int

    @property
    def network_address(self) -> str:
        return f"192.168.{self.network_octet}.0/24"


def default_network_octet(name: str) -> int:
    """A stable /24 per lab name, 192.168.100-219.x; lab.up moves on if another network has it."""
    return 100 + zlib.crc32(name.encode()) % 120


def script_name(template: str, index: int, stage: str) -> str:
    """provision/01-base-users.sh from common/users.sh."""
    return f"provision/{index:02d}-{stage}-{PurePosixPath(template).name}"


def fix_script_name(fix: Fix, phase: str) -> str:
    return f"fixes/{fix.id}-{phase}.sh"


def _fix_phases(fix: Fix) -> dict[str, str]:
    return {phase: getattr(fix, phase) for phase in FIX_PHASES if getattr(fix, phase)}


def context(settings: Settings, facts: LabFacts) -> dict[str, object]:
    target = settings.target_data
    stages = []
    index = 0
    for stage in target.provision:
        scripts = []
        for template in stage.scripts:
            index += 1
            scripts.append({"name": script_name(template, index, stage.stage),
                            "id": f"{index:02d}-{stage.stage}-{PurePosixPath(template).stem}"})
        stages.append({"stage": stage.stage, "scripts": scripts, "reboot": stage.reboot})
    return {"s": settings, "t": target, "lab": facts, "stages": stages, "name": settings.name}


def render_fix(settings: Settings, fix: Fix, phase: str, facts: LabFacts) -> str:
    template = getattr(fix, phase)
    return _render(f"{template}.j2", {**context(settings, facts), "fix": fix})


def _render(template: str, ctx: dict[str, object]) -> str:
    try:
        return environment().get_template(template).render(ctx)
    except jinja2.TemplateNotFound as exc:
        raise LabError(f"template {exc.name} not found under {TEMPLATES_DIR}") from None
    except jinja2.UndefinedError as exc:
        raise LabError(f"template {template}: {exc.message}",
                       hint="a template uses a value the lab does not set") from None


def render_all_guest(settings: Settings, facts: LabFacts) -> dict[str, str]:
    """The helper scripts verify runs as root in the guest (reset, observe)."""
    ctx = context(settings, facts)
    return {template: _render(f"{template}.j2", ctx) for template in GUEST_SCRIPTS}


def render_all(settings: Settings, facts: LabFacts) -> dict[str, str]:
    """Every rendered file of the lab, by path relative to the lab directory (pure)."""
    target: Target = settings.target_data
    ctx = context(settings, facts)
    files: dict[str, str] = {"Vagrantfile": _render(VAGRANTFILE_TEMPLATE, ctx)}
    index = 0
    for stage in target.provision:
        for template in stage.scripts:
            index += 1
            files[script_name(template, index, stage.stage)] = _render(f"{template}.j2", ctx)
    files.update(render_all_guest(settings, facts))
    for fix in (target.baseline, *target.fixes):
        for phase in _fix_phases(fix):
            files[fix_script_name(fix, phase)] = render_fix(settings, fix, phase, facts)
    return files
