"""The resolved lab: what the layers below machine/ (host, render, images) read, as one frozen value.

Settings are what the user set (text: a target's name, a scenario's id or folder, "auto"); a Lab is
those settings resolved once at the top of a command: the target and the scenario loaded, the
provider chosen on this machine, the libvirt URI parsed, the fixes to try listed. mkosi's frozen
`Config` is the model. Machine/ and run/ build it with `lab.machine.resolve.resolve(settings)`;
the layers below take it, or the few plain values they need, never Settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType

from lab.config.libvirt_uri import LibvirtUri
from lab.config.scenario import Scenario
from lab.config.settings import Settings
from lab.config.targets import Target


@dataclass(frozen=True)
class Lab:
    """One lab, resolved. Sizes: cpus (count), memory (MiB); timeouts in seconds.

    target, scenario: loaded and checked (the scenario supports the target); provider: "libvirt" or
    "virtualbox", never "auto"; libvirt: the parsed URI of the libvirt host; fixes: the fix ids to
    try (the chosen ones, else every fix of the scenario on the target); values: every setting by
    its key, read-only (what templates see as `s`, and what a target's sources name by key)."""

    name: str
    target: Target
    scenario: Scenario
    provider: str
    libvirt: LibvirtUri
    libvirt_timeout: int
    fixes: tuple[str, ...]
    box: str
    cpus: int
    memory: int
    debian_mirror: str
    iso_url: str
    boot_timeout: int
    boot_quiet_timeout: int
    build_timeout: int
    values: Mapping[str, object]

    @classmethod
    def of(cls, settings: Settings, provider: str, scenario: Scenario | None = None) -> Lab:
        """The Lab of checked settings, with the provider chosen for this machine (host.providers)
        and, when the caller already loaded it, the scenario (else the settings' own, loaded once).
        Raises nothing: the settings were checked when they were loaded."""
        scenario = scenario or settings.scenario_data
        fixes = settings.fixes or tuple(f.id for f in scenario.fixes_for(settings.target))
        return cls(name=settings.name, target=settings.target_data, scenario=scenario,
                   provider=provider, libvirt=settings.libvirt, libvirt_timeout=settings.libvirt_timeout,
                   fixes=fixes, box=settings.box, cpus=settings.cpus, memory=settings.memory,
                   debian_mirror=settings.debian_mirror, iso_url=settings.iso_url,
                   boot_timeout=settings.boot_timeout, boot_quiet_timeout=settings.boot_quiet_timeout,
                   build_timeout=settings.build_timeout, values=MappingProxyType(asdict(settings)))

    def setting(self, key: str) -> str:
        """One setting's value as text, by its key (a target's `sources` name mirrors this way)."""
        return str(self.values[key])
