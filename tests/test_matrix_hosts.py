"""lab.matrix --hosts: parsing, how labs are handed to hosts, and the reports naming the host (no VM)."""

from __future__ import annotations

import threading
import time

import pytest
from test_matrix import a_matrix

from lab.core import errors
from lab.core.errors import SettingError
from lab.report import matrix as report
from lab.run import hosts
from lab.run.hosts import HostPool, PoolHost

A, B = "qemu:///system", "qemu+ssh://root@lab-b:2222/system"


def test_parse_checks_each_uri_and_drops_duplicates() -> None:
    assert hosts.parse(f"{A}, {B},{A}") == (A, B)
    with pytest.raises(SettingError, match=r"\(from --hosts\).*qemu\+tcp"):
        hosts.parse(f"{A},qemu+tcp://x/system")
    with pytest.raises(SettingError, match="one or more libvirt URIs"):
        hosts.parse(" , ")


def pool(*rooms: int) -> HostPool:
    return HostPool([PoolHost(uri=f"qemu+ssh://h{i}/system", label=f"h{i}:22", room=r) for i, r in enumerate(rooms)])


def test_one_at_a_time_the_labs_alternate_between_hosts() -> None:
    p = pool(1, 1)
    got = []
    for target in ("t1", "t2", "t3", "t4"):
        with p.slot(target) as host:
            got.append(host.label)
    assert got == ["h0:22", "h1:22", "h0:22", "h1:22"]
    assert [h["ran"] for h in p.summary()] == [["t1", "t3"], ["t2", "t4"]]


def test_a_lab_that_is_up_stays_on_its_host_and_a_down_host_takes_none() -> None:
    p = pool(1, 1)
    with p.slot("t1", pinned="qemu+ssh://h1/system") as host:
        assert host.label == "h1:22"
    p.hosts[0].down = "gone"
    with p.slot("t2") as host:
        assert host.label == "h1:22"
    with pytest.raises(errors.TestbedError, match="where its lab is up"), p.slot("t3", pinned="qemu+ssh://h0/system"):
        pass
    p.hosts[1].down = "gone too"
    left = "no libvirt host is left: h0:22: gone; h1:22: gone too"
    with pytest.raises(errors.TestbedError, match=left), p.slot("t4"):
        pass


def test_no_host_runs_more_labs_than_it_has_room_for() -> None:
    p = pool(1, 2)
    busy: dict[str, int] = {}
    most: dict[str, int] = {}
    lock = threading.Lock()

    def lab(target: str) -> None:
        with p.slot(target) as host:
            with lock:
                busy[host.label] = busy.get(host.label, 0) + 1
                most[host.label] = max(most.get(host.label, 0), busy[host.label])
            time.sleep(0.05)
            with lock:
                busy[host.label] -= 1

    threads = [threading.Thread(target=lab, args=(f"t{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert most["h0:22"] == 1 and most["h1:22"] <= 2
    assert sum(len(h.ran) for h in p.hosts) == 8


def test_the_reports_say_which_host_ran_which_target() -> None:
    rec = a_matrix()
    rec["targets"][1]["host"] = "local"
    rec["targets"][2]["host"] = "root@lab-b:2222"
    md = report.render_md(rec)
    assert "| `bookworm-unified` | ✗ not as expected | root@lab-b:2222 |" in md
    assert "| `bookworm` | ✓ as expected | local |" in md
    assert 'hostname="root@lab-b:2222"' in report.render_junit(rec)
    assert "on root@lab-b:2222" in report.render_html(rec)
