"""Labs started from saved image states, for real (vm tier): two labs of one image side by side,
each with its own key, host key, hostname and address, nothing of one in the other; a provisioning
script that fails on purpose (named by script and line, exit 2, the build VM kept with
--keep-failing and removed by lab.destroy); an edit of a provisioning script rebuilds only the
scenario's layer on the cached base.

The labs use a scenario made by lab.new (the scaffold: no extra packages, so its base image is the
target's own and quick to build) under names starting with img-, so no other lab is touched.
test_two_labs_from_one_image_side_by_side runs two VMs at once: run it under `vm-slot -n 2`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parent.parent
POOL = "/var/lib/libvirt/images"


def invoke(cwd: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    print(f"--- invoke {' '.join(args)}: exit {result.returncode} in {time.monotonic() - started:.1f}s")
    print(result.stdout[-5000:], result.stderr[-3000:])
    return result


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def leftovers(name: str) -> list[str]:
    domain = f"lab-{name}"
    found = [d for d in virsh("list", "--all", "--name").stdout.split() if d == domain]
    found += [n for n in virsh("net-list", "--all", "--name").stdout.split() if n == domain]
    found += [v for v in virsh("vol-list", "default").stdout.split() if v.startswith(domain)]
    return found


def ssh(workdir: Path, name: str, command: str) -> subprocess.CompletedProcess[str]:
    """ssh as the lab's admin with its own key and known_hosts (strict: the key pinned at up)."""
    lab = workdir / ".lab" / name
    host = json.loads((lab / "endpoint.json").read_text())["host"]
    argv = ["ssh", "-i", str(lab / "ssh" / "id_ed25519"), "-o", f"UserKnownHostsFile={lab / 'ssh' / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            f"labadmin@{host}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images-vm")


@pytest.fixture(scope="module")
def scenario(workdir: Path) -> Path:
    """A scenario from lab.new: the scaffold, which verifies on bookworm as it is."""
    folder = workdir / "img-bug"
    assert invoke(workdir, "lab.new", str(folder)).returncode == 0
    return folder


def test_two_labs_from_one_image_side_by_side(workdir: Path, scenario: Path) -> None:
    """Two labs of one image at once: each its own SSH key (the other's is refused), its own host
    key pinned at up, its own hostname and address; a change made in the first is not in the
    second (started after it), whose baseline fingerprint is the first's as lab.up recorded it;
    Vagrant's view of each lab's folder is true."""
    names = ("img-side-a", "img-side-b")
    try:
        up_a = invoke(workdir, "lab.up", "--scenario", str(scenario), "--target", "bookworm", "--name", names[0])
        assert up_a.returncode == 0 and "started from the saved state" in up_a.stdout
        poison = ("echo '# changed in lab a' | sudo tee -a /etc/pam.d/sudo >/dev/null && touch /tmp/lab-a-was-here "
                  "&& sudo useradd lab-a-user")
        assert ssh(workdir, names[0], poison).returncode == 0
        up_b = invoke(workdir, "lab.up", "--scenario", str(scenario), "--target", "bookworm", "--name", names[1])
        assert up_b.returncode == 0
        labs = [workdir / ".lab" / n for n in names]
        hosts = [json.loads((lab / "endpoint.json").read_text())["host"] for lab in labs]
        assert hosts[0].rsplit(".", 2)[1] != hosts[1].rsplit(".", 2)[1], "each lab has its own network"
        host_keys = [(lab / "ssh" / "known_hosts").read_text().split()[2] for lab in labs]
        assert host_keys[0] != host_keys[1]
        assert [ssh(workdir, n, "hostname").stdout.strip() for n in names] == list(names)
        clean = ssh(workdir, names[1], "! grep -q 'changed in lab a' /etc/pam.d/sudo && test ! -e /tmp/lab-a-was-here "
                                       "&& ! id lab-a-user")
        assert clean.returncode == 0, "nothing of lab a is in lab b"
        fingerprints = [(lab / "baseline.fingerprint").read_text() for lab in labs]
        assert fingerprints[0] == fingerprints[1]
        # lab a's key does not open lab b
        crossed = subprocess.run(["ssh", "-i", str(labs[0] / "ssh" / "id_ed25519"), "-o", "BatchMode=yes",
                                  "-o", f"UserKnownHostsFile={labs[1] / 'ssh' / 'known_hosts'}",
                                  "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
                                  f"labadmin@{hosts[1]}", "true"], capture_output=True, text=True, timeout=60,
                                 check=False)
        assert crossed.returncode == 255 and "Permission denied" in crossed.stderr
        for lab, name in zip(labs, names, strict=True):
            status = subprocess.run(["vagrant", "status"], cwd=lab, capture_output=True, text=True, timeout=120,
                                    check=False)
            assert f"lab-{name}" in status.stdout and "running (libvirt)" in status.stdout
        via_vagrant = subprocess.run(["vagrant", "ssh", "-c", "hostname"], cwd=labs[1], capture_output=True,
                                     text=True, timeout=120, check=False)
        assert via_vagrant.returncode == 0 and via_vagrant.stdout.strip() == names[1]
    finally:
        for name in names:
            invoke(workdir, "lab.destroy", "--name", name, timeout=600)
    assert leftovers(names[0]) == [] and leftovers(names[1]) == []


def layer_volumes() -> set[str]:
    return {v for v in virsh("vol-list", "default").stdout.split() if v.startswith("cgroup-lab-layer-")}


def test_a_failing_provisioning_script_is_named_and_kept(workdir: Path, scenario: Path, tmp_path: Path) -> None:
    """A provisioning script that fails on purpose: one error naming the script, its line and
    command and the log, exit 2 (the scenario's fault); with --keep-failing the build VM stays
    running and the printed command opens a shell in it; lab.destroy removes it. Without the flag
    nothing of the build is left."""
    broken = tmp_path / "img-broken"
    subprocess.run(["cp", "-a", str(scenario), str(broken)], check=True)
    script = broken / "provision" / "prepare.sh"
    lines = script.read_text().splitlines()
    lines += ["echo 'about to look for a directory that is not there'", "ls /nonexistent-cgroup-lab-dir",
              "echo 'never printed'"]
    script.write_text("\n".join(lines) + "\n")
    failing_line = len(lines) - 1
    name = "img-broken"
    before = layer_volumes()
    try:
        result = invoke(workdir, "lab.up", "--scenario", str(broken), "--target", "bookworm", "--name", name,
                        "--keep-failing")
        assert result.returncode == 2, "a failing scenario script is the scenario's error"
        first = result.stderr.splitlines()[0]
        assert first.startswith("error: provisioning script `provision/prepare.sh` of scenario img-bug failed "
                                f"(exit 2) at line {failing_line}: ls /nonexistent-cgroup-lab-dir"), first
        assert "about to look for a directory" in result.stderr and "never printed" not in result.stderr
        log = workdir / ".lab" / name / "build" / "provision.log"
        assert f"full log: {log}" in result.stderr and "No such file or directory" in log.read_text()
        kept = json.loads((workdir / ".lab" / name / "build" / "kept-vm.json").read_text())
        assert virsh("domstate", kept["domain"]).stdout.strip() == "running"
        assert "a shell in it: ssh -i" in " ".join(result.stderr.split())
        # the ways on name this lab, wherever they are typed (the directory's defaults would be another)
        flags = f"--scenario {broken} --target bookworm --name {name}"
        assert f"invoke lab.destroy --name {name}" in result.stderr
        assert f"run it again: invoke lab.up {flags}" in " ".join(result.stderr.split())
        inside = subprocess.run([*shlex.split(kept["shell"]), "-o", "BatchMode=yes",
                                 "test -e /root/cgroup-lab-provision/prepare.sh || ls /root/cgroup-lab-provision"],
                                capture_output=True, text=True, timeout=120, check=False)
        assert inside.returncode == 0, inside.stdout + inside.stderr
        destroyed = invoke(workdir, "lab.destroy", "--name", name, timeout=600)
        assert destroyed.returncode == 0 and f"build VM {kept['domain']}" in destroyed.stdout
        assert virsh("domstate", kept["domain"]).returncode != 0
        assert virsh("net-info", kept["network"]).returncode != 0
        assert kept["volume"] not in layer_volumes()
        again = invoke(workdir, "lab.build", "--scenario", str(broken), "--target", "bookworm", "--name", name)
        assert again.returncode == 2 and "at line" in again.stderr
        assert f"run it again: invoke lab.up {flags} (or lab.build" in " ".join(again.stderr.split())
        assert "look inside with --keep-failing" in again.stderr
        assert not (workdir / ".lab" / name / "build" / "kept-vm.json").exists()
        assert not [d for d in virsh("list", "--all", "--name").stdout.split() if d.startswith("cgroup-lab-build-")
                    and d == kept["domain"]]
        assert layer_volumes() <= before | {kept["volume"]} and kept["volume"] not in layer_volumes()
    finally:
        invoke(workdir, "lab.destroy", "--name", name, timeout=600)
    assert leftovers(name) == []


def test_an_edit_rebuilds_only_the_layer(workdir: Path, scenario: Path, tmp_path: Path) -> None:
    """Edit a provisioning script and bring the lab up again: no mmdebstrap, no boot of the base
    (its saved state is reused), a new layer built from it, the edit in the lab; the layer it
    replaced is removed (no lab uses it)."""
    folder = tmp_path / "img-edit"
    subprocess.run(["cp", "-a", str(scenario), str(folder)], check=True)
    name = "img-edit"
    try:
        up = invoke(workdir, "lab.up", "--scenario", str(folder), "--target", "bookworm", "--name", name)
        assert up.returncode == 0
        assert invoke(workdir, "lab.destroy", "--name", name).returncode == 0
        registry = json.loads((workdir / ".lab" / "layers.json").read_text())
        first = next(key for slot, key in registry.items() if str(folder) in slot)
        assert {f"cgroup-lab-layer-{first}.qcow2", f"cgroup-lab-layer-{first}.state"} <= layer_volumes()
        script = folder / "provision" / "prepare.sh"
        edited = f"/root/edited-by-the-test-{uuid.uuid4().hex[:8]}"  # a new layer every run: never one left cached
        script.write_text(script.read_text() + f"touch {edited}\n")
        started = time.monotonic()
        retry = invoke(workdir, "lab.up", "--scenario", str(folder), "--target", "bookworm", "--name", name)
        seconds = time.monotonic() - started
        assert retry.returncode == 0
        assert "mmdebstrap" not in retry.stdout and "boot the base image" not in retry.stdout
        assert re.search(r"layer \w+ of img-bug on bookworm built", retry.stdout)
        assert ssh(workdir, name, f"sudo test -e {edited}").returncode == 0
        assert "removed the layer this one replaces" in retry.stdout
        assert not {f"cgroup-lab-layer-{first}.qcow2", f"cgroup-lab-layer-{first}.state"} & layer_volumes()
        print(f"edit-and-retry: {seconds:.1f}s (the layer's build and lab.up)")
    finally:
        invoke(workdir, "lab.destroy", "--name", name, timeout=600)
    assert leftovers(name) == []


@pytest.fixture(autouse=True)
def _no_stray_build_vm() -> Iterator[None]:
    """Every build VM a test starts is gone when it ends (kept ones are removed by lab.destroy)."""
    before = {d for d in virsh("list", "--all", "--name").stdout.split() if d.startswith("cgroup-lab-")}
    yield
    after = {d for d in virsh("list", "--all", "--name").stdout.split() if d.startswith("cgroup-lab-")}
    assert after <= before, f"left running: {after - before}"
