"""Where state lives: .lab/<name>/ per lab in the directory the command runs in, boxes in an XDG cache
directory. (The project's own files, scenarios and templates, are found by lab.core.resources.)"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lab.core.errors import LabError
from lab.core.files import write_files

LAB_NAME = re.compile(r"^[a-z][a-z0-9-]{0,47}$")  # also a libvirt domain name, a hostname label

STATE_ROOT_NAME = ".lab"
CURRENT = "current"


def state_root(project_dir: Path | None = None) -> Path:
    """.lab/ of the directory the command runs in (the current directory unless project_dir is given)."""
    return (project_dir or Path.cwd()) / STATE_ROOT_NAME


def cache_dir() -> Path:
    """The cache of built images and boxes: $XDG_CACHE_HOME/cgroup-lab (default ~/.cache/cgroup-lab);
    tests point XDG_CACHE_HOME elsewhere."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cgroup-lab"


@dataclass(frozen=True)
class LabDir:
    """The files of one lab: rendered Vagrantfile and scripts, SSH key, known_hosts, reports."""

    root: Path

    @property
    def name(self) -> str:
        """The lab's name: the last part of root (.lab/<name>)."""
        return self.root.name

    @property
    def vagrantfile(self) -> Path:
        """The rendered Vagrantfile: <root>/Vagrantfile."""
        return self.root / "Vagrantfile"

    @property
    def settings_file(self) -> Path:
        """The settings the lab was rendered with, as JSON (Settings.to_json): <root>/settings.json."""
        return self.root / "settings.json"

    @property
    def ssh_dir(self) -> Path:
        """The lab's SSH folder (its key pair and known_hosts): <root>/ssh."""
        return self.root / "ssh"

    @property
    def private_key(self) -> Path:
        """The lab's private SSH key (ed25519, made by lab.up): <root>/ssh/id_ed25519."""
        return self.ssh_dir / "id_ed25519"

    @property
    def public_key(self) -> Path:
        """The lab's public SSH key, OpenSSH format: <root>/ssh/id_ed25519.pub."""
        return self.ssh_dir / "id_ed25519.pub"

    @property
    def known_hosts(self) -> Path:
        """The guest's pinned SSH host key: written at lab.up from the guest agent's channel for a lab
        started from an image (lab.images.identity), else pinned at the first SSH contact (lab.remote.ssh);
        lab.destroy deletes it. <root>/ssh/known_hosts."""
        return self.ssh_dir / "known_hosts"

    @property
    def reports(self) -> Path:
        """The verify runs' folders (one per run, and `latest`, a link to the last complete one): <root>/reports."""
        return self.root / "reports"

    @property
    def state_file(self) -> Path:
        """The lab's lifecycle state as JSON (lab.machine.state): <root>/state.json."""
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        """The file lab.machine.state flocks so one command at a time acts on the lab: <root>/lock."""
        return self.root / "lock"

    @property
    def log(self) -> Path:
        """lab.log: what the libraries the lab uses logged (paramiko's handshakes and failures)."""
        return self.root / "lab.log"


def lab_dir(name: str, project_dir: Path | None = None) -> LabDir:
    """The LabDir of the lab called name under .lab/."""
    return LabDir(state_root(project_dir) / name)


def remember_current(name: str, project_dir: Path | None = None) -> None:
    """Record the lab that lab.up brought up last, for verify/status/ssh/destroy."""
    write_files(state_root(project_dir), {CURRENT: name + "\n"})


def current_name(project_dir: Path | None = None) -> str:
    """The lab lab.up last brought up here; a clear error when there is none."""
    path = state_root(project_dir) / CURRENT
    try:
        name = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise LabError("no lab has been brought up in this directory", hint="run: invoke lab.up") from None
    if not LAB_NAME.match(name):
        raise LabError(f"{path} names no valid lab ({name!r})", hint="delete it and run: invoke lab.up")
    return name
