"""Settings resolved into the lab the layers below read (lab.config.resolved.Lab), on this machine.

Machine/ and run/ call these at the top of what they do and pass the result down: host/, render/
and images/ never see Settings.
"""

from __future__ import annotations

from lab.config.resolved import Lab
from lab.config.settings import Settings
from lab.host import libvirt
from lab.host.providers import resolve_provider


def resolve(settings: Settings) -> Lab:
    """The lab of these settings: target and scenario loaded (once per Settings value), the provider
    chosen on this machine, the libvirt URI parsed. Raises nothing for checked settings."""
    return Lab.of(settings, provider=provider_of(settings))


def provider_of(settings: Settings) -> str:
    """The provider the lab uses on this machine: "libvirt" or "virtualbox" (host.providers)."""
    return resolve_provider(settings.provider, settings.target_data)


def use_libvirt(settings: Settings) -> libvirt.Host:
    """Send this context's libvirt calls to the lab's libvirt host (libvirt_uri, libvirt_timeout);
    returns it. Raises TestbedError when a remote host's ssh wrapper cannot be written."""
    return libvirt.use(settings.libvirt, settings.libvirt_timeout)
