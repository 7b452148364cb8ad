"""The libvirt side of a lab: daemons on hosts without systemd, the storage pool, the lab's own
network address, and cleaning up exactly the domain, volume and network named after the lab.

Every call goes to the libvirt host of the current lab (`use(settings)`; default qemu:///system):
this machine's daemons, or a remote host through a qemu+ssh:// URI (lab.host.sshhost). The host is
kept in a context variable, so that labs on different hosts can run in different threads. On a
remote host a lost connection is a TestbedError naming the URI, never mistaken for "no such domain".
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import socket
import subprocess
import time
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from lab.config.libvirt_uri import LOCAL_URI
from lab.config.settings import Settings
from lab.core import console
from lab.core.errors import LabError, TestbedError, ToolMissing
from lab.host import sshhost, tools

URI = LOCAL_URI
POOL = "default"
POOL_PATH = "/var/lib/libvirt/images"
# virsh's words when the connection itself failed (not the command)
CONNECTION_LOST = ("failed to connect to the hypervisor", "End of file while reading data", "Cannot recv data",
                   "Cannot write data", "no valid connection", "client socket is closed")


@dataclass(frozen=True)
class Host:
    """The libvirt host of a lab: its URI as written, the URI virsh gets, SSH access when remote."""

    uri: str = URI
    libvirt_uri: str = URI
    access: sshhost.HostAccess | None = None
    timeout: float = 60

    @property
    def remote(self) -> bool:
        return self.access is not None


LOCAL = Host()
_HOST: ContextVar[Host] = ContextVar("cgroup_lab_libvirt_host", default=LOCAL)


def host_for(settings: Settings) -> Host:
    """The Host of the settings' libvirt_uri (for a remote one, its ssh wrapper is written)."""
    uri = settings.libvirt
    if not uri.remote:
        return Host(timeout=settings.libvirt_timeout)
    access = sshhost.access(uri, settings.libvirt_timeout)
    return Host(uri=uri.text, libvirt_uri=access.libvirt_uri, access=access, timeout=settings.libvirt_timeout)


def use(settings: Settings) -> Host:
    """Send this context's libvirt calls to the settings' libvirt host; returns it."""
    host = host_for(settings)
    _HOST.set(host)
    return host


def current() -> Host:
    """The libvirt host this context's calls go to (qemu:///system unless use() said otherwise)."""
    return _HOST.get()


def virsh(*args: str, timeout: float | None = None, check: bool = False, probe: bool = False,
          input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """virsh -c <the current host's URI> ARGS (input_text on its stdin), bounded by timeout
    (default: libvirt_timeout).

    Raises ToolMissing without virsh, TestbedError on a timeout, on a failure when check, and on a
    remote host whose connection failed (unless probe: then the result is returned)."""
    if not shutil.which("virsh"):
        raise ToolMissing("virsh is not installed", hint=tools.hint("virsh"))
    host = current()
    wait = timeout or host.timeout
    where = f" on {host.uri}" if host.remote else ""
    try:
        result = subprocess.run(["virsh", "-c", host.libvirt_uri, *args], capture_output=True, text=True,
                                timeout=wait, check=False, input=input_text if input_text is not None else "")
    except subprocess.TimeoutExpired:
        raise TestbedError(f"virsh {' '.join(args)}{where} did not answer within {wait:.0f}s",
                           hint="is libvirtd (or the host) hung? see: invoke lab.doctor; raise libvirt_timeout "
                                "if it is just slow") from None
    if host.remote and not probe and result.returncode != 0 and connection_lost(result.stderr):
        raise TestbedError(f"libvirt host {host.uri} is unreachable ({connection_detail(result.stderr)})",
                           hint=sshhost.ssh_hint(result.stderr, host.access))
    if check and result.returncode != 0:
        raise TestbedError(f"virsh {' '.join(args)}{where} failed: {result.stderr.strip()}")
    return result


def connection_lost(stderr: str) -> bool:
    """virsh's stderr says the connection to libvirtd failed (not the command)."""
    return any(words in stderr for words in CONNECTION_LOST)


def connection_detail(stderr: str) -> str:
    """The most telling line of a failed connection (ssh's own words when there are some)."""
    lines = [line.strip().removeprefix("error: ") for line in stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("failed to connect to the hypervisor")] or lines
    return " / ".join(lines[-2:]) if lines else "no answer"


def reach() -> tuple[bool, str]:
    """(libvirtd answers, its version line or why not), without raising for a lost connection."""
    if shutil.which("virsh") is None:
        return False, "virsh is not installed"
    result = virsh("version", timeout=max(15.0, current().timeout), probe=True)
    if result.returncode == 0:
        lines = [line for line in result.stdout.splitlines() if "running hypervisor" in line.lower()]
        return True, lines[0].strip() if lines else "answers"
    return False, connection_detail(result.stderr)


def reachable() -> bool:
    return reach()[0]


def systemd_is_init() -> bool:
    return Path("/run/systemd/system").is_dir()


KVM_NODE = Path("/dev/kvm")


def kvm_node_needs_fixing() -> bool:
    """/dev/kvm exists but the qemu user cannot open it (udev would make it root:kvm 0660).

    libvirt then finds KVM at probe time (as root) but "not available now" (as libvirt-qemu) and
    throws its capability cache away on every call: each domain define or snapshot revert
    re-probes qemu for about a minute."""
    if not KVM_NODE.exists():
        return False
    st = KVM_NODE.stat()
    try:
        kvm_gid = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return False
    return not (st.st_gid == kvm_gid and st.st_mode & 0o060 == 0o060)


def ensure_kvm_node() -> None:
    """On hosts without udev, give /dev/kvm the owner and mode udev's default rule gives it."""
    if kvm_node_needs_fixing() and os.geteuid() == 0 and not Path("/run/udev/control").exists():
        os.chown(KVM_NODE, 0, grp.getgrnam("kvm").gr_gid)
        os.chmod(KVM_NODE, 0o660)
        console.info("set /dev/kvm to root:kvm 0660, as udev would (libvirt re-probes qemu on every call otherwise)")


def ensure_daemons() -> None:
    """Make libvirt answer: start virtlogd and libvirtd by hand when systemd is not PID 1 (only
    on this machine; a remote host's libvirtd must answer, else TestbedError naming the URI)."""
    host = current()
    if host.remote:
        ok, detail = reach()
        if not ok:
            raise TestbedError(f"libvirt host {host.uri} does not answer ({detail})",
                               hint=sshhost.ssh_hint(detail, host.access))
        return
    ensure_kvm_node()
    if reachable():
        return
    if systemd_is_init():
        raise LabError("libvirtd does not answer", hint="run: systemctl start libvirtd virtlogd")
    if os.geteuid() != 0:
        raise LabError("libvirtd does not answer and starting it needs root",
                       hint="as root: /usr/sbin/virtlogd -d && /usr/sbin/libvirtd -d")
    for daemon in ("virtlogd", "libvirtd"):
        path = Path("/usr/sbin") / daemon
        if not path.exists():
            raise ToolMissing(f"{daemon} is not installed", hint=tools.hint(daemon))
        running = subprocess.run(["pgrep", "-x", daemon], capture_output=True, check=False).returncode == 0
        if not running:
            console.info(f"starting {daemon} (no systemd on this host)")
            subprocess.run([str(path), "-d"], check=True, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if reachable():
            return
        time.sleep(0.5)
    raise LabError("started libvirtd, but it did not answer within 30s", hint="see /var/log/libvirt/libvirtd.log")


def ensure_pool() -> None:
    """vagrant-libvirt uploads boxes into the 'default' pool; a fresh libvirt has none."""
    info = virsh("pool-info", POOL)
    if info.returncode != 0:
        if not current().remote:
            Path(POOL_PATH).mkdir(parents=True, exist_ok=True)
        virsh("pool-define-as", POOL, "dir", "--target", POOL_PATH, check=True)
        if current().remote:
            virsh("pool-build", POOL, check=True)
        virsh("pool-autostart", POOL)
        info = virsh("pool-info", POOL)
    if not re.search(r"State:\s+running", info.stdout):
        virsh("pool-start", POOL, check=True)


def used_octets(exclude_network: str) -> set[int]:
    """Third octets of 192.168.x.0/24 subnets in use by other libvirt networks or host interfaces
    (on a remote host: its libvirt networks only)."""
    used: set[int] = set()
    names = virsh("net-list", "--all", "--name").stdout.split()
    for net in names:
        if net == exclude_network:
            continue
        xml = virsh("net-dumpxml", net).stdout
        used.update(int(m) for m in re.findall(r"address=['\"]192\.168\.(\d+)\.", xml))
    if current().remote:
        return used
    addrs = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=False).stdout
    used.update(int(m) for m in re.findall(r"inet 192\.168\.(\d+)\.", addrs))
    return used


def pick_octet(preferred: int, network: str, current: int | None = None) -> int:
    """The lab's subnet: keep the one it had, else the preferred one, else the next free one."""
    used = used_octets(network)
    for candidate in ([current] if current else []) + [preferred] + list(range(100, 220)):
        if candidate and candidate not in used:
            return candidate
    raise LabError("no free 192.168.100-219.0/24 subnet for the lab's network",
                   hint="destroy labs you no longer need: invoke lab.destroy --name NAME")


def ensure_network(network: str, octet: int) -> bool:
    """Define and start the lab's isolated network 192.168.<octet>.0/24 (DHCP without dnsmasq's
    ping check, no forwarding) with spanning tree off, before vagrant-libvirt looks for it; True
    when it was created now.

    vagrant-libvirt would create it with `stp='on' delay='0'`, and Linux raises a forward delay of 0
    to 2 s when STP is on: every new tap port (every boot, every snapshot revert) then spends about
    4 s in listening/learning before the guest answers (measured). A one-bridge network has no loop
    for STP to break."""
    info = virsh("net-info", network)
    if info.returncode == 0:
        if not re.search(r"Active:\s+yes", info.stdout):
            virsh("net-start", network, check=True)
        return False
    # dnsmasq's no-ping: by default it pings an address before offering it and waits ~3 s for
    # silence (measured: DHCPDISCOVER to DHCPOFFER 3.0 s); the lab's network has one guest.
    xml = (f"<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>"
           f"<name>{network}</name><bridge stp='off' delay='0'/>"
           f"<ip address='192.168.{octet}.1' netmask='255.255.255.0'><dhcp>"
           f"<range start='192.168.{octet}.2' end='192.168.{octet}.254'/></dhcp></ip>"
           f"<dnsmasq:options><dnsmasq:option value='no-ping'/></dnsmasq:options></network>")
    virsh("net-define", "/dev/stdin", check=True, input_text=xml)
    virsh("net-start", network, check=True)
    return True


def box_volumes() -> set[str]:
    """Vagrant box names whose image vagrant-libvirt has uploaded into the pool (its volumes are
    named <box name with / as -VAGRANTSLASH->_vagrant_box_image_<version>_<time>_box.img)."""
    names = [line.split()[0] for line in virsh("vol-list", POOL).stdout.splitlines()[2:] if line.strip()]
    return {n.split("_vagrant_box_image_")[0].replace("-VAGRANTSLASH-", "/")
            for n in names if "_vagrant_box_image_" in n}


def guest_address(domain: str) -> str | None:
    """The guest's IPv4 address from the network's DHCP lease (`virsh domifaddr`), or None."""
    out = virsh("domifaddr", domain, "--source", "lease").stdout
    m = re.search(r"ipv4\s+(\d+\.\d+\.\d+\.\d+)/", out)
    return m.group(1) if m else None


def channel_paths(domain: str, names: tuple[str, ...]) -> dict[str, str]:
    """{virtio-serial port name: the host's unix socket path} of the running domain's channels of
    those names (libvirt picks the paths when the domain starts; read from `virsh dumpxml`). Ports
    the domain lacks are left out."""
    import xml.etree.ElementTree as ET

    result = virsh("dumpxml", domain)
    if result.returncode != 0 or not result.stdout.strip():
        return {}
    found = {}
    for channel in ET.fromstring(result.stdout).iter("channel"):
        target, source = channel.find("target"), channel.find("source")
        name = target.get("name") if target is not None else None
        if channel.get("type") == "unix" and name in names and source is not None and source.get("path"):
            found[name] = str(source.get("path"))
    return found


def domain_exists(domain: str) -> bool:
    return virsh("dominfo", domain).returncode == 0


def domain_state(domain: str) -> str:
    """running, shut off, paused, ... or "not created"."""
    result = virsh("domstate", domain)
    return result.stdout.strip() if result.returncode == 0 else "not created"


def owner_mark(lab_root: Path) -> str:
    """The mark a lab writes into its domain's description (vagrant-libvirt's `description`) when
    the domain is created: the lab directory's absolute path, unique per checkout and lab; on a
    remote host, prefixed with this machine's name (two machines may have the same path)."""
    if current().remote:
        return f"cgroup-lab lab {socket.gethostname()}:{lab_root.resolve()}"
    return f"cgroup-lab lab {lab_root.resolve()}"


def domain_owner(domain: str) -> str | None:
    """The domain's description (our owner mark, or whatever else is there); None if no such domain."""
    result = virsh("desc", domain)
    return result.stdout.strip() if result.returncode == 0 else None


def network_users(network: str, besides: str = "") -> list[str]:
    """Domains other than `besides` whose interfaces use the network."""
    users = []
    for dom in virsh("list", "--all", "--name").stdout.split():
        if dom != besides and f"network='{network}'" in virsh("dumpxml", "--inactive", dom).stdout:
            users.append(dom)
    return users


def cleanup(domain: str, network: str, owner: str) -> list[str]:
    """Remove the lab's domain (with its volumes and snapshots) and its network, but only what is
    ours: the domain when its description is our owner mark, the network when no other domain uses
    it. Says what was removed."""
    removed = []
    mark = domain_owner(domain)
    if mark is not None and mark != owner:
        raise LabError(f"domain {domain} belongs to someone else ({mark or 'no owner mark'}); not touching it",
                       hint="give this lab another name: --name NAME")
    if mark is not None:
        delete_snapshots(domain)
        if domain_state(domain) != "shut off":
            virsh("destroy", domain)
        result = virsh("undefine", domain, "--remove-all-storage", "--nvram")
        if result.returncode != 0:
            virsh("undefine", domain, "--remove-all-storage", check=True)
        removed.append(f"domain {domain}")
        for vol in (f"{domain}.img",):
            if virsh("vol-info", vol, "--pool", POOL).returncode == 0:
                virsh("vol-delete", vol, "--pool", POOL, check=True)
                removed.append(f"volume {vol}")
    if virsh("net-info", network).returncode == 0 and not network_users(network, besides=domain):
        virsh("net-destroy", network)
        virsh("net-undefine", network, check=True)
        removed.append(f"network {network}")
    return removed


BASELINE_SNAPSHOT = "lab-baseline"


def snapshots(domain: str) -> list[str]:
    result = virsh("snapshot-list", domain, "--name")
    return [line.strip() for line in result.stdout.splitlines() if line.strip()] if result.returncode == 0 else []


def snapshot_baseline(domain: str) -> None:
    """An internal snapshot of the running, freshly provisioned VM (disk and memory)."""
    if BASELINE_SNAPSHOT in snapshots(domain):
        virsh("snapshot-delete", domain, BASELINE_SNAPSHOT, check=True, timeout=300)
    virsh("snapshot-create-as", domain, BASELINE_SNAPSHOT, "--description",
          "cgroup-lab: freshly provisioned baseline", "--atomic", check=True, timeout=600)


def revert_baseline(domain: str) -> str:
    """Bring the domain back to its baseline snapshot (disk and memory); returns how: "loadvm" or
    "snapshot-revert".

    A running domain gets QEMU's `loadvm` in its own process, which is what libvirt's revert does
    for a compatible running domain (qemuMonitorLoadSnapshot). libvirt 9.0 here restarts QEMU on
    every revert instead (measured: 2.2-3.5 s, and a new tap port) where loadvm takes 0.3 s; and a
    QEMU that keeps running keeps the host ends of the lab's virtio-serial ports connected (the port
    shells, lab.remote.port). loadvm is tried first, with no other virsh call before it (each costs
    0.1-0.3 s on this host): it answers nothing on success. libvirt marks a domain that got a
    monitor command as tainted (custom-monitor); it is the lab's own. Anything else (a domain shut
    off, loadvm refused) goes through snapshot-revert. Raises LabError when the domain has no
    baseline snapshot, TestbedError when libvirt cannot revert."""
    result = virsh("qemu-monitor-command", domain, "--hmp", f"loadvm {BASELINE_SNAPSHOT}", timeout=600)
    if result.returncode == 0 and not result.stdout.strip():
        return "loadvm"
    if BASELINE_SNAPSHOT not in snapshots(domain):
        raise LabError(f"{domain} has no baseline snapshot", hint="run lab.up again to take one")
    virsh("snapshot-revert", domain, BASELINE_SNAPSHOT, "--running", "--force", check=True, timeout=600)
    return "snapshot-revert"


def delete_snapshots(domain: str) -> None:
    """libvirt refuses to undefine a domain that still has snapshots."""
    for name in snapshots(domain):
        virsh("snapshot-delete", domain, name, "--metadata", timeout=120)
