"""Which Vagrant provider a lab uses on this host."""

from __future__ import annotations

import shutil
import sys

from lab.config.settings import Settings


def resolve_provider(settings: Settings) -> str:
    """The provider setting, or for auto: libvirt on Linux when virsh is installed, else VirtualBox
    when VBoxManage is, else the target's first provider."""
    target = settings.target_data
    if settings.provider != "auto":
        return settings.provider
    if sys.platform.startswith("linux") and shutil.which("virsh") and "libvirt" in target.providers:
        return "libvirt"
    if shutil.which("VBoxManage") and "virtualbox" in target.providers:
        return "virtualbox"
    return "libvirt" if "libvirt" in target.providers else target.providers[0]
