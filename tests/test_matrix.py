"""lab.matrix's aggregation on recorded runs: a cell per try and target, a target that cannot be
built here reported as not run (the real path, no VM), a mismatch, and the three formats."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtest import make_settings

from lab.config.settings import Settings
from lab.core.errors import LabError
from lab.machine.resolve import resolve
from lab.report import matrix as report
from lab.run import matrix

RECORD = json.loads((Path(__file__).parent / "fixtures" / "verify-bookworm.json").read_text())


def cell_from(record: dict, target: str, ok: bool = True) -> dict:
    tries = record["tries"]
    return {"target": target, "title": target, "name": f"x-{target}", "status": "ran", "ok": ok, "why": "",
            "seconds": {"up": 80.0, "verify": 30.0, "destroy": 4.0, "total": 114.0},
            "tries": {t["id"]: {"expected": t["expected"], "observed": t["observed"], "ok": t["ok"]} for t in tries}}


def a_matrix() -> dict:
    hybrid = cell_from(RECORD, "bookworm")
    unified = cell_from(RECORD, "bookworm-unified", ok=False)
    unified["tries"]["cgm"] = {"expected": "running", "observed": "unlimited", "ok": False}
    trusty = {"target": "trusty", "title": "Ubuntu 14.04", "name": "x-trusty", "status": "not run", "ok": False,
              "why": "the Ubuntu archive cannot be reached", "seconds": {"total": 0.0}, "tries": {}}
    return {"kind": "matrix", "run": "20261129-130000", "started_at": "2026-11-29T13:00:00Z", "seconds": 230.0,
            "scenario": {"id": "sudo-lxc-cgroups", "title": "the seed", "notes": {"trusty": "", "bookworm": "hybrid"}},
            "targets": [trusty, hybrid, unified], "ok": False}


def test_rows_keep_the_run_order_with_the_restored_baseline_last() -> None:
    assert report.rows(a_matrix()) == ["baseline", "pam-systemd", "pam-cgfs", "cgm", "systemd-run",
                                       "baseline-restored"]


def test_cells_say_observed_and_whether_it_matched() -> None:
    rec = a_matrix()
    trusty, hybrid, unified = rec["targets"]
    assert report.cell_text(trusty, "baseline") == "not run"
    assert report.cell_text(hybrid, "baseline") == "failing ✓"
    assert report.cell_text(unified, "cgm") == "unlimited ✗ (expected running)"


def test_markdown_junit_and_html() -> None:
    rec = a_matrix()
    md = report.render_md(rec)
    assert "| `cgm` | not run | running ✓ | unlimited ✗ (expected running) |" in md
    assert "not run: the Ubuntu archive cannot be reached" in md and "some cell did not" in md
    root = ET.fromstring(report.render_junit(rec))
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {f"cgroup-lab.sudo-lxc-cgroups.{t}" for t in ("trusty", "bookworm", "bookworm-unified")}
    assert suites["cgroup-lab.sudo-lxc-cgroups.trusty"].get("skipped") == "1"
    assert suites["cgroup-lab.sudo-lxc-cgroups.bookworm-unified"].get("failures") == "1"
    assert root.get("failures") == "1" and root.get("tests") == "13"
    page = report.render_html(rec)
    assert 'class="cell not-ok" data-target="bookworm-unified">unlimited ✗ (expected running)' in page
    assert 'class="cell not-run" data-target="trusty">not run' in page


def closed_url(path: str = "") -> str:
    """An http URL on a loopback port nothing listens on (no traffic leaves the machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/{path}"


@pytest.fixture
def answering() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback answering every HEAD with 200: (its base URL, the paths asked)."""
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            asked.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def unreachable_trusty(tmp_path: Path, **flags: object) -> Settings:
    """trusty with its ISO and archives on closed loopback ports."""
    closed: dict[str, object] = {"iso_url": closed_url("trusty.iso"), "ubuntu_mirror": closed_url(),
                                 "ubuntu_old_mirror": closed_url()}
    return make_settings(tmp_path, target="trusty", **{**closed, **flags})


def test_a_target_whose_sources_do_not_answer_is_not_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real matrix path for trusty: the probe finds the ISO's port closed, nothing is started,
    the reason recorded is what the probe found, reports written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    s = unreachable_trusty(tmp_path)
    assert matrix.run(s, ("trusty",), publish=report.write_matrix_reports) is False
    where = matrix.matrix_root("sudo-lxc-cgroups") / "latest"
    rec = json.loads((where / "matrix.json").read_text())
    [cell] = rec["targets"]
    assert cell["status"] == "not run"
    assert cell["why"].startswith("the Ubuntu 14.04 ISO cannot be reached from this host (")
    assert f"{s.iso_url}: [Errno 111] Connection refused" in cell["why"], cell["why"]
    assert {p.name for p in where.iterdir()} == {"matrix.json", "matrix.md", "junit.xml", "matrix.html"}
    assert not (tmp_path / ".lab" / "sudo-lxc-cgroups-trusty").exists(), "nothing was brought up"


def test_an_unknown_target_is_refused_before_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, target="bookworm", scenario="sudo-systemctl-user")
    with pytest.raises(LabError, match="has no target 'trusty'"):
        matrix.run(s, ("bookworm", "trusty"))
    assert not (tmp_path / ".lab").exists()


def test_jobs_run_cells_side_by_side_each_with_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--jobs 2 goes through the thread pool: each cell's output lands in its own log, the record
    keeps the targets' order and says how many ran at once (trusty: the real not-run path)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    s = unreachable_trusty(tmp_path)
    assert matrix.run(s, ("trusty",), publish=report.write_matrix_reports, jobs=2) is False
    rec = json.loads((matrix.matrix_root("sudo-lxc-cgroups") / "latest" / "matrix.json").read_text())
    assert rec["jobs"] == 2 and [c["target"] for c in rec["targets"]] == ["trusty"]
    log = Path(rec["targets"][0]["log"])
    assert log.parent.name == "logs" and "not run" in log.read_text()


@pytest.mark.parametrize("jobs", [0, 9])
def test_jobs_out_of_range_are_refused_before_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       jobs: int) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LabError, match="--jobs must be between 1 and 8"):
        matrix.run(make_settings(tmp_path, target="bookworm"), ("bookworm",), jobs=jobs)
    assert not (tmp_path / ".lab").exists()


def test_the_reason_comes_from_a_probe_made_now(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                answering: tuple[str, list[str]]) -> None:
    """Where trusty's sources answer, the cell runs (why_not says nothing); when only the archive
    is silent, the reason names it; with a box of its own the ISO is not needed, the archive still is
    (the guest installs the scenario's packages from it)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    base, asked = answering
    everything = make_settings(tmp_path, target="trusty", iso_url=f"{base}/trusty.iso", ubuntu_mirror=base,
                               ubuntu_old_mirror=closed_url())
    assert matrix.why_not(everything) == ""
    assert asked == ["/trusty.iso", "/dists/trusty/Release"], "each source was asked, now"
    no_archive = unreachable_trusty(tmp_path, iso_url=f"{base}/trusty.iso")
    assert matrix.why_not(no_archive).startswith("an Ubuntu archive serving trusty cannot be reached from this host")
    box = tmp_path / "trusty.box"
    box.write_bytes(b"a box of one's own")
    assert matrix.why_not(unreachable_trusty(tmp_path, box=str(box), ubuntu_mirror=base)) == "", \
        "with a box, the closed ISO port does not matter"
    assert matrix.why_not(unreachable_trusty(tmp_path, box=str(box))).startswith("an Ubuntu archive serving trusty")


def test_a_debian_target_needs_its_mirror_only_until_its_base_image_is_built(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    s = make_settings(tmp_path, target="bookworm", debian_mirror=closed_url("debian"))
    assert matrix.why_not(s).startswith("Debian's mirror (for bookworm) cannot be reached from this host")
    from lab.images.build import base_for

    image = base_for(resolve(s))
    image.dir.mkdir(parents=True)
    for part in (image.disk, image.kernel, image.initrd):
        part.write_bytes(b"built")
    assert matrix.why_not(s) == ""
