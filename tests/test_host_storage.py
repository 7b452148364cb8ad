"""Volumes in the real libvirt pool (integration, no VM): upload, a qcow2 overlay and who is backed
by what, a copy of a "state" file with another head, deletion. Names start with
cgroup-lab-test-<pid> and are removed whatever happens."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.host import libvirt, storage

pytestmark = pytest.mark.integration
PREFIX = f"cgroup-lab-test-{os.getpid()}"


@pytest.fixture()
def names() -> Iterator[list[str]]:
    libvirt.ensure_daemons()
    libvirt.ensure_pool()
    made: list[str] = []
    yield made
    for name in made:
        storage.delete(name)
    assert not [v for v in libvirt.virsh("vol-list", "default").stdout.split() if v.startswith(PREFIX)]


def test_an_overlay_is_backed_by_its_base_and_copies_get_their_own_head(names: list[str], tmp_path: Path) -> None:
    disk = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    base, overlay = f"{PREFIX}-base.qcow2", f"{PREFIX}-top.qcow2"
    state, copy = f"{PREFIX}.state", f"{PREFIX}-copy.state"
    names += [base, overlay, state, copy]
    storage.upload(base, disk, "qcow2", timeout=60)
    assert storage.exists(base) and storage.read_head(base, 4) == b"QFI\xfb"
    top = storage.create_overlay(overlay, storage.path(base), 64 << 20)
    assert storage.qcow2_backing(Path(top)) == storage.path(base)
    assert storage.backed_by(storage.path(base)) == [overlay]
    assert storage.backed_by(top) == []
    blob = tmp_path / "state"
    blob.write_bytes(b"HEAD" + b"x" * 1000)
    storage.upload(state, blob, "raw", timeout=60)
    path = storage.copy_with_head(state, copy, b"NEW!", timeout=60)
    assert Path(path).read_bytes() == b"NEW!" + b"x" * 1000
    assert storage.read_head(state, 4) == b"HEAD", "the original stays as it was"
    storage.delete_file(path)
    assert not Path(path).exists()
    assert storage.delete(overlay) and not storage.exists(overlay) and not storage.delete(overlay)
