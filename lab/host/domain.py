"""Domain XML for the image VMs and the labs started from a saved state, and libvirt's save-image
header, which carries the domain XML a restore uses.

A saved running state (`virsh save`) holds the domain's XML in a header in front of QEMU's
migration stream. `virsh restore --xml` accepts another XML only when the guest-visible machine is
unchanged (virDomainDefCheckABIStability) AND the name and UUID are the saved ones: libvirt refuses a
rename through restore on purpose (libvir-list, May 2013, "Don't allow renaming of domains by the
backdoor"; measured here, libvirt 9.0: "Target domain uuid ... does not match source"). So a lab
that starts from an image's state gets its own copy of the state file whose header carries the
lab's XML: the same devices, addresses and MAC (the guest's RAM knows them), the lab's own name,
UUID, disk, network and description. The header layout is libvirt's on-disk format
(src/qemu/qemu_saveimage.c, virQEMUSaveHeader, version 2: 16-byte magic, five little-endian
uint32 (version, data_len, was_running, format, cookieOffset), 14 unused; then data_len bytes of
XML, cookie and zero padding, then the migration stream); libvirt keeps it stable ("these values
are used in the on-disk format") and so do we: anything else is refused, never guessed.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from lab.core.errors import TestbedError

SAVE_MAGIC = b"LibvirtQemudSave"
SAVE_PARTIAL = b"LibvirtQemudPart"  # written first; libvirt replaces it when the save completed
SAVE_VERSION = 2
_FIELDS = struct.Struct("<16s5I")  # magic, version, data_len, was_running, format, cookieOffset


def header_size() -> int:
    """Bytes before the XML: the magic, five uint32 and 14 unused uint32 (libvirt: 92)."""
    return _FIELDS.size + 4 * 14


@dataclass(frozen=True)
class SaveHeader:
    """The header of a libvirt save image: the domain XML it restores with, and where QEMU's
    migration stream starts (bytes from the file's start)."""

    magic: bytes
    version: int
    data_len: int
    was_running: int
    format: int
    cookie_offset: int
    xml: str
    cookie: bytes  # the save cookie (CPU definition etc.), without padding

    @property
    def complete(self) -> bool:
        """libvirt wrote the final magic: the save finished (an interrupted one keeps "Part")."""
        return self.magic == SAVE_MAGIC

    @property
    def stream_offset(self) -> int:
        """Where QEMU's migration stream starts, in bytes from the file's start: header_size() + data_len
        (data_len covers the XML, the cookie and their padding)."""
        return header_size() + self.data_len

    @property
    def prefix_size(self) -> int:
        """How many bytes the header, XML, cookie and padding take (what with_xml rewrites)."""
        return self.stream_offset


def read_header(data: bytes, where: str) -> SaveHeader:
    """Parse the first header_size() + data_len bytes of a save image (more may follow).
    Raises TestbedError naming `where` when it is no complete libvirt save image of version 2."""
    if len(data) < header_size():
        raise TestbedError(f"{where} is no libvirt save image (only {len(data)} bytes)",
                           hint="rebuild it: invoke lab.build --force")
    magic, version, data_len, was_running, fmt, cookie_offset = _FIELDS.unpack_from(data)
    if magic not in (SAVE_MAGIC, SAVE_PARTIAL):
        raise TestbedError(f"{where} is no libvirt save image (magic {magic!r})",
                           hint="rebuild it: invoke lab.build --force")
    if version != SAVE_VERSION or fmt != 0:
        raise TestbedError(f"{where}: libvirt save image version {version}, format {fmt} is not the "
                           f"uncompressed version {SAVE_VERSION} this tool rewrites",
                           hint="set save_image_format = \"raw\" in the host's qemu.conf and rebuild: "
                                "invoke lab.build --force")
    body = data[header_size():header_size() + data_len]
    if len(body) < data_len:
        raise TestbedError(f"{where}: the save image's header is cut short ({len(body)} of {data_len} bytes)",
                           hint="rebuild it: invoke lab.build --force")
    xml_len = cookie_offset or data_len
    xml = body[:xml_len].split(b"\0", 1)[0].decode()
    cookie = body[xml_len:].split(b"\0", 1)[0] if cookie_offset else b""
    return SaveHeader(magic, version, data_len, was_running, fmt, cookie_offset, xml, cookie)


def with_xml(header: SaveHeader, xml: str) -> bytes:
    """The header bytes (exactly header.prefix_size of them) with `xml` in place of the saved XML,
    the cookie and the rest unchanged, marked complete. Raises TestbedError when the XML does not
    fit into the space libvirt reserved (the saved XML plus 64 KiB)."""
    xml_bytes = xml.encode() + b"\0"
    cookie = header.cookie + b"\0" if header.cookie_offset else b""
    if len(xml_bytes) + len(cookie) > header.data_len:
        raise TestbedError(f"the lab's domain XML ({len(xml_bytes)} bytes) does not fit into the saved "
                           f"state's header ({header.data_len} bytes)")
    body = xml_bytes + cookie
    body += b"\0" * (header.data_len - len(body))
    fields = _FIELDS.pack(SAVE_MAGIC, header.version, header.data_len, header.was_running, header.format,
                          len(xml_bytes) if header.cookie_offset else 0)
    return fields + b"\0" * (4 * 14) + body


@dataclass(frozen=True)
class Machine:
    """What an image VM is: the guest-visible machine (fixed by the saved state) and where its
    parts live on the libvirt host. memory in MiB; driver "qemu" (TCG) or "kvm"."""

    name: str
    uuid: str
    description: str
    disk: str  # the qcow2 the VM writes to (path on the libvirt host)
    network: str  # the libvirt network its one NIC is on
    mac: str
    kernel: str
    initrd: str
    cmdline: str
    cpus: int
    memory: int
    driver: str
    serial_log: str  # file on the libvirt host the serial console writes to ("" for a pty)
    channels: tuple[str, ...] = ()  # more virtio-serial ports (unix sockets libvirt names), e.g. port shells'


AGENT_CHANNEL = "org.qemu.guest_agent.0"


def machine_xml(m: Machine) -> str:
    """A domain booting its kernel directly (no firmware boot menu, no bootloader, no video: the
    console is the serial port), one virtio disk, one virtio NIC with a fixed MAC, a virtio RNG (a
    guest without one can spend minutes in getrandom() under TCG), the QEMU guest agent's channel,
    through which the tool hands each lab its identity after a restore, and m.channels (the port
    shells' ports: a saved state fixes the devices, so every image VM has them from its first boot)."""
    dom = ET.Element("domain", type=m.driver)
    ET.SubElement(dom, "name").text = m.name
    ET.SubElement(dom, "uuid").text = m.uuid
    ET.SubElement(dom, "description").text = m.description
    ET.SubElement(dom, "memory", unit="MiB").text = str(m.memory)
    ET.SubElement(dom, "vcpu").text = str(m.cpus)
    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_, "kernel").text = m.kernel
    ET.SubElement(os_, "initrd").text = m.initrd
    ET.SubElement(os_, "cmdline").text = m.cmdline
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(dom, "clock", offset="utc")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    dev = ET.SubElement(dom, "devices")
    disk = ET.SubElement(dev, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=m.disk)
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    nic = ET.SubElement(dev, "interface", type="network")
    ET.SubElement(nic, "mac", address=m.mac)
    ET.SubElement(nic, "source", network=m.network)
    ET.SubElement(nic, "model", type="virtio")
    _serial(dev, m.serial_log)
    for name in (AGENT_CHANNEL, *m.channels):
        channel = ET.SubElement(dev, "channel", type="unix")
        ET.SubElement(channel, "target", type="virtio", name=name)
    ET.SubElement(dev, "memballoon", model="none")
    rng = ET.SubElement(dev, "rng", model="virtio")
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    return ET.tostring(dom, encoding="unicode")


def _serial(devices: ET.Element, log: str) -> None:
    for tag in ("serial", "console"):
        chr_ = ET.SubElement(devices, tag, type="file" if log else "pty")
        if log:
            ET.SubElement(chr_, "source", path=log)
        ET.SubElement(chr_, "target", **({"port": "0"} if tag == "serial" else {"type": "serial", "port": "0"}))


def derived_xml(saved_xml: str, *, name: str, uuid: str, description: str, disk: str, network: str,
                serial_log: str) -> str:
    """The saved state's domain XML with this VM's own name, UUID, description, disk, network and
    serial console; every device, address and the MAC stay as saved (the guest's RAM knows them).
    The saved disk's <backingStore> is dropped: the new disk's chain is read from its qcow2 header.
    Raises TestbedError when the saved XML lacks a disk or an interface (no image VM of ours)."""
    root = ET.fromstring(saved_xml)
    disk_el = root.find("devices/disk[@device='disk']")
    nic = root.find("devices/interface")
    name_el, uuid_el = root.find("name"), root.find("uuid")
    if disk_el is None or disk_el.find("source") is None or nic is None or nic.find("source") is None \
            or name_el is None or uuid_el is None:
        raise TestbedError("the saved state's domain has no name, disk or network interface",
                           hint="rebuild the image: invoke lab.build --force")
    root.attrib.pop("id", None)
    name_el.text = name
    uuid_el.text = uuid
    desc = root.find("description")
    if desc is None:
        desc = ET.Element("description")
        root.insert(list(root).index(uuid_el) + 1, desc)
    desc.text = description
    disk_el.find("source").set("file", disk)  # type: ignore[union-attr]
    for backing in disk_el.findall("backingStore"):
        disk_el.remove(backing)
    source = nic.find("source")
    assert source is not None
    source.attrib.clear()
    source.set("network", network)
    nic.set("type", "network")
    for el in nic.findall("target"):  # the tap name libvirt gave the saved VM; a new one is made
        nic.remove(el)
    devices = root.find("devices")
    assert devices is not None
    for channel in devices.findall("channel[@type='unix']"):  # libvirt names each VM's sockets itself
        for src in channel.findall("source"):
            channel.remove(src)
    for tag in ("serial", "console"):
        for el in devices.findall(tag):
            el.set("type", "file" if serial_log else "pty")
            for src in el.findall("source"):
                el.remove(src)
            for log in el.findall("log"):
                el.remove(log)
            if serial_log:
                el.insert(0, ET.Element("source", path=serial_log))
            el.attrib.pop("tty", None)
    return ET.tostring(root, encoding="unicode")


def mac_address(seed: str) -> str:
    """A stable locally administered MAC in QEMU's 52:54:00 range, from a seed (the image key)."""
    import hashlib

    digest = hashlib.sha256(seed.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])
