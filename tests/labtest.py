"""Helpers for tests: settings and LabFacts without touching the host."""

from __future__ import annotations

from pathlib import Path

from lab.config import settings
from lab.render.lab import LabFacts

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBzZ2pYzb3ZkZ2pYzb3ZkZ2pYzb3ZkZ2pYzb3ZkZ2pY lab-test"


def make_settings(tmp_path: Path, **flags: object) -> settings.Settings:
    return settings.load(environ={}, flags=flags, project_dir=tmp_path)


def make_facts(provider: str = "libvirt", **over: object) -> LabFacts:
    values: dict = {"provider": provider, "libvirt_driver": "qemu", "box_name": "cgroup-lab/test",
                    "box_url": "/tmp/test.box", "public_key": PUBKEY, "network_octet": 150}
    values.update(over)
    return LabFacts(**values)


def copy_scenario(tmp_path: Path, replace: dict[str, str], name: str = "sudo-lxc-cgroups") -> Path:
    """A copy of the shipped scenario folder with exact text replacements in its scenario.toml (each
    must occur exactly once, so a test cannot silently edit nothing)."""
    import shutil

    from lab.config import scenario

    folder = tmp_path / "scenarios" / name
    shutil.copytree(scenario.shipped()[scenario.DEFAULT_SCENARIO], folder)
    toml = folder / scenario.SCENARIO_FILE
    text = toml.read_text(encoding="utf-8")
    for old, new in replace.items():
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {toml}"
        text = text.replace(old, new)
    toml.write_text(text, encoding="utf-8")
    return folder
