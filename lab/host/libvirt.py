"""The libvirt side of a lab: daemons on hosts without systemd, the storage pool, the lab's own
network address, and cleaning up exactly the domain, volume and network named after the lab.

Every call goes to the libvirt host of the current lab (`use(uri, timeout)`; default qemu:///system):
this machine's daemons, or a remote host through a qemu+ssh:// URI (lab.host.sshhost). The host is
kept in a context variable, so that labs on different hosts can run in different threads. On a
remote host a lost connection is a TestbedError naming the URI, never mistaken for "no such domain".
Absence is read only from libvirt's own "not found" errors (lookup(), absent()); any other failure
of virsh is a TestbedError quoting what it said. libvirt's XML is read and written with ElementTree.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shutil
import socket
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from xml.etree import ElementTree

from lab.config.libvirt_uri import LOCAL_URI, LibvirtUri
from lab.core import console
from lab.core.errors import LabError, TestbedError, ToolMissing
from lab.core.wait import NotYet, wait_until
from lab.host import proc, sshhost, tools

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
        """The host is reached over SSH (a qemu+ssh:// URI; access holds how), not this machine's daemon."""
        return self.access is not None


LOCAL = Host()
_HOST: ContextVar[Host] = ContextVar("cgroup_lab_libvirt_host", default=LOCAL)


def host_for(uri: LibvirtUri, timeout: int) -> Host:
    """The Host of a libvirt URI (the libvirt_uri setting, parsed), its virsh calls bounded by
    timeout seconds (libvirt_timeout); for a remote one, its ssh wrapper is written."""
    if not uri.remote:
        return Host(timeout=timeout)
    access = sshhost.access(uri, timeout)
    return Host(uri=uri.text, libvirt_uri=access.libvirt_uri, access=access, timeout=timeout)


def use(uri: LibvirtUri, timeout: int) -> Host:
    """Send this context's libvirt calls to the libvirt host of uri (host_for); returns it."""
    host = host_for(uri, timeout)
    _HOST.set(host)
    return host


def current() -> Host:
    """The libvirt host this context's calls go to (qemu:///system unless use() said otherwise)."""
    return _HOST.get()


def virsh(*args: str, timeout: float | None = None, check: bool = False, probe: bool = False,
          input_text: str | None = None) -> proc.Result:
    """virsh -c <the current host's URI> ARGS (input_text on its stdin), bounded by timeout
    (default: libvirt_timeout). The result's stderr holds virsh's own lines and the errors libvirtd
    returned for the call (virsh 9.0 drops some, e.g. "Domain not found" of a domain lookup: its
    client library logs them, LIBVIRT_LOG_OUTPUTS=4:stderr).

    Raises ToolMissing without virsh, TestbedError on a timeout, on a failure when check (quoting
    what virsh said), and on a remote host whose connection failed (unless probe: then the result
    is returned)."""
    if not shutil.which("virsh"):
        raise ToolMissing("virsh is not installed", hint=tools.hint("virsh"))
    host = current()
    wait = timeout or host.timeout
    where = f" on {host.uri}" if host.remote else ""
    raw = proc.run(["virsh", "-c", host.libvirt_uri, *args], step=f"virsh {' '.join(args)}{where}", timeout=wait,
                   waiting_for=f"virsh {' '.join(args)}{where} to answer", check=False, split_stderr=True,
                   env={**os.environ, "LIBVIRT_LOG_OUTPUTS": "4:stderr"},
                   input_text=input_text if input_text is not None else "",
                   timeout_hint="is libvirtd (or the host) hung? see: invoke lab.doctor; raise libvirt_timeout "
                                "if it is just slow")
    result = replace(raw, stderr=_said(raw.stderr))
    if host.remote and not probe and result.returncode != 0 and connection_lost(result.stderr):
        raise TestbedError(f"libvirt host {host.uri} is unreachable ({connection_detail(result.stderr)})",
                           hint=sshhost.ssh_hint(result.stderr, host.access))
    if check and result.returncode != 0:
        raise failed(args, result)
    return result


# libvirt's client library logs each error libvirtd returned for a call (virNetClientProgramDispatchError)
_LOGGED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+[+-]\d{4}: \d+: \w+ : (.*)$")
_RETURNED = re.compile(r"^virNetClientProgramDispatchError:\d+ : (.*)$")


def _said(stderr: str) -> str:
    """virsh's own stderr lines, plus each error libvirtd returned that virsh did not print itself
    (as "error: ..."); the library's other log lines (an end-of-file as virsh exits) are left out."""
    own, returned = [], []
    for line in stderr.splitlines():
        logged = _LOGGED.match(line)
        if logged is None:
            own.append(line)
        elif (error := _RETURNED.match(logged.group(1))) is not None:
            returned.append(f"error: {error.group(1)}")
    text = "\n".join(own)
    return "\n".join([*own, *(line for line in dict.fromkeys(returned) if line not in text)])


def said(result: proc.Result) -> str:
    """What virsh said about its failure, on one line (its error lines, "error: " left out)."""
    lines = [line.strip().removeprefix("error: ") for line in result.stderr.splitlines() if line.strip()]
    return " / ".join(dict.fromkeys(lines)) or f"exit {result.returncode}, no message"


def failed(args: tuple[str, ...], result: proc.Result) -> TestbedError:
    """The TestbedError for a virsh call that failed: the call, the host, and what virsh said."""
    host = current()
    where = f" on {host.uri}" if host.remote else ""
    return TestbedError(f"virsh {' '.join(args)}{where} failed: {said(result)}",
                        hint="see: invoke lab.doctor" + ("" if host.remote else "; libvirtd's log: "
                                                          "/var/log/libvirt/libvirtd.log"))


# libvirt's messages for the error codes that mean "no such object" (virerror.c: VIR_ERR_NO_DOMAIN,
# VIR_ERR_NO_NETWORK, VIR_ERR_NO_DOMAIN_SNAPSHOT, VIR_ERR_NO_STORAGE_POOL, VIR_ERR_NO_STORAGE_VOL)
NOT_FOUND = {"domain": "Domain not found: ", "network": "Network not found: ",
             "snapshot": "Domain snapshot not found: ", "pool": "Storage pool not found: ",
             "volume": "Storage volume not found: "}


def absent(result: proc.Result, *kinds: str) -> bool:
    """The call failed because libvirt has no such object of one of kinds (domain, network,
    snapshot, pool, volume), and for no other reason."""
    return result.returncode != 0 and any(f"error: {NOT_FOUND[k]}" in result.stderr for k in kinds)


def lookup(kinds: str | tuple[str, ...], *args: str, timeout: float | None = None) -> proc.Result | None:
    """virsh ARGS about one libvirt object: the result when it succeeded, None when libvirt says the
    object does not exist (only then: see absent()). Raises TestbedError quoting virsh for any other
    failure (libvirtd not answering, permissions, a lost remote host), never reads it as absence."""
    result = virsh(*args, timeout=timeout)
    if result.returncode == 0:
        return result
    if absent(result, *((kinds,) if isinstance(kinds, str) else kinds)):
        return None
    raise failed(args, result)


def _tolerate(reason: str, *args: str, timeout: float | None = None) -> bool:
    """virsh ARGS, where a failure whose message contains reason is fine (e.g. "is not running" for
    destroy): True when the call did something, False when reason said there was nothing to do.
    Raises TestbedError quoting virsh for any other failure."""
    result = virsh(*args, timeout=timeout)
    if result.returncode == 0:
        return True
    if reason in result.stderr:
        return False
    raise failed(args, result)


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
    """Whether the current libvirt host's libvirtd answers `virsh version` (reach()'s first half). False
    without virsh; TestbedError (exit 3) only when virsh does not finish within max(15 s, libvirt_timeout)."""
    return reach()[0]


def systemd_is_init() -> bool:
    """systemd is PID 1 on this machine: /run/systemd/system is a directory (the test sd_booted(3) uses)."""
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
    on this machine; a remote host's libvirtd must answer). Raises TestbedError naming what does
    not answer (the URI, or libvirtd with its log), ToolMissing without the daemons."""
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
        raise TestbedError("libvirtd does not answer", hint="run: systemctl start libvirtd virtlogd")
    if os.geteuid() != 0:
        raise TestbedError("libvirtd does not answer and starting it needs root",
                           hint="as root: /usr/sbin/virtlogd -d && /usr/sbin/libvirtd -d")
    paths = {daemon: Path("/usr/sbin") / daemon for daemon in ("virtlogd", "libvirtd")}
    for daemon, path in paths.items():
        if not path.exists():
            raise ToolMissing(f"{daemon} is not installed", hint=tools.hint(daemon))
    start_until_answer(paths, lambda: reach()[0], DAEMON_START_S)


def daemon_running(daemon: str) -> bool:
    """Whether a process named exactly `daemon` runs on this machine (pgrep -x)."""
    return proc.run(["pgrep", "-x", daemon], step=f"is {daemon} running", timeout=30, check=False).ok


def start_daemon(daemon: str, path: Path) -> None:
    """Start one libvirt daemon by hand (`PATH -d`, it daemonises). Raises TestbedError when it fails."""
    console.info(f"starting {daemon} (no systemd on this host)")
    proc.run([str(path), "-d"], step=f"start {daemon}", timeout=30)


def start_until_answer(paths: dict[str, Path], answers: Callable[[], bool], timeout: float, *,
                       running: Callable[[str], bool] = daemon_running,
                       start: Callable[[str, Path], None] = start_daemon, interval: float = 0.5) -> None:
    """Start each daemon of `paths` (name -> binary) that is not running, until answers() is true.

    Checked again on every poll, not only once: a libvirtd that was told to stop (SIGTERM in the
    middle of a `virsh restore`) keeps running without answering for a while, then exits; it is
    started again as soon as it is gone. Raises TestbedError after `timeout` seconds, saying which
    daemons were running and not answering."""
    def check() -> bool:
        if answers():
            return True
        seen = []
        for daemon, path in paths.items():
            if running(daemon):
                seen.append(f"{daemon} running")
            else:
                start(daemon, path)
                seen.append(f"{daemon} started")
        if answers():
            return True
        raise NotYet(", ".join(seen) + ", libvirtd does not answer yet")
    wait_until("libvirtd to answer after starting it", check, timeout, interval=interval,
               max_interval=4 * interval, hint="see /var/log/libvirt/libvirtd.log")


DAEMON_START_S = 30.0  # libvirtd answers within about a second of starting here


def ensure_pool() -> None:
    """vagrant-libvirt uploads boxes into the 'default' pool; a fresh libvirt has none: define it
    (its directory made here, or built by libvirt on a remote host) and start it."""
    info = lookup("pool", "pool-info", POOL)
    if info is None:
        if not current().remote:
            Path(POOL_PATH).mkdir(parents=True, exist_ok=True)
        virsh("pool-define-as", POOL, "dir", "--target", POOL_PATH, check=True)
        if current().remote:
            virsh("pool-build", POOL, check=True)
        virsh("pool-autostart", POOL)
        info = virsh("pool-info", POOL, check=True)
    if not re.search(r"State:\s+running", info.stdout):
        virsh("pool-start", POOL, check=True)


def network_addresses(xml: str) -> list[str]:
    """The IPv4 addresses of a libvirt network's XML (`<ip address=...>`)."""
    return [ip.get("address", "") for ip in ElementTree.fromstring(xml).iter("ip") if ip.get("address")]


def used_octets(exclude_network: str) -> set[int]:
    """Third octets of 192.168.x.0/24 subnets in use by other libvirt networks or host interfaces
    (on a remote host: its libvirt networks only). Raises TestbedError when libvirt or ip fails."""
    addresses: list[str] = []
    for net in virsh("net-list", "--all", "--name", check=True).stdout.split():
        if net == exclude_network:
            continue
        found = lookup("network", "net-dumpxml", net)
        if found is not None:  # else removed since the list was made
            addresses += network_addresses(found.stdout)
    if not current().remote:
        listing = proc.run(["ip", "-j", "-4", "addr"], step="ip addr (subnets in use here)", timeout=30).output
        addresses += [a.get("local", "") for link in json.loads(listing or "[]") for a in link.get("addr_info", [])]
    return {octet for octet in map(_octet, addresses) if octet is not None}


def _octet(address: str) -> int | None:
    """x of 192.168.x.y, else None."""
    parts = address.split(".")
    return int(parts[2]) if len(parts) == 4 and parts[:2] == ["192", "168"] and parts[2].isdigit() else None


def choose_octet(preferred: int, used: set[int], current: int | None = None) -> int | None:
    """The lab's subnet among 192.168.100-219: the one it had (current), else the preferred one,
    else the first free one; None when all are used."""
    for candidate in ([current] if current else []) + [preferred] + list(range(100, 220)):
        if candidate and candidate not in used:
            return candidate
    return None


def pick_octet(preferred: int, network: str, current: int | None = None) -> int:
    """choose_octet() against the subnets in use on the libvirt host (and here). Raises
    TestbedError when none of 192.168.100-219.0/24 is free."""
    found = choose_octet(preferred, used_octets(network), current)
    if found is None:
        raise TestbedError("no free 192.168.100-219.0/24 subnet for the lab's network",
                           hint="destroy labs you no longer need: invoke lab.destroy --name NAME")
    return found


DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"


def network_xml(network: str, octet: int, nat: bool = False, reserve: tuple[str, str] | None = None) -> str:
    """The lab's isolated network 192.168.<octet>.0/24: DHCP, no forwarding, spanning tree off,
    dnsmasq's no-ping (see ensure_network); nat: forwarded to the outside through the host;
    reserve: (MAC, address) the DHCP server always gives that MAC."""
    ElementTree.register_namespace("dnsmasq", DNSMASQ_NS)
    root = ElementTree.Element("network")
    ElementTree.SubElement(root, "name").text = network
    if nat:
        ElementTree.SubElement(root, "forward", mode="nat")
    ElementTree.SubElement(root, "bridge", stp="off", delay="0")
    ip = ElementTree.SubElement(root, "ip", address=f"192.168.{octet}.1", netmask="255.255.255.0")
    dhcp = ElementTree.SubElement(ip, "dhcp")
    ElementTree.SubElement(dhcp, "range", start=f"192.168.{octet}.2", end=f"192.168.{octet}.254")
    if reserve:
        ElementTree.SubElement(dhcp, "host", mac=reserve[0], ip=reserve[1])
    options = ElementTree.SubElement(root, f"{{{DNSMASQ_NS}}}options")
    ElementTree.SubElement(options, f"{{{DNSMASQ_NS}}}option", value="no-ping")
    return ElementTree.tostring(root, encoding="unicode")


def network_active(network: str) -> bool | None:
    """True when the network runs, False when it is defined but stopped, None when libvirt has no
    such network. Raises TestbedError for any other failure."""
    info = lookup("network", "net-info", network)
    if info is None:
        return None
    return re.search(r"^Active:\s+yes", info.stdout, re.M) is not None


def ensure_network(network: str, octet: int, *, nat: bool = False, reserve: tuple[str, str] | None = None) -> bool:
    """Define and start the lab's isolated network 192.168.<octet>.0/24 (DHCP without dnsmasq's
    ping check, no forwarding) with spanning tree off, before vagrant-libvirt looks for it; True
    when it was created now. nat: forward to the outside through the host (an image build's VM,
    whose provisioning may fetch packages); reserve: (MAC, IPv4) the DHCP server always gives that
    MAC (a lab started from a saved state keeps its address when it reboots).

    vagrant-libvirt would create it with `stp='on' delay='0'`, and Linux raises a forward delay of 0
    to 2 s when STP is on: every new tap port (every boot, every snapshot revert) then spends about
    4 s in listening/learning before the guest answers (measured). A one-bridge network has no loop
    for STP to break. dnsmasq's no-ping: by default it pings an address before offering it and
    waits ~3 s for silence (measured: DHCPDISCOVER to DHCPOFFER 3.0 s); the network has one guest."""
    active = network_active(network)
    if active is not None:
        if not active:
            virsh("net-start", network, check=True)
        return False
    virsh("net-define", "/dev/stdin", check=True, input_text=network_xml(network, octet, nat=nat, reserve=reserve))
    virsh("net-start", network, check=True)
    return True


def box_volumes() -> set[str]:
    """Vagrant box names whose image vagrant-libvirt has uploaded into the pool (its volumes are
    named <box name with / as -VAGRANTSLASH->_vagrant_box_image_<version>_<time>_box.img)."""
    names = [line.split()[0] for line in virsh("vol-list", POOL).stdout.splitlines()[2:] if line.strip()]
    return {n.split("_vagrant_box_image_")[0].replace("-VAGRANTSLASH-", "/")
            for n in names if "_vagrant_box_image_" in n}


def guest_address(domain: str, agent: bool = False) -> str | None:
    """The guest's IPv4 address from the network's DHCP lease (`virsh domifaddr`), else (agent)
    from its guest agent (a VM restored from a saved state has a fixed address, no lease), or None
    when there is none yet or no such domain. Raises TestbedError for any other virsh failure
    (an agent that does not answer counts as no address)."""
    found = lookup("domain", "domifaddr", domain, "--source", "lease")
    m = re.search(r"ipv4\s+(\d+\.\d+\.\d+\.\d+)/", found.stdout) if found else None
    if m is None and agent and found is not None:
        answered = virsh("domifaddr", domain, "--source", "agent")
        m = re.search(r"ipv4\s+((?!127\.)\d+\.\d+\.\d+\.\d+)/", answered.stdout) if answered.ok else None
    return m.group(1) if m else None


def channel_paths(domain: str, names: tuple[str, ...]) -> dict[str, str]:
    """{virtio-serial port name: the host's unix socket path} of the running domain's channels of
    those names (libvirt picks the paths when the domain starts; read from `virsh dumpxml`). Ports
    the domain lacks are left out, and so is a domain libvirt does not have; TestbedError when libvirt
    cannot tell."""
    xml = domain_xml(domain)
    if xml is None:  # no such domain
        return {}
    found = {}
    for channel in xml.iter("channel"):
        target, source = channel.find("target"), channel.find("source")
        name = target.get("name") if target is not None else None
        if channel.get("type") == "unix" and name in names and source is not None and source.get("path"):
            found[name] = str(source.get("path"))
    return found


def domain_exists(domain: str) -> bool:
    """libvirt has a domain of this name (TestbedError when it cannot tell)."""
    return lookup("domain", "dominfo", domain) is not None


def domain_state(domain: str) -> str:
    """running, shut off, paused, ... or "not created" (only when libvirt says there is no such
    domain; TestbedError quoting virsh when it cannot tell)."""
    result = lookup("domain", "domstate", domain)
    return result.stdout.strip() if result is not None else "not created"


def owner_mark(lab_root: Path) -> str:
    """The mark a lab writes into its domain's description (vagrant-libvirt's `description`) when
    the domain is created: the lab directory's absolute path, unique per checkout and lab; on a
    remote host, prefixed with this machine's name (two machines may have the same path)."""
    if current().remote:
        return f"cgroup-lab lab {socket.gethostname()}:{lab_root.resolve()}"
    return f"cgroup-lab lab {lab_root.resolve()}"


def domain_xml(domain: str, inactive: bool = False) -> ElementTree.Element | None:
    """The domain's XML (its persistent definition when inactive), parsed; None when libvirt has no
    such domain. Raises TestbedError for any other failure."""
    found = lookup("domain", "dumpxml", *(["--inactive"] if inactive else []), domain)
    return ElementTree.fromstring(found.stdout) if found is not None else None


def domain_owner(domain: str) -> str | None:
    """The domain's description (our owner mark, whatever else is there, or "" for none); None when
    libvirt has no such domain. Raises TestbedError when libvirt cannot tell."""
    xml = domain_xml(domain, inactive=True)
    if xml is None:
        return None
    return (xml.findtext("description") or "").strip()


def domain_networks(xml: ElementTree.Element) -> set[str]:
    """The libvirt networks a domain's interfaces use (`<interface type='network'><source network=...>`)."""
    return {source.get("network", "") for iface in xml.iter("interface") if iface.get("type") == "network"
            for source in iface.iter("source") if source.get("network")}


def network_users(network: str, besides: str = "") -> list[str]:
    """Domains other than `besides` whose interfaces use the network."""
    users = []
    for dom in virsh("list", "--all", "--name", check=True).stdout.split():
        if dom == besides:
            continue
        xml = domain_xml(dom, inactive=True)
        if xml is not None and network in domain_networks(xml):
            users.append(dom)
    return users


def cleanup(domain: str, network: str, owner: str) -> list[str]:
    """Remove the lab's domain (with its volumes and snapshots) and its network, but only what is
    ours: the domain when its description is our owner mark, the network when no other domain uses
    it. Says what was removed. Raises LabError for a domain of this name someone else owns,
    TestbedError when libvirt fails (quoting virsh)."""
    removed = []
    mark = domain_owner(domain)
    if mark is not None and mark != owner:
        raise LabError(f"domain {domain} belongs to someone else ({mark or 'no owner mark'}); not touching it",
                       hint="give this lab another name: --name NAME")
    if mark is not None:
        delete_snapshots(domain)
        _tolerate("domain is not running", "destroy", domain)
        result = virsh("undefine", domain, "--remove-all-storage", "--nvram")
        if result.returncode != 0 and not absent(result, "domain"):
            virsh("undefine", domain, "--remove-all-storage", check=True)
        removed.append(f"domain {domain}")
        for vol in (f"{domain}.img", f"{domain}.qcow2", f"{domain}.state"):  # Vagrant's disk, or ours
            if lookup(("volume", "pool"), "vol-info", vol, "--pool", POOL) is not None:
                virsh("vol-delete", vol, "--pool", POOL, check=True)
                removed.append(f"volume {vol}")
    if network_active(network) is not None and not network_users(network, besides=domain):
        _tolerate("is not active", "net-destroy", network)
        virsh("net-undefine", network, check=True)
        removed.append(f"network {network}")
    return removed


BASELINE_SNAPSHOT = "lab-baseline"


def snapshots(domain: str) -> list[str]:
    """The domain's snapshot names ([] when there is no such domain)."""
    result = lookup("domain", "snapshot-list", domain, "--name")
    return [line.strip() for line in result.stdout.splitlines() if line.strip()] if result is not None else []


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
    off, loadvm refused) goes through snapshot-revert (restart_baseline). Raises TestbedError when
    the domain has no baseline snapshot or libvirt cannot revert."""
    result = virsh("qemu-monitor-command", domain, "--hmp", f"loadvm {BASELINE_SNAPSHOT}", timeout=600)
    if result.returncode == 0 and not result.stdout.strip():
        return "loadvm"
    return restart_baseline(domain)


def restart_baseline(domain: str) -> str:
    """The baseline through libvirt's snapshot-revert, which restarts QEMU (new tap ports on the
    lab's network: what brings a guest back onto a network defined again); returns "snapshot-revert".
    Raises TestbedError when the domain has no baseline snapshot or libvirt cannot revert."""
    if BASELINE_SNAPSHOT not in snapshots(domain):
        raise TestbedError(f"{domain} has no baseline snapshot", hint="start over: invoke lab.destroy lab.up")
    virsh("snapshot-revert", domain, BASELINE_SNAPSHOT, "--running", "--force", check=True, timeout=600)
    return "snapshot-revert"


def delete_snapshots(domain: str) -> None:
    """libvirt refuses to undefine a domain that still has snapshots (their metadata only: the
    internal snapshots go with the disk)."""
    for name in snapshots(domain):
        _tolerate(NOT_FOUND["snapshot"], "snapshot-delete", domain, name, "--metadata", timeout=120)


# --- domains started from saved states (lab.images, lab.machine.lifecycle) -------------------------

def define(xml: str) -> None:
    """Define (or redefine) a persistent domain from XML. Raises TestbedError with virsh's words."""
    virsh("define", "/dev/stdin", check=True, input_text=xml)


def create(xml: str) -> None:
    """Start a transient domain from XML (gone once it stops or is saved)."""
    virsh("create", "/dev/stdin", check=True, input_text=xml, timeout=max(120.0, current().timeout))


def save(domain: str, file_path: str, timeout: float) -> None:
    """Save the running domain's state (RAM, devices) to a file on its host and stop it
    (`virsh save`; a transient domain is gone afterwards)."""
    virsh("save", domain, file_path, check=True, timeout=timeout)


def restore(file_path: str, timeout: float) -> None:
    """Start the domain whose XML the save file's header carries, running (`virsh restore
    --running`); a persistent domain of that name and UUID takes the restored state."""
    virsh("restore", file_path, "--running", check=True, timeout=timeout)


def stop(domain: str) -> None:
    """Power the domain off at once if it runs (`virsh destroy`; a persistent one stays defined,
    a transient one is gone); nothing when there is no such domain."""
    result = virsh("destroy", domain)
    if result.returncode != 0 and not absent(result, "domain") and "domain is not running" not in result.stderr:
        raise failed(("destroy", domain), result)


def domain_uuid(domain: str) -> str | None:
    """The domain's UUID, or None when there is no such domain."""
    found = lookup("domain", "domuuid", domain)
    return found.stdout.strip() if found is not None else None
