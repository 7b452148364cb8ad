"""The jinja2 environments: one for the engine's templates (templates/, Vagrantfile.j2), one per
scenario folder. StrictUndefined everywhere: a missing value is an error, never an empty string.

Values reach shell through the `sh` filter (shlex.quote) and Ruby through `rb` (a single-quoted
literal); settings were validated against strict patterns before, so quoting is a second guard.
"""

from __future__ import annotations

import shlex
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from lab.core.errors import LabError
from lab.core.resources import LIB_DIR, TEMPLATES_DIR, VAGRANTFILE_TEMPLATE


def sh(value: object) -> str:
    """Quote one value for POSIX shell."""
    return shlex.quote(str(value))


def rb(value: object) -> str:
    """A Ruby single-quoted string literal: only backslash and quote are special there."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def rb_bool(value: object) -> str:
    """true/false for Ruby; anything but a bool is a bug in the caller (LabError)."""
    if not isinstance(value, bool):
        raise LabError(f"internal: rb_bool got {value!r}")
    return "true" if value else "false"


def rb_int(value: object) -> str:
    """An integer literal for Ruby; anything but an int is a bug in the caller (LabError)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LabError(f"internal: rb_int got {value!r}")
    return str(value)


def _environment(paths: tuple[str, ...], library: bool = False, shared: str = "") -> jinja2.Environment:
    loader: jinja2.BaseLoader = jinja2.FileSystemLoader(list(paths))
    if library:  # the engine's snippets (templates/lib/) under the prefix lab/, after the folder's own files
        prefixes: dict[str, jinja2.BaseLoader] = {"lab": jinja2.FileSystemLoader(str(LIB_DIR))}
        if shared:  # the user's own library next to the scenario folders, as shared/NAME
            prefixes["shared"] = jinja2.FileSystemLoader(shared)
        loader = jinja2.ChoiceLoader([loader, jinja2.PrefixLoader(prefixes)])
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(sh=sh, rb=rb, rb_bool=rb_bool, rb_int=rb_int)
    return env


@cache
def environment() -> jinja2.Environment:
    """The engine's templates: templates/ and Vagrantfile.j2 (lab.core.resources)."""
    return _environment((str(TEMPLATES_DIR), str(VAGRANTFILE_TEMPLATE.parent)))


@cache
def scenario_environment(folder: Path) -> jinja2.Environment:
    """A scenario's templates: paths are relative to its folder; the engine's snippets are there
    as lab/NAME (templates/lib/NAME), the user's own library (the folder `shared` next to the
    scenario's) as shared/NAME."""
    return _environment((str(folder),), library=True, shared=str(folder.resolve().parent / "shared"))


def render_file(env: jinja2.Environment, name: str, ctx: dict[str, Any], where: str = "") -> str:
    """Render one template file; LabError naming the file and line of a missing value or a syntax error."""
    try:
        return env.get_template(name).render(ctx)
    except jinja2.TemplateNotFound as exc:
        raise LabError(f"template {exc.name} not found", hint=where or "check the file name") from None
    except jinja2.TemplateSyntaxError as exc:
        raise LabError(f"{_path(env, exc.name or name)}:{exc.lineno}: template syntax error: {exc.message}"
                       f"{_comment_hint(exc)}") from None
    except jinja2.UndefinedError as exc:
        raise LabError(f"{name}:{_line(exc, name)}: {exc.message}",
                       hint="a template uses a value the lab does not set") from None


def render_string(env: jinja2.Environment, text: str, ctx: dict[str, Any], where: str) -> str:
    """Render a template given as text (a scenario's title, command, signature); where names it."""
    try:
        return env.from_string(text).render(ctx)
    except jinja2.TemplateSyntaxError as exc:
        raise LabError(f"{where}: template syntax error: {exc.message}{_comment_hint(exc)}") from None
    except jinja2.UndefinedError as exc:
        raise LabError(f"{where}: {exc.message}", hint="a template uses a value the scenario does not set") from None


def _path(env: jinja2.Environment, name: str) -> str:
    """The file a template name was loaded from (the name itself if the loader cannot say)."""
    try:
        assert env.loader is not None
        return env.loader.get_source(env, name)[1] or name
    except (jinja2.TemplateNotFound, AssertionError):
        return name


def _comment_hint(exc: jinja2.TemplateSyntaxError) -> str:
    """Shell's ${#var} (and any other `{#`) opens a jinja2 comment: say so and how to keep it."""
    if "comment" in (exc.message or ""):
        return (" (`{#` opens a jinja2 comment, as in the shell's ${#var}: keep such shell text as it is with "
                "{% raw %}...{% endraw %})")
    return ""


def _line(exc: BaseException, name: str) -> str:
    """The template line an error was raised on, from the traceback jinja2 rewrites."""
    tb = exc.__traceback__
    line = "?"
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(name):
            line = str(tb.tb_lineno)
        tb = tb.tb_next
    return line
