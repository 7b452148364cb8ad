"""Which Vagrant provider a lab uses on this host."""

from __future__ import annotations

import shutil
import sys

from lab.config.targets import Target


def resolve_provider(provider: str, target: Target) -> str:
    """The provider to use: `provider` ("libvirt", "virtualbox", or "auto") as set; for auto,
    libvirt on Linux when virsh is installed, else VirtualBox when VBoxManage is, else the
    target's first provider. Returns "libvirt" or "virtualbox"."""
    if provider != "auto":
        return provider
    if sys.platform.startswith("linux") and shutil.which("virsh") and "libvirt" in target.providers:
        return "libvirt"
    if shutil.which("VBoxManage") and "virtualbox" in target.providers:
        return "virtualbox"
    return "libvirt" if "libvirt" in target.providers else target.providers[0]
