"""Helpers for tests: settings and LabFacts without touching the host."""

from __future__ import annotations

from pathlib import Path

from lab import render, settings

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBzZ2pYzb3ZkZ2pYzb3ZkZ2pYzb3ZkZ2pYzb3ZkZ2pY lab-test"


def make_settings(tmp_path: Path, **flags: object) -> settings.Settings:
    return settings.load(environ={}, flags=flags, project_dir=tmp_path)


def make_facts(provider: str = "libvirt", **over: object) -> render.LabFacts:
    values: dict = {"provider": provider, "libvirt_driver": "qemu", "box_name": "cgroup-lab/test",
                    "box_url": "/tmp/test.box", "public_key": PUBKEY, "network_octet": 150}
    values.update(over)
    return render.LabFacts(**values)
