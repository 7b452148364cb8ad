"""lab.prune: this tool's cached images known by their names, and (integration, real libvirt, no VM)
removed from the `default` pool and the cache only when nothing uses them.

The integration test runs the real task over the real pool, which other labs and sessions may use
at the same time: every volume of ours that is there before it starts is named by a guard domain it
defines (not started), so the task keeps them (its "used by a domain" rule). Its own volumes are
named cgroup-lab-base-/cgroup-lab-layer- with random keys, plus cgroup-lab-test-<pid>-* for the
foreign ones; all are removed, and the guard undefined, whatever happens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.core import locks, paths
from lab.host import libvirt, storage
from lab.images import layer, vm
from lab.images.base import BaseImage
from lab.machine import prune

ROOT = Path(__file__).resolve().parent.parent
TEST = f"cgroup-lab-test-{os.getpid()}"


def test_the_names_of_our_images_are_known_and_no_other() -> None:
    """The names lab.images gives a base's and a layer's volumes (and the cache's folders) are ours;
    a lab's disk, a VM's state copy, a Vagrant box and anything else are not."""
    image = BaseImage(target="bookworm-unified", key="0123456789abcdef", cmdline="",
                      dir=Path("/x/bookworm-unified-0123456789abcdef"))
    base = vm.host_base(image, vm.MachineShape(cpus=2, memory=1024, driver="qemu", hypervisor="QEMU 7.2"))
    lay = layer.Layer(base=base, key="fedcba9876543210", scenario="s", target="bookworm-unified", users=("a",))
    group = f"base bookworm-unified-{base.state_key}"
    for name, image_of in ((base.disk_volume, group), (base.state_volume, group),
                           (f"{base.prefix}.console.log", group),
                           (base.kernel_volume, "image bookworm-unified-0123456789abcdef"),
                           (base.initrd_volume, "image bookworm-unified-0123456789abcdef"),
                           (lay.disk_volume, "layer fedcba9876543210"), (lay.state_volume, "layer fedcba9876543210"),
                           (f"{lay.prefix}.console.log", "layer fedcba9876543210")):
        assert prune._image_of(name) == image_of, name
    for name in ("lab-bug-bookworm.qcow2", "lab-bug-bookworm.state", "cgroup-lab-build-fedcba987654.state",
                 "cgroup-lab-boot-0123456789ab.state",
                 "cgroup-lab-VAGRANTSLASH-trusty-0123_vagrant_box_image_0_box.img",
                 "cgroup-lab-layer-fedcba9876543210.qcow2.bak", "cgroup-lab-layer-notes.qcow2",
                 f"{TEST}-foreign.qcow2", "debian-12.qcow2"):
        assert prune._image_of(name) is None, name
    assert prune.CACHE_IMAGE.match(image.dir.name) and not prune.CACHE_IMAGE.match(".build-bookworm-x")


def key() -> str:
    return os.urandom(8).hex()


@pytest.fixture()
def made() -> Iterator[list[str]]:
    """Volumes the test makes (removed in reverse order afterwards, whatever happened) and the guard."""
    libvirt.ensure_daemons()
    libvirt.ensure_pool()
    names: list[str] = []
    yield names
    libvirt.virsh("undefine", f"{TEST}-guard")
    for name in reversed(names):
        storage.delete(name)
    assert not [n for n in storage.volumes() if n in names]
    for name in names:  # the build locks lab.prune took for them (their keys are this test's own)
        image = prune._image_of(name)
        if image:
            lock = prune._lock(prune.Entry(name=name, image=image, size=0))
            (paths.cache_dir() / "locks" / f"{lock}.lock").unlink(missing_ok=True)


def guard(volumes: list[str]) -> None:
    """Define (not start) a domain naming every one of volumes as a disk."""
    pool = storage.pool_path()
    disks = "".join(f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
                    f"<source file='{pool}/{name}'/><target dev='vd{chr(96 + i // 26) if i >= 26 else ''}"
                    f"{chr(97 + i % 26)}' bus='virtio'/></disk>" for i, name in enumerate(volumes))
    libvirt.define(f"<domain type='qemu'><name>{TEST}-guard</name><memory unit='MiB'>64</memory>"
                   f"<os><type arch='x86_64'>hvm</type></os><devices>{disks}</devices></domain>")


def run_prune(cwd: Path, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_") and k != "COLUMNS"}
    env["XDG_CACHE_HOME"] = str(cache)
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "lab.prune", *args], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.integration
def test_prune_removes_only_our_unused_images_and_says_why_the_rest_stays(made: list[str], tmp_path: Path) -> None:
    pool = storage.pool_path()
    disk = tmp_path / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(3 << 20))

    def base(target: str, state_key: str) -> tuple[str, str]:
        names = (f"{vm.BASE_PREFIX}{target}-{state_key}.qcow2", f"{vm.BASE_PREFIX}{target}-{state_key}.state")
        made.extend(names)
        storage.upload(names[0], disk, "qcow2", timeout=60)
        storage.upload(names[1], blob, "raw", timeout=60)
        return names

    def lay(on: str | None) -> tuple[str, str]:
        k = key()
        names = (f"{layer.PREFIX}{k}.qcow2", f"{layer.PREFIX}{k}.state")
        made.extend(names)
        if on:
            storage.create_overlay(names[0], f"{pool}/{on}", 64 << 20)
        else:
            storage.upload(names[0], disk, "qcow2", timeout=60)
        storage.upload(names[1], blob, "raw", timeout=60)
        return names

    others = [n for n in storage.volumes() if prune._image_of(n)]  # someone else's: guarded
    # A: nothing uses it (a base, its image's kernel and initrd and cache folder, a layer on the base)
    image_key = key()
    a_base = base("bookworm", key())
    a_kernel = (f"{vm.BASE_PREFIX}bookworm-{image_key}.vmlinuz", f"{vm.BASE_PREFIX}bookworm-{image_key}.initrd")
    made.extend(a_kernel)
    for name in a_kernel:
        storage.upload(name, blob, "raw", timeout=60)
    a_layer = lay(a_base[0])
    cache = tmp_path / "cache"
    a_folder = cache / "cgroup-lab" / "images" / f"bookworm-{image_key}"
    a_folder.mkdir(parents=True)
    (a_folder / "disk.qcow2").write_bytes(os.urandom(2 << 20))
    real_locks = paths.cache_dir() / "locks"
    real_locks.mkdir(parents=True, exist_ok=True)
    (cache / "cgroup-lab" / "locks").symlink_to(real_locks)  # the builds' own locks are seen
    # B: a volume of another name rests on a layer, which rests on a base
    b_base = base("trixie", key())
    b_layer = lay(b_base[0])
    foreign = f"{TEST}-foreign.qcow2"
    made.append(foreign)
    storage.create_overlay(foreign, f"{pool}/{b_layer[0]}", 64 << 20)
    # C: a domain names a layer's disk (the guard, which names every image of ours found before)
    c_layer = lay(None)
    # D: the layer a lab of this directory was built with (its domain is gone)
    d_layer = lay(None)
    project = tmp_path / "project"
    lab = paths.lab_dir("tripups-x", project)
    lab.root.mkdir(parents=True)
    from labtest import make_settings

    settings = make_settings(project, target="bookworm", name="tripups-x")
    lab.settings_file.write_text(settings.to_json())
    lab.state_file.write_text(json.dumps({"phase": "provisioned", "since": "", "task": "up", "baseline_at": ""}))
    slot = f"{settings.libvirt_uri} {settings.scenario} {settings.target}"
    (paths.state_root(project) / layer.REGISTRY).write_text(json.dumps({slot: d_layer[0][len(layer.PREFIX):-6]}))
    # E: a layer whose build runs now (its lock is held)
    e_layer = lay(None)
    e_key = e_layer[0][len(layer.PREFIX):-6]
    guard([*others, c_layer[0]])

    with locks.held(f"layer-{e_key}", timeout=10, what="the test's layer"):
        shown = run_prune(project, cache)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stdout + shown.stderr
        lines = shown.stdout.splitlines()
        gone = [*a_base, *a_kernel, *a_layer]
        for name in gone:
            assert any(line.startswith("  remove ") and line.endswith(f" volume {name}") for line in lines), \
                (name, shown.stdout)
        assert any(line.startswith("  remove ") and line.endswith(f" cache {a_folder}") for line in lines), shown.stdout

        def kept(name: str, why: str) -> None:
            line = next((ln for ln in lines if ln.startswith("  keep ") and f" volume {name}: " in ln), "")
            assert why in line, (name, why, shown.stdout)

        kept(b_layer[0], f"volume {foreign} rests on it")
        kept(b_layer[1], f"goes with {b_layer[0]} (kept)")
        kept(b_base[0], f"{b_layer[0]} (kept) rests on it")
        kept(b_base[1], "goes with")
        kept(c_layer[0], f"used by domain {TEST}-guard (shut off)")
        kept(c_layer[1], f"goes with {c_layer[0]} (kept)")
        kept(d_layer[0], "the layer lab tripups-x of this directory was built with (provisioned)")
        kept(e_layer[0], f"being built now (another command holds lock layer-{e_key})")
        for name in others:  # kept, unless gone meanwhile (a build's console log, deleted when it ends)
            assert not any(ln.startswith("  remove ") and ln.endswith(f" volume {name}") for ln in lines), shown.stdout
        assert foreign not in shown.stdout.replace(f"volume {foreign} rests on it", "")
        assert "would free" in lines[-1] and "invoke lab.prune --yes" in lines[-1], lines[-1]
        assert set(gone) <= set(storage.volumes()) and a_folder.is_dir(), "without --yes nothing is removed"

        libvirt.virsh("undefine", f"{TEST}-guard", check=True)  # again, with what others made meanwhile
        guard([*(n for n in storage.volumes() if prune._image_of(n) and n not in made), c_layer[0]])
        done = run_prune(project, cache, "--yes")
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    left = set(storage.volumes())
    assert not set(gone) & left and not a_folder.exists(), done.stdout
    assert {*b_base, *b_layer, foreign, *c_layer, *d_layer, *e_layer} <= left, done.stdout
    removed = {line.split()[-1] for line in done.stdout.splitlines() if line.startswith("  removed ")}
    assert removed == {*gone, str(a_folder)}, done.stdout  # nothing of anyone else's
    assert done.stdout.splitlines()[-1].startswith("✓ removed 7, freed "), done.stdout
