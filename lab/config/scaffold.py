"""lab.new: a commented scenario folder, copied from templates/scaffold/, that checks as it is."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

from lab.config.scenario import ID, SCENARIO_FILE
from lab.core import console
from lab.core.errors import LabError
from lab.core.resources import SCAFFOLD_DIR


def scenario_id(folder: Path) -> str:
    """An id made from the folder's name: lower-case letters, digits and '-'."""
    sid = re.sub(r"[^a-z0-9-]+", "-", folder.resolve().name.lower()).strip("-")
    sid = re.sub(r"^[^a-z]+", "", sid)[:40].rstrip("-") or "my-bug"
    assert re.match(ID, sid)
    return sid


def scaffold(folder: Path) -> tuple[Path, str]:
    """Copy the scaffold into folder (which must not exist yet, in a folder that does); returns
    (folder, scenario id). Raises LabError when the folder exists or the folder above it does not
    (a mistyped path would otherwise make folders nobody asked for, as `mkdir` without -p refuses
    to); nothing is written then."""
    folder = folder.expanduser()
    if folder.exists():
        raise LabError(f"{folder} already exists; lab.new never overwrites anything",
                       hint="give a new folder path")
    above = folder.absolute().parent
    if not above.is_dir():
        what = "is not a folder" if above.exists() else "does not exist"
        raise LabError(f"{above} {what}; lab.new makes the scenario's folder {folder.name} in an existing folder, "
                       "never the folders above it",
                       hint=f"mkdir -p {shlex.quote(str(above))} first, or give a path in an existing folder")
    sid = scenario_id(folder)
    tmp = folder.with_name(f".{folder.name}.new")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(SCAFFOLD_DIR, tmp)
    toml = tmp / SCENARIO_FILE
    text = toml.read_text(encoding="utf-8").replace("SCENARIO_ID", sid, 1)
    toml.write_text(console.as_typed(text), encoding="utf-8")  # its comments name the tasks as the user types them
    tmp.rename(folder)
    return folder.resolve(), sid
