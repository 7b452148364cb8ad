"""The lab's network against the real libvirtd (integration), and the clock of lab.up's phases."""

from __future__ import annotations

import os
import re

import pytest

from lab.host import libvirt
from lab.machine.phases import VAGRANT_MARKS, PhaseClock


@pytest.fixture()
def network() -> str:
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
