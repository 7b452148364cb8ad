"""Image VMs on the libvirt host: boot a base image once and save its running state; start any VM
(a layer's build VM, a lab) from a saved state under its own name, disk and network.

A saved state is `virsh save` of a settled VM: its RAM and device state, in a file in the pool
next to the disk it was saved with. Starting from it takes about a second instead of the ~30 s a
boot takes under TCG. Each VM started from it gets its own copy of the state file whose header
names it (lab.host.domain explains why libvirt needs that), and its own qcow2 overlay on the disk
the state was saved with; the copy is deleted as soon as the VM runs.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from lab.core import console, locks
from lab.core.errors import TestbedError
from lab.host import agent, domain, libvirt, storage
from lab.images.base import DISK_SIZE_MB, BaseImage
from lab.images.bootwatch import FIRST_OUTPUT_S, BootStalled, BootWatch
from lab.remote.port import PORTS

BOOT_RECIPE = "boot-2"  # bump when the boot domain or the settling change
HEAD_BYTES = 256 * 1024  # enough for libvirt's save header (the XML plus 64 KiB of padding)
USUAL_BOOT_S = 40  # a base image's boot under TCG on a 2-core host, settled (measured ~30 s)
BASE_PREFIX = "cgroup-lab-base-"  # every volume of a base image on a libvirt host (lab.prune knows them by it)


@dataclass(frozen=True)
class MachineShape:
    """The guest-visible machine every VM of an image has (fixed by its saved state): vCPUs,
    memory in MiB, libvirt driver ("qemu" for TCG, "kvm"), and the host's hypervisor version."""

    cpus: int
    memory: int
    driver: str
    hypervisor: str


@dataclass(frozen=True)
class HostBase:
    """A base image on a libvirt host: its volumes and its saved running state. state_key covers
    the image, the machine shape and the boot recipe."""

    image: BaseImage
    shape: MachineShape
    state_key: str

    @property
    def prefix(self) -> str:
        """The stem of the disk's and state's volume names: cgroup-lab-base-<target>-<state_key>."""
        return f"{BASE_PREFIX}{self.image.target}-{self.state_key}"

    @property
    def disk_volume(self) -> str:
        """The pool volume of the disk the state was saved with (a qcow2 upload of the image's disk):
        <prefix>.qcow2."""
        return f"{self.prefix}.qcow2"

    @property
    def state_volume(self) -> str:
        """The pool volume of the booted base's saved running state (virsh save): <prefix>.state."""
        return f"{self.prefix}.state"

    @property
    def kernel_volume(self) -> str:
        """The pool volume of the image's kernel (raw): cgroup-lab-base-<target>-<image key>.vmlinuz (keyed
        by the image, not the machine shape)."""
        return f"{BASE_PREFIX}{self.image.target}-{self.image.key}.vmlinuz"

    @property
    def initrd_volume(self) -> str:
        """The pool volume of the image's initrd (raw): cgroup-lab-base-<target>-<image key>.initrd."""
        return f"{BASE_PREFIX}{self.image.target}-{self.image.key}.initrd"

    @property
    def mac(self) -> str:
        """The guest's MAC address, 52:54:00:xx:xx:xx derived from state_key (lab.host.domain.mac_address)."""
        return domain.mac_address(self.state_key)


def image_lock(image: BaseImage) -> str:
    """The lock held while a base image's kernel and initrd are uploaded and it boots (the volumes
    named by the image's key, not the machine's): image-<target>-<key>; lab.prune leaves them alone
    while it is held."""
    return f"image-{image.target}-{image.key}"


def host_base(image: BaseImage, shape: MachineShape) -> HostBase:
    """The base image as it is (or will be) on the current libvirt host."""
    values = f"{image.key}\0{shape.cpus}\0{shape.memory}\0{shape.driver}\0{shape.hypervisor}\0{BOOT_RECIPE}"
    return HostBase(image=image, shape=shape, state_key=hashlib.sha256(values.encode()).hexdigest()[:16])


def hypervisor() -> str:
    """The libvirt host's hypervisor version line (a saved state restores only into the QEMU that
    saved it, so it is part of the state's key)."""
    ok, detail = libvirt.reach()
    if not ok:
        raise TestbedError(f"libvirt does not answer ({detail})", hint="see: invoke lab.doctor")
    return detail


def saved_state_ready(state_volume: str) -> bool:
    """The state volume exists and libvirt finished writing it (its header says so)."""
    if not storage.exists(state_volume):
        return False
    try:
        return domain.read_header(storage.read_head(state_volume, HEAD_BYTES), state_volume).complete
    except TestbedError:
        return False


@dataclass(frozen=True)
class StagedState:
    """A copy of a saved state under a VM's own name, ready to restore (stage_state): the domain
    XML it carries and the copy's path on the libvirt host (deleted by start_staged)."""

    xml: str
    copy_path: str


def stage_state(state_volume: str, *, name: str, description: str, disk: str, network: str, serial_log: str,
                timeout: float, vm_uuid: str | None = None) -> StagedState:
    """Copy the saved state in `state_volume` for the VM `name`, its header's domain XML naming
    that VM, `disk` (a qcow2 overlay on the disk the state was saved with; it need not exist yet)
    and `network`; the copy is the slow part of a start (~0.25 s for 250 MB here), so lab.up does
    it while the lab's network and disk are made. Raises TestbedError when the state is incomplete
    or damaged, or the copy fails."""
    head = storage.read_head(state_volume, HEAD_BYTES)
    header = domain.read_header(head, state_volume)
    if header.prefix_size > len(head):
        head = storage.read_head(state_volume, header.prefix_size)
        header = domain.read_header(head, state_volume)
    if not header.complete:
        raise TestbedError(f"the saved state {state_volume} is incomplete (its save was interrupted)",
                           hint="rebuild it: invoke lab.build --force")
    xml = domain.derived_xml(header.xml, name=name, uuid=vm_uuid or str(uuid.uuid4()), description=description,
                             disk=disk, network=network, serial_log=serial_log)
    copy_path = storage.copy_with_head(state_volume, f"{name}.state", domain.with_xml(header, xml), timeout=timeout)
    return StagedState(xml=xml, copy_path=copy_path)


def start_staged(staged: StagedState, *, persistent: bool, timeout: float) -> str:
    """Start the VM of a staged state, running; persistent: defined in libvirt (a lab), else
    transient (a build VM). The copy is deleted either way. Returns the domain XML it runs with.
    Raises TestbedError when libvirt refuses it."""
    try:
        if persistent:
            libvirt.define(staged.xml)
        libvirt.restore(staged.copy_path, timeout=timeout)
    finally:
        storage.delete_file(staged.copy_path)
    return staged.xml


def start_from_state(state_volume: str, *, name: str, description: str, disk: str, network: str,
                     serial_log: str, persistent: bool, timeout: float, vm_uuid: str | None = None) -> str:
    """Start the VM `name` from the saved state in `state_volume`, running, on `disk` (a qcow2
    overlay on the disk the state was saved with) and `network`; persistent: defined in libvirt
    (a lab), else transient (a build VM). Returns the domain XML it runs with. Raises TestbedError
    when the state is damaged or libvirt refuses it."""
    staged = stage_state(state_volume, name=name, description=description, disk=disk, network=network,
                         serial_log=serial_log, timeout=timeout, vm_uuid=vm_uuid)
    return start_staged(staged, persistent=persistent, timeout=timeout)


def ensure_host_base(base: HostBase, *, description: str, boot_timeout: float, quiet_timeout: float,
                     upload_timeout: float, verbose: bool = False) -> None:
    """Make sure the libvirt host has the base image's volumes and its saved running state: upload
    the image and boot it once when the state is missing. One build per state at a time on this
    machine (its lock, and image_lock while it uploads and boots); a boot that stalls is tried once
    more, then TestbedError (BootStalled). Under
    KVM a boot with nothing at all on its console raises BootStalled at once (KVM does not work
    there; the caller falls back to TCG)."""
    with locks.held(f"base-{base.state_key}", timeout=boot_timeout * 3, what=f"base image {base.prefix}",
                    on_wait=lambda: console.info(f"waiting for another build of {base.prefix}")), \
            locks.held(image_lock(base.image), timeout=boot_timeout * 3, what=f"base image {base.image.dir.name}"):
        if saved_state_ready(base.state_volume):
            return
        for volume, source, fmt in ((base.kernel_volume, base.image.kernel, "raw"),
                                    (base.initrd_volume, base.image.initrd, "raw")):
            if not storage.exists(volume):
                storage.upload(volume, source, fmt, timeout=upload_timeout)
        for attempt in (1, 2):
            try:
                _boot_and_save(base, description, boot_timeout, quiet_timeout, upload_timeout, verbose)
                return
            except BootStalled as exc:
                if base.shape.driver == "kvm" and not exc.log_tail:
                    raise  # KVM that boots nothing: the caller goes on under TCG (accel.kvm_failed)
                if attempt == 2:
                    raise TestbedError(f"{exc.message} (tried twice); its console's last lines:\n"
                                       + _indent(exc.log_tail), hint=exc.hint) from None
                console.info(f"[yellow]{exc.message}; trying the boot once more. Its console's last lines:[/]\n"
                             + _indent(exc.log_tail))


def _boot_and_save(base: HostBase, description: str, boot_timeout: float, quiet_timeout: float,
                   upload_timeout: float, verbose: bool) -> None:
    pool = storage.pool_path()
    name = f"cgroup-lab-boot-{base.state_key[:12]}"
    network = name
    console_log = f"{pool}/{base.prefix}.console.log"
    storage.delete_file(f"{pool}/{base.state_volume}")
    with console.step(f"upload the base image {base.image.dir.name} into libvirt's pool",
                      "libvirt to copy the disk (~2 s)", verbose, usual_s=5):
        storage.upload(base.disk_volume, base.image.disk, "qcow2", timeout=upload_timeout)
    octet = pick_network(network, nat=False, reserve=(base.mac, None), timeout=boot_timeout)
    machine = domain.Machine(
        name=name, uuid=str(uuid.uuid4()), description=description, disk=f"{pool}/{base.disk_volume}",
        network=network, mac=base.mac, kernel=f"{pool}/{base.kernel_volume}", initrd=f"{pool}/{base.initrd_volume}",
        cmdline=base.image.cmdline, cpus=base.shape.cpus, memory=base.shape.memory, driver=base.shape.driver,
        serial_log=console_log, channels=PORTS)
    done = False
    try:
        libvirt.create(domain.machine_xml(machine))
        watch = boot_watch(base, lambda: storage.tail(console_log), quiet_timeout)
        with console.step(f"boot the base image once ({base.shape.driver}, {base.shape.cpus} vCPU, "
                          f"{base.shape.memory} MiB), network 192.168.{octet}.0/24",
                          "the kernel and systemd (~30 s on TCG)", verbose, usual_s=USUAL_BOOT_S):
            agent.wait_ready(name, timeout=boot_timeout, watch=watch.check, what="the base image's first boot")
            settle(name, boot_timeout)
        with console.step("save the booted base's running state", "libvirt to write RAM and devices (~3 s)",
                          verbose, usual_s=10):
            libvirt.save(name, f"{pool}/{base.state_volume}", timeout=boot_timeout)
            storage.refresh()
        done = True
    finally:
        libvirt.stop(name)
        remove_network(network)
        if not done:
            storage.delete_file(f"{pool}/{base.state_volume}")
            storage.delete(base.disk_volume)
        storage.delete_file(console_log)  # its last lines are in the error when it failed


def boot_watch(base: HostBase, read: Callable[[], str], quiet_timeout: float) -> BootWatch:
    """The watch over the first boot of `base` (read: the console log's recent text): quiet_timeout
    seconds without progress is a stall, and so is no first line within FIRST_OUTPUT_S of the
    base's driver (15 s under KVM, 60 s under TCG)."""
    return BootWatch(read=read, quiet_s=quiet_timeout, what=f"the first boot of base image {base.image.dir.name}",
                     first_output_s=FIRST_OUTPUT_S.get(base.shape.driver, FIRST_OUTPUT_S["qemu"]))


def settle(name: str, timeout: float) -> str:
    """Wait (through the guest agent) until systemd's boot finished: "running", or "degraded"
    with its failed units named; raises TestbedError on anything else."""
    wait = (f"timeout {int(timeout)} systemctl is-system-running --wait; "
            "systemctl --failed --no-legend --plain | cut -d' ' -f1")
    result = agent.run(name, wait, timeout=timeout + 30)
    lines = result.stdout.split()
    status = lines[0] if lines else "?"
    if status == "degraded":
        console.info(f"[yellow]{name} booted degraded; failed units: {' '.join(lines[1:])}[/]")
    elif status != "running":
        raise TestbedError(f"{name}: systemd's boot did not finish: is-system-running says {status!r}")
    return status


def pick_network(network: str, *, nat: bool, reserve: tuple[str, str | None], timeout: float) -> int:
    """Define and start `network` on a free 192.168.x.0/24 (under the host-wide network lock);
    reserve = (MAC, address or None for .2); returns x."""
    remove_network(network)
    with locks.held("network", timeout=timeout, what=f"network {network}"):
        octet = libvirt.pick_octet(150, network)
        libvirt.ensure_network(network, octet, nat=nat, reserve=(reserve[0], reserve[1] or f"192.168.{octet}.2"))
    return octet


def remove_network(network: str) -> None:
    """Stop and undefine an image VM's network (no-op when it is gone)."""
    if libvirt.virsh("net-info", network).returncode == 0:
        libvirt.virsh("net-destroy", network)
        libvirt.virsh("net-undefine", network)


def disk_capacity() -> int:
    """The virtual size of every overlay on a base disk, in bytes: DISK_SIZE_MB MiB (the base filesystem's size)."""
    return DISK_SIZE_MB << 20


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines()) or "    (nothing on the console)"
