"""Host tools the lab runs, and the one place that says how to install each."""

from __future__ import annotations

import shutil

import vagrant

from lab.core.errors import ToolMissing

INSTALL_HINTS = {
    "vagrant": "apt-get install vagrant vagrant-libvirt",
    "vagrant-libvirt": "apt-get install vagrant-libvirt",
    "virsh": "apt-get install libvirt-clients libvirt-daemon-system",
    "libvirtd": "apt-get install libvirt-daemon-system",
    "virtlogd": "apt-get install libvirt-daemon-system",
    "VBoxManage": "install VirtualBox (virtualbox.org)",
    "packer": "apt-get install packer",
    "mmdebstrap": "apt-get install mmdebstrap",
    "sfdisk": "apt-get install fdisk",
    "mkfs.ext4": "apt-get install e2fsprogs",
    "qemu-img": "apt-get install qemu-utils",
    "qemu-system-x86_64": "apt-get install qemu-system-x86",
    "shellcheck": "apt-get install shellcheck (tests only)",
}


def hint(tool: str) -> str:
    """How to install tool (a command name, e.g. "virsh"), for a ToolMissing hint; "see: invoke lab.doctor"
    for a tool INSTALL_HINTS does not know."""
    return INSTALL_HINTS.get(tool, "see: invoke lab.doctor")


def require(*tools: str) -> None:
    """Fail before any work starts, naming the first missing tool and how to install it."""
    for tool in tools:
        if not shutil.which(tool):
            raise ToolMissing(f"{tool} is not installed", hint=hint(tool))


def vagrant_exe() -> str:
    """vagrant's path, as python-vagrant finds it."""
    exe = vagrant.get_vagrant_executable()
    if not exe:
        raise ToolMissing("vagrant is not installed", hint=hint("vagrant"))
    return exe
