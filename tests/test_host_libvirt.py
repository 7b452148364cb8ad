"""libvirt against the real libvirtd (integration): the lab's network, absence read only from libvirt's "not found",
the XML read back; and the clock of lab.up's phases."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.core import errors, paths
from lab.host import libvirt, storage
from lab.machine.phases import VAGRANT_MARKS, PhaseClock


@pytest.fixture()
def network() -> Iterator[str]:
    libvirt.ensure_daemons()
    name = f"lab-test-net-{os.getpid()}"
    yield name
    libvirt.cleanup(f"lab-test-net-dom-{os.getpid()}", name, owner="cgroup-lab test")
    assert libvirt.virsh("net-info", name).returncode != 0


@pytest.mark.integration
def test_the_lab_network_has_spanning_tree_off(network: str) -> None:
    """vagrant-libvirt's own network has STP on, so every new tap port waits ~4 s (measured)."""
    octet = libvirt.pick_octet(200, network)
    assert libvirt.ensure_network(network, octet) is True
    xml = libvirt.virsh("net-dumpxml", network, check=True).stdout
    assert re.search(r"<bridge name='[^']+' stp='off'", xml), xml
    assert f"address='192.168.{octet}.1'" in xml and "<forward" not in xml
    assert "<dnsmasq:option value='no-ping'/>" in xml
    assert "Active:" in libvirt.virsh("net-info", network).stdout
    assert libvirt.ensure_network(network, octet) is False  # there already: left as it is


def test_phase_clock_names_vagrants_phases_in_order() -> None:
    clock = PhaseClock()
    seen: list[str] = []
    feed = clock.wrap(seen.append)
    for text, _ in VAGRANT_MARKS:
        feed(f"==> lab-x: {text}...")
        feed("==> lab-x: something else")
    clock.mark("vagrant: exit")
    names = [name for name, _ in clock.as_dict()["phases"]]
    assert names == [phase for _, phase in VAGRANT_MARKS] + ["vagrant: exit"]
    assert len(seen) == 2 * len(VAGRANT_MARKS)
    assert clock.as_dict()["total_s"] >= 0


@pytest.mark.integration
def test_a_labs_network_reserves_its_address_and_a_build_network_forwards(network: str) -> None:
    """A lab started from a saved state keeps a fixed address: its network's DHCP server gives the
    image's MAC that address too (a reboot keeps it); an image build's network forwards (NAT)."""
    octet = libvirt.pick_octet(201, network)
    assert libvirt.ensure_network(network, octet, reserve=("52:54:00:aa:bb:cc", f"192.168.{octet}.2")) is True
    xml = libvirt.virsh("net-dumpxml", network, check=True).stdout
    assert f"<host mac='52:54:00:aa:bb:cc' ip='192.168.{octet}.2'/>" in xml and "<forward" not in xml
    libvirt.cleanup(f"lab-test-net-dom-{os.getpid()}", network, owner="cgroup-lab test")
    assert libvirt.ensure_network(network, octet, nat=True) is True
    assert "<forward mode='nat'" in libvirt.virsh("net-dumpxml", network, check=True).stdout


# --- absence is libvirt's "not found", nothing else (issue 19, item 5) -------------------------------

@pytest.mark.integration
def test_absence_is_read_from_libvirts_not_found() -> None:
    libvirt.ensure_daemons()
    name = f"lab-exits-none-{os.getpid()}"
    assert libvirt.domain_state(name) == "not created"
    assert libvirt.domain_owner(name) is None and libvirt.domain_xml(name) is None
    assert libvirt.snapshots(name) == [] and not libvirt.domain_exists(name)
    assert libvirt.network_active(name) is None and libvirt.guest_address(name) is None


@pytest.fixture()
def libvirtd_not_answering() -> Iterator[None]:
    """The real virsh and libvirt client, pointed at a libvirtd socket that does not exist: every
    call fails, and never because an object is absent."""
    token = libvirt._HOST.set(libvirt.Host(libvirt_uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock"))
    try:
        yield
    finally:
        libvirt._HOST.reset(token)


@pytest.mark.integration
@pytest.mark.parametrize("call", [
    lambda: libvirt.domain_state("lab-x"), lambda: libvirt.domain_owner("lab-x"), lambda: libvirt.snapshots("lab-x"),
    lambda: libvirt.network_active("lab-x"), lambda: libvirt.domain_exists("lab-x"),
    lambda: libvirt.guest_address("lab-x"), lambda: libvirt.cleanup("lab-x", "lab-x", "owner"),
    lambda: libvirt.used_octets("lab-x"), lambda: libvirt.network_users("lab-x"),
    lambda: storage.exists("lab-x.qcow2"), lambda: storage.delete("lab-x.qcow2"),
], ids=["domain_state", "domain_owner", "snapshots", "network_active", "domain_exists", "guest_address", "cleanup",
        "used_octets", "network_users", "volume_exists", "volume_delete"])
def test_any_other_virsh_failure_is_a_testbed_error_quoting_virsh(libvirtd_not_answering: None, call) -> None:  # type: ignore[no-untyped-def]
    """main read each of these as "no such domain" (or no owner, no snapshot), so lab.up could start
    over on a lab that is there."""
    with pytest.raises(errors.TestbedError) as info:
        call()
    assert info.value.exit_code == 3
    assert "failed: failed to connect to the hypervisor / Failed to connect socket to '/nonexistent/libvirt-sock'" \
        in info.value.message


@pytest.mark.integration
def test_the_lab_refuses_to_start_over_when_libvirt_cannot_tell(libvirtd_not_answering: None,
                                                                 tmp_path: Path) -> None:
    """lab.up's claim on the domain name asks libvirt who owns it; a failing virsh is not "nobody"."""
    from labtest import make_settings

    from lab.machine import lifecycle

    s = make_settings(tmp_path, target="bookworm", name="exits-claim")
    with pytest.raises(errors.TestbedError, match="virsh dumpxml --inactive lab-exits-claim failed"):
        lifecycle._claim(s, paths.lab_dir(s.name, tmp_path), "libvirt")


# --- libvirt's XML through ElementTree, against the real libvirtd ----------------------------------------

@pytest.mark.integration
def test_a_network_and_the_domain_on_it_are_read_back(network: str) -> None:
    """The network XML written with ElementTree is what libvirt keeps; the domain that uses it (defined,
    never started) is found by network_users, and its subnet by used_octets."""
    octet = libvirt.pick_octet(201, network)
    libvirt.ensure_network(network, octet)
    assert libvirt.network_addresses(libvirt.virsh("net-dumpxml", network, check=True).stdout) == [
        f"192.168.{octet}.1"]
    assert octet in libvirt.used_octets("another-network")
    domain = f"lab-test-net-dom-{os.getpid()}"
    xml = (f"<domain type='qemu'><name>{domain}</name><memory unit='MiB'>32</memory>"
           f"<description>cgroup-lab test</description><os><type arch='x86_64'>hvm</type></os>"
           f"<devices><interface type='network'><source network='{network}'/></interface></devices></domain>")
    libvirt.virsh("define", "/dev/stdin", input_text=xml, check=True)
    assert libvirt.network_users(network) == [domain]
    assert libvirt.network_users(network, besides=domain) == []
    assert libvirt.domain_owner(domain) == "cgroup-lab test"
    parsed = libvirt.domain_xml(domain, inactive=True)
    assert parsed is not None and libvirt.domain_networks(parsed) == {network}


def test_the_subnet_choice() -> None:
    """The lab keeps the subnet it had, else takes its preferred one, else the first free one."""
    assert libvirt.choose_octet(150, used={150, 100}, current=None) == 101
    assert libvirt.choose_octet(150, used={150}, current=170) == 170
    assert libvirt.choose_octet(150, used={170}, current=170) == 150
    assert libvirt.choose_octet(150, used=set(range(100, 220)), current=None) is None


@pytest.mark.integration
def test_a_daemon_that_ends_while_waited_for_is_started_again(tmp_path: Path) -> None:
    """Seen in CI: libvirtd told to stop in the middle of a `virsh restore` kept running without
    answering for seconds; the next lab.up saw it running, did not start it, and gave up after 30 s.
    Here real processes stand in for libvirtd: one that runs 1.5 s without answering, then ends;
    the wait starts the daemon again as soon as it is gone, and the new one answers."""
    import signal
    import subprocess
    import time

    name = f"labd{os.getpid() % 100000}"
    daemon = tmp_path / name
    answer, pidfile = tmp_path / "answer", tmp_path / "pid"
    daemon.write_text("#!/bin/sh\n"
                      'if [ "$1" = old ]; then sleep 1.5; exit 0; fi\n'
                      'if [ "$1" = -d ]; then "$0" run </dev/null >/dev/null 2>&1 & exit 0; fi\n'
                      f'echo $$ > {pidfile}; touch {answer}; while :; do sleep 1; done\n')
    daemon.chmod(0o755)
    old = subprocess.Popen([str(daemon), "old"])
    import threading
    threading.Thread(target=old.wait, daemon=True).start()  # reaped when it ends, as init reaps libvirtd
    try:
        time.sleep(0.3)
        assert libvirt.daemon_running(name)
        started = time.monotonic()
        libvirt.start_until_answer({name: daemon}, answer.exists, 15, interval=0.2)
        assert answer.exists() and old.poll() == 0
        assert time.monotonic() - started < 10
    finally:
        old.kill()
        old.wait()
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)


@pytest.mark.integration
def test_a_daemon_that_never_answers_is_named_when_the_wait_gives_up(tmp_path: Path) -> None:
    """A daemon that runs and never answers: the error says it runs and does not answer."""
    import subprocess

    name = f"labe{os.getpid() % 100000}"
    daemon = tmp_path / name
    daemon.write_text("#!/bin/sh\nwhile :; do sleep 1; done\n")
    daemon.chmod(0o755)
    hung = subprocess.Popen([str(daemon)])
    try:
        with pytest.raises(errors.TestbedError, match=f"{name} running, libvirtd does not answer yet"):
            libvirt.start_until_answer({name: daemon}, lambda: False, 1.5, interval=0.2)
    finally:
        hung.kill()
        hung.wait()
