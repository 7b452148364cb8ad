"""`cgroup-lab`: invoke's own Program over the lab's task collection (lab.cli.tasks), so the tasks,
flags, help and exit codes are those of `invoke lab.*` in a checkout, without the `lab.` prefix:
`cgroup-lab up --target bookworm verify`, `cgroup-lab --list`, `cgroup-lab --help up`.

Installed as a console script by `pipx install .` or `pip install cgroup-lab-*.whl`; it reads its
scenarios and templates from the package (lab.core.resources), settings from ./lab.toml and keeps
lab state in ./.lab of the directory it runs in.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

from invoke import Program

from lab.cli import tasks
from lab.core import console

NAME = "cgroup-lab"


def version() -> str:
    """The installed distribution's version ("unknown" when run from a checkout that is not installed)."""
    try:
        return metadata.version(NAME)
    except metadata.PackageNotFoundError:
        return "unknown"


def program() -> Program:
    """The Program over the `lab` collection itself, so its tasks are top-level names (up, verify, ...)."""
    return Program(namespace=tasks.lab, name=NAME, binary=NAME, version=version())


def main() -> None:
    """Entry point of the console script: messages name tasks as `cgroup-lab TASK`; exits with the
    task's exit code (README, "Exit codes"), invoke's own for a usage error."""
    console.speak_as(NAME)
    try:
        program().run()
    except BrokenPipeError:  # the reader went away (cgroup-lab --list | head): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
