"""A lab's files: the Vagrantfile and every provisioning script, from the target and the scenario."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from lab.config.resolved import Lab
from lab.render.templates import environment, render_file, scenario_environment

VAGRANTFILE_TEMPLATE = "Vagrantfile.j2"


@dataclass(frozen=True)
class LabFacts:
    """Values derived from the settings and the host, given to every template."""

    provider: str
    libvirt_driver: str
    box_name: str
    box_url: str
    public_key: str
    network_octet: int
    owner: str = ""  # the owner mark written into the domain's description (host.libvirt.owner_mark)
    # True when lab.build ran the provisioning into the image (our own Debian images): lab.up then
    # starts the VM from the image's saved state and hands it the lab's identity (lab.images).
    box_provisioned: bool = False
    private_key_path: str = ""  # the lab's private key, for Vagrant's own SSH when box_provisioned
    libvirt_uri: str = "qemu:///system"  # the URI vagrant-libvirt connects to (host.libvirt.Host.libvirt_uri)
    ssh_proxy: str = ""  # on a remote libvirt host: Vagrant's ProxyCommand to the guest through it

    @property
    def network_address(self) -> str:
        """The lab's network in CIDR form, 192.168.<network_octet>.0/24 (the Vagrantfile's
        management_network_address for vagrant-libvirt)."""
        return f"192.168.{self.network_octet}.0/24"


def default_network_octet(name: str) -> int:
    """A stable /24 per lab name, 192.168.100-219.x; lab.up moves on if another network has it."""
    return 100 + zlib.crc32(name.encode()) % 120


def facts_for_render(name: str, provisioned_box: bool = False) -> LabFacts:
    """Stand-in facts for rendering without a lab or the host (lab.check, --list-fixes)."""
    return LabFacts(provider="libvirt", libvirt_driver="qemu", box_name="cgroup-lab/check", box_url="",
                    public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICheck cgroup-lab-check",
                    network_octet=default_network_octet(name), owner="cgroup-lab check",
                    box_provisioned=provisioned_box, private_key_path="/nonexistent/cgroup-lab-check-key")


def box_provisioned(lab: Lab) -> bool:
    """Whether the lab's box carries its provisioning: boxes lab.build makes with mmdebstrap do;
    a box the user names (`box` setting) and the trusty ISO box are provisioned by Vagrant at up."""
    return not lab.box and lab.target.box_builder == "mmdebstrap"


def box_facts() -> LabFacts:
    """The facts the provisioning scripts are rendered with when lab.build runs them into the box:
    nothing that differs between labs (no key, network or owner), so labs of one scenario and
    target share the box."""
    return LabFacts(provider="libvirt", libvirt_driver="qemu", box_name="", box_url="", public_key="",
                    network_octet=0, owner="", box_provisioned=True)


@dataclass(frozen=True)
class Script:
    """One provisioning script: where its template lives (engine or scenario) and its file in the lab."""

    source: str  # "engine" or "scenario"
    template: str
    name: str  # provision/01-base-users.sh
    id: str  # 01-base-users (the Vagrant provisioner's name)


def provision_plan(lab: Lab) -> list[tuple[str, bool, list[Script]]]:
    """[(stage, reboot after it, scripts)]: the target's stages, the scenario's scripts appended to
    the last one, numbered in the order they run."""
    target = lab.target
    extra = lab.scenario.provision_for(target.name)
    plan = []
    index = 0
    for n, stage in enumerate(target.provision):
        entries = [("engine", f"{t}.j2") for t in stage.scripts]
        if n == len(target.provision) - 1:
            entries += [("scenario", t) for t in extra]
        scripts = []
        for source, template in entries:
            index += 1
            stem = PurePosixPath(template.removesuffix(".j2")).name
            scripts.append(Script(source, template, f"provision/{index:02d}-{stage.stage}-{stem}",
                                  f"{index:02d}-{stage.stage}-{PurePosixPath(stem).stem}"))
        plan.append((stage.stage, stage.reboot, scripts))
    return plan


def context(lab: Lab, facts: LabFacts) -> dict[str, Any]:
    """What every template sees: s (the settings by key), t/target, lab (facts), name, stages, and
    the scenario's admin, users, vars and packages for this target."""
    target = lab.target
    scenario = lab.scenario
    stages = [{"stage": stage, "reboot": reboot, "scripts": [{"name": s.name, "id": s.id} for s in scripts]}
              for stage, reboot, scripts in provision_plan(lab)]
    return {"s": lab.values, "t": target, "target": target, "lab": facts, "name": lab.name, "stages": stages,
            "scenario": scenario.model, "admin": scenario.model.users.admin, "users": scenario.model.users,
            "vars": scenario.vars_for(target.name), "packages": scenario.packages(target.name)}


def render_script(lab: Lab, facts: LabFacts, script: Script, ctx: dict[str, Any] | None = None) -> str:
    """One provisioning script's text, rendered with ctx (default: context(lab, facts)). Raises
    LabError naming the template and line of a template error."""
    ctx = ctx or context(lab, facts)
    if script.source == "engine":
        return render_file(environment(), script.template, ctx)
    folder = lab.scenario.folder
    return render_file(scenario_environment(folder), script.template, ctx, where=str(folder))


def render_all(lab: Lab, facts: LabFacts) -> dict[str, str]:
    """The Vagrantfile and every provisioning script, by path relative to the lab directory (pure).
    Raises LabError naming the template and line of a template error."""
    ctx = context(lab, facts)
    files = {"Vagrantfile": render_file(environment(), VAGRANTFILE_TEMPLATE, ctx)}
    for _, _, scripts in provision_plan(lab):
        for script in scripts:
            files[script.name] = render_script(lab, facts, script, ctx)
    return files
