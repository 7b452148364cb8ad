"""The testbed a verify run works on: the lab's VM, reached over SSH, returned to its baseline
snapshot on demand. lab.run's engine takes any object of this shape (lab.run.engine.Testbed), so it
never needs the settings or libvirt itself."""

from __future__ import annotations

from collections.abc import Callable

from lab.config.settings import Settings
from lab.core import paths
from lab.core.errors import TestbedError
from lab.host import libvirt
from lab.machine import lifecycle, ports
from lab.machine.resolve import provider_of, use_libvirt
from lab.machine.state import read as read_state
from lab.remote.port import Ports
from lab.remote.ssh import CommandResult, Remote


class VmTestbed:
    """The lab's libvirt (or VirtualBox) VM.

    can_revert: the lab has a baseline snapshot to return to (libvirt, and lab.up took one);
    VirtualBox labs and labs from before snapshots can only be isolated by the scenario's teardown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.name = settings.name
        self.lab = paths.lab_dir(settings.name)
        self.libvirt = provider_of(settings) == "libvirt"
        self.domain = lifecycle.domain_name(settings)
        self.can_revert = self.libvirt and bool(read_state(self.lab).baseline_at)

    def connect(self) -> Remote:
        """A Remote to the admin (not connected yet: connect() or use it as a context manager)."""
        return lifecycle.connect(self.settings)

    def alive(self) -> None:
        """TestbedError in seconds when the VM is no longer running (asked during long silences)."""
        lifecycle.require_running(self.settings)

    def revert(self) -> str:
        """Back to the baseline snapshot, disk and memory (QEMU loadvm in the running domain, ~0.3 s
        on TCG); returns how ("loadvm" or "snapshot-revert"). Every SSH connection to the guest is
        dead afterwards (its TCP state is the snapshot's): close them before, open new ones after.
        Raises TestbedError when libvirt cannot revert."""
        if not self.can_revert:
            raise TestbedError(f"lab {self.name} has no baseline snapshot to return to",
                               hint="run lab.destroy then lab.up (lab.up takes the snapshot)")
        use_libvirt(self.settings)
        return libvirt.revert_baseline(self.domain)

    def ports(self) -> Ports | None:
        """The host ends of the lab's port shells, connected (the shells in the baseline snapshot
        wait on them), or None for a lab without them (then every revert logs in over SSH again).
        Raises TestbedError when the lab has them but they cannot be reached."""
        if not (self.libvirt and ports.has_port_shells(self.lab.root)):
            return None
        use_libvirt(self.settings)
        return ports.open_ports(self.domain, self.connect(), timeout=self.settings.libvirt_timeout)

    def prove_baseline(self, run: Callable[[str], CommandResult]) -> str:
        """Run the baseline fingerprint in the guest (run: a command as the admin) and compare it with
        the one lab.up recorded; returns it. Raises TestbedError when they differ (the snapshot is
        not the baseline)."""
        now = run(lifecycle.FINGERPRINT).stdout.strip()
        lifecycle.prove_baseline(self.lab, now)
        return now
