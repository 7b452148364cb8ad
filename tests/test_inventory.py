"""lab.list: which folders count as labs, the last run's verdict, and the rows as the task prints
them, against the real local libvirtd (integration) and a libvirt host that does not answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.core import paths
from lab.run import inventory

ROOT = Path(__file__).resolve().parent.parent


def invoke(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def run(lab: paths.LabDir, name: str, **rec: object) -> None:
    where = lab.reports / name
    where.mkdir(parents=True)
    (where / "verify.json").write_text(json.dumps({"run": name, "steps": [], **rec}))


def test_only_lab_folders_count(tmp_path: Path) -> None:
    root = paths.state_root(tmp_path)
    for name in ("b-lab", "a-lab"):
        (root / name).mkdir(parents=True)
        (root / name / "state.json").write_text("{}")
    (root / "c-lab").mkdir()
    (root / "c-lab" / "settings.json").write_text("{}")
    for other in ("hosts", "matrix", "Bad_Name", "empty-dir"):
        (root / other).mkdir()
    (root / "hosts" / "known_hosts").write_text("")
    (root / "Bad_Name" / "state.json").write_text("{}")
    (root / "current").write_text("a-lab\n")
    assert inventory.lab_names(tmp_path) == ["a-lab", "b-lab", "c-lab"]
    (root / "empty-dir" / "settings.json").write_text("{}")
    assert inventory.lab_names(tmp_path) == ["a-lab", "b-lab", "c-lab", "empty-dir"]
    assert inventory.lab_names(tmp_path / "nowhere") == []


def test_the_last_run_is_the_newest_whatever_its_end(tmp_path: Path) -> None:
    lab = paths.lab_dir("x", tmp_path)
    assert inventory.last_run(lab) == ("", "")
    run(lab, "20260101-100000", ok=True, started_at="2026-01-01T10:00:00Z")
    assert inventory.last_run(lab) == ("met", "2026-01-01T10:00:00Z")
    run(lab, "20260101-110000", ok=False, started_at="2026-01-01T11:00:00Z")
    assert inventory.last_run(lab) == ("not met", "2026-01-01T11:00:00Z")
    run(lab, "20260101-120000", ok=True, stopped="cgm", started_at="2026-01-01T12:00:00Z")
    assert inventory.last_run(lab) == ("stopped (met so far)", "2026-01-01T12:00:00Z")
    run(lab, "20260101-130000", ok=False, kept_failing="cgm", started_at="2026-01-01T13:00:00Z")
    assert inventory.last_run(lab)[0] == "kept failing"
    run(lab, "20260101-140000", ok=False, error="the SSH connection dropped\nmore", started_at="2026-01-01T14:00Z")
    assert inventory.last_run(lab) == ("broken off: the SSH connection dropped", "2026-01-01T14:00Z")
    (lab.reports / "20260101-150000").mkdir()
    (lab.reports / "20260101-150000" / "verify.json").write_text("{not json")
    assert inventory.last_run(lab) == ("unreadable record (JSONDecodeError)", "")


@pytest.mark.integration
def test_list_shows_rendered_labs_with_libvirts_view(tmp_path: Path) -> None:
    """Two rendered labs, one on this machine's libvirtd (started as lab.up would), one on a libvirt
    host that does not answer (a closed loopback port); a lab with damaged settings is still listed."""
    from lab.host import libvirt

    libvirt.ensure_daemons()
    assert invoke(tmp_path, "lab.render", "--target", "bookworm-unified", "--name", "inv-local").returncode == 0
    assert invoke(tmp_path, "lab.render", "--target", "bookworm", "--name", "inv-remote",
                  "--libvirt-uri", "qemu+ssh://root@127.0.0.1:1/system").returncode == 0
    broken = paths.lab_dir("inv-broken", tmp_path)
    broken.root.mkdir(parents=True)
    broken.settings_file.write_text('{"target": "bookworm", "nonsense": 1}')
    run(paths.lab_dir("inv-local", tmp_path), "20260101-100000", ok=False, started_at="2026-01-01T10:00:00Z")

    result = invoke(tmp_path, "lab.list", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert sorted(rows) == ["inv-broken", "inv-local", "inv-remote"]
    local = rows["inv-local"]
    assert (local["scenario"], local["target"], local["host"]) == ("sudo-lxc-cgroups", "bookworm-unified",
                                                                   "qemu:///system")
    assert local["domain"] == "not created"
    assert local["phase"] == "absent"
    assert (local["verdict"], local["verified_at"]) == ("not met", "2026-01-01T10:00:00Z")
    remote = rows["inv-remote"]
    assert remote["host"] == "qemu+ssh://root@127.0.0.1:1/system"
    assert remote["domain"].startswith("libvirt does not answer ("), remote
    assert rows["inv-broken"]["target"] == "bookworm"
    assert rows["inv-broken"]["domain"].startswith("unknown: "), rows["inv-broken"]

    table = invoke(tmp_path, "lab.list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["lab", "scenario", "target"]
    local_line = next(line for line in lines if line.startswith("inv-local "))
    assert local_line.split()[:5] == ["inv-local", "sudo-lxc-cgroups", "bookworm-unified", "qemu:///system", "not"]


def test_list_without_labs_says_so(tmp_path: Path) -> None:
    result = invoke(tmp_path, "lab.list")
    assert result.returncode == 0, result.stderr
    assert f"no labs in {tmp_path / '.lab'}" in result.stdout
    assert json.loads(invoke(tmp_path, "lab.list", "--json").stdout) == []
