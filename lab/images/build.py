"""Build what a lab starts from, and say whether it is cached.

Debian targets, in layers (each cached by the hash of everything it reads):
1. the base image of the target and its package set (the target's packages plus the scenario's
   for that target): mmdebstrap, mkfs.ext4 -d, the kernel and initrd next to it; no VM boots
   (lab.images.base), kept in $XDG_CACHE_HOME/cgroup-lab/images/;
2. on the lab's libvirt host: that image booted once and its running state saved
   (lab.images.vm), shared by every scenario with the same packages;
3. the scenario's layer: its users and provisioning scripts run into an overlay, started from the
   base's state (no boot), and that running state saved (lab.images.layer): what every lab of the
   scenario and target starts from in a few seconds.

Trusty: Packer from the Ubuntu 14.04 ISO (lab.images.trusty), a Vagrant box in
$XDG_CACHE_HOME/cgroup-lab/boxes/, provisioned by Vagrant at lab.up.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab.config.resolved import Lab
from lab.core import console, paths
from lab.core.errors import BootStalled, ProvisionFailed, TestbedError
from lab.core.paths import cache_dir
from lab.core.resources import packer_file
from lab.host import accel, libvirt, storage, tools
from lab.host.probes import sources_silent
from lab.images import base, layer, vm
from lab.images.base import remove_build_dir
from lab.images.common import vagrant_insecure_keys
from lab.images.trusty import build_trusty, kernel_stage_scripts
from lab.render.lab import box_facts, box_provisioned, provision_plan, render_script

RECIPE_VERSION = "4"  # the trusty box's recipe: bump when its build steps change unseen by its inputs


@dataclass(frozen=True)
class Box:
    """A built Vagrant box in the cache (trusty): its file, the name Vagrant knows it by, its key."""

    path: Path
    name: str
    key: str


def box_packages(lab: Lab) -> tuple[str, ...]:
    """The target's base packages and the scenario's for that target, sorted: one base image per set."""
    target = lab.target
    return tuple(sorted({*target.packages, *lab.scenario.packages(target.name)}))


def layer_scripts(lab: Lab) -> list[layer.Script]:
    """The provisioning scripts a layer runs, in order: the target's (users) and the scenario's,
    rendered with box_facts (nothing per lab in them), each named the way the user knows it."""
    facts = box_facts()
    scenario = lab.scenario
    scripts = []
    for _, _, stage in provision_plan(lab):
        for script in stage:
            if script.source == "scenario":
                label = f"`{script.template}` of scenario {scenario.id}"
                source: Path | None = scenario.folder / script.template
            else:
                label = f"the engine's `{script.template.removesuffix('.j2')}` (the users of scenario {scenario.id})"
                source = None
            scripts.append(layer.Script(name=Path(script.name).name, text=render_script(lab, facts, script),
                                        label=label, source=source))
    return scripts


def layer_users(lab: Lab) -> tuple[str, ...]:
    """Who may log in with a lab's key: the scenario's admin, then its ssh_login users."""
    users = lab.scenario.model.users
    return tuple(dict.fromkeys([users.admin, *users.ssh_login]))


def base_for(lab: Lab) -> base.BaseImage:
    """The lab's base image in the cache (lab.images.base; computed, not built): its target, box_packages
    and the debian_mirror setting decide its key."""
    return base.base_image(lab.target, box_packages(lab), lab.debian_mirror)


def shape_for(lab: Lab) -> vm.MachineShape:
    """The machine the lab's images run on, on the current libvirt host (asks it its hypervisor)."""
    return vm.MachineShape(cpus=lab.cpus, memory=lab.memory,
                           driver=accel.libvirt_driver(libvirt.current().access), hypervisor=vm.hypervisor())


def layer_for(lab: Lab) -> layer.Layer:
    """The scenario's layer on the current libvirt host (computed, not built)."""
    host_base = vm.host_base(base_for(lab), shape_for(lab))
    return layer.layer_for(host_base, lab.scenario.id, lab.target.name, layer_scripts(lab),
                           layer_users(lab))


def built_here(lab: Lab) -> bool:
    """What the lab starts from needs no download any more: a box the user named, the base image
    of a Debian target in the cache (its layer is built from it without the mirror), the trusty box."""
    if lab.box:
        return True
    if uses_layers(lab):
        return base_for(lab).built
    return cached_box(lab).path.is_file()


def uses_layers(lab: Lab) -> bool:
    """Labs of this target start from a saved layer state (our Debian images on libvirt)."""
    return box_provisioned(lab) and lab.provider == "libvirt"


def build(lab: Lab, force: bool = False, verbose: bool = False,
          keep_failing: bool = False) -> layer.Layer | Box | None:
    """Build what the lab starts from unless it is cached; return it either way. Debian targets:
    the base image, its saved state on the lab's libvirt host, the scenario's layer (a Layer).
    Trusty: the Vagrant box (a Box). None when the lab uses a box the user named. Raises
    ProvisionFailed (exit 2) for a failing scenario script, TestbedError (exit 3) for the machinery."""
    if lab.box:
        console.info(f"lab {lab.name} uses the box you named ({lab.box}): nothing to build")
        return None
    if not uses_layers(lab):
        return build_box(lab, force, verbose)
    libvirt.use(lab.libvirt, lab.libvirt_timeout)
    target = lab.target
    tools.require(*base.TOOLS, "virsh")
    libvirt.ensure_daemons()
    libvirt.ensure_pool()
    image = base.build(target, box_packages(lab), lab.debian_mirror, lab.build_timeout,
                       verbose=verbose, force=force)
    shape = shape_for(lab)
    host_base = vm.host_base(image, shape)
    lab_dir = paths.lab_dir(lab.name)
    scripts = layer_scripts(lab)
    lay = layer.layer_for(host_base, lab.scenario.id, target.name, scripts, layer_users(lab))
    if force:
        for volume in (lay.state_volume, lay.disk_volume, host_base.state_volume, host_base.disk_volume):
            storage.delete(volume)
    cached = layer.ready(lay)
    if cached:
        layer.remove_kept(lab_dir.root)
        _supersede(lay, lab)
        console.info(f"[green]✓[/] {lab.scenario.id} on {target.name} is cached: layer {lay.key} on "
                     f"base {image.key} (lab.build --force or lab.up --rebuild builds it again)")
        return lay
    owner = libvirt.owner_mark(lab_dir.root)
    try:
        vm.ensure_host_base(host_base, description=f"cgroup-lab image {host_base.prefix}",
                            boot_timeout=lab.boot_timeout, quiet_timeout=lab.boot_quiet_timeout,
                            upload_timeout=lab.build_timeout, verbose=verbose)
    except BootStalled as exc:  # under KVM, nothing on the console: KVM does not work on this host
        accel.kvm_failed(libvirt.current().access)
        console.info(f"[yellow]{exc.message}: KVM does not boot a guest on this host after all (the 512-byte "
                     "probe ran); from now on TCG is used there[/]")
        return build(lab, force=False, verbose=verbose, keep_failing=keep_failing)
    try:
        layer.build(lay, scripts, lab_root=lab_dir.root, owner=owner, boot_timeout=lab.boot_timeout,
                    command_timeout=lab.build_timeout, keep_failing=keep_failing, verbose=verbose)
    except ProvisionFailed as exc:  # the way on names this lab, not the defaults of the directory
        again = lab_flags(lab)
        way = (f"fix the script, then run it again: invoke lab.up {again} (or lab.build with the same "
               f"flags); look inside with --keep-failing")
        if keep_failing:
            way = f"{exc.hint}; {way.replace('; look inside with --keep-failing', '')}"
        raise ProvisionFailed(exc.message, hint=way.replace("invoke lab.destroy", f"invoke lab.destroy --name "
                                                                               f"{shlex.quote(lab.name)}")) from None
    _supersede(lay, lab)
    console.info(f"[green]✓[/] layer {lay.key} of {lab.scenario.id} on {target.name} built "
                 f"(base {image.key})")
    return lay


def lab_flags(lab: Lab) -> str:
    """--scenario, --target and --name of this lab, quoted for a shell: what a hint's command needs
    so that it acts on this lab wherever it is typed."""
    return " ".join(f"--{key} {shlex.quote(value)}" for key, value in
                    (("scenario", lab.setting("scenario")), ("target", lab.target.name), ("name", lab.name)))


def _supersede(lay: layer.Layer, lab: Lab) -> None:
    removed = layer.supersede(lay, paths.state_root(), libvirt.current().uri, lab.setting("scenario"))
    if removed:
        console.info(f"removed the layer this one replaces (no lab uses it): {', '.join(removed)}")


# --- trusty: a Vagrant box from the ISO ----------------------------------------------------------

def build_inputs(lab: Lab) -> dict[str, str]:
    """Everything the trusty box build reads: the recipe, the target, the provider it is built
    for, the ISO, the Packer template, the rendered kernel-stage scripts, the machine's size and
    Vagrant's public key (baked in). Its hash is the box's key."""
    target = lab.target
    template = packer_file(f"{target.family}.pkr.hcl")
    _, public = vagrant_insecure_keys()
    return {
        "recipe": RECIPE_VERSION, "target": target.name, "provider": lab.provider,
        "iso_url": lab.iso_url, "cpus": str(lab.cpus), "memory": str(lab.memory),
        "packer": template.read_text(encoding="utf-8") if template.exists() else "",
        "scripts": "".join(f"# {name}\n{text}" for name, text in kernel_stage_scripts(lab)),
        "vagrant_pub": public.read_text().strip(),
    }


def box_key(inputs: dict[str, str]) -> str:
    """16 hex digits of a sha256 over the sorted key/value pairs of a box's build_inputs."""
    h = hashlib.sha256()
    for k in sorted(inputs):
        h.update(k.encode() + b"\0" + inputs[k].encode() + b"\0")
    return h.hexdigest()[:16]


def boxes_dir() -> Path:
    """The cache folder of the Vagrant boxes (trusty): $XDG_CACHE_HOME/cgroup-lab/boxes."""
    return cache_dir() / "boxes"


def cached_box(lab: Lab) -> Box:
    """Where the target's Vagrant box lives (or would live) in the cache."""
    key = box_key(build_inputs(lab))
    target = lab.target
    path = boxes_dir() / f"{target.name}-{key}" / f"{target.name}.box"
    return Box(path=path, name=f"cgroup-lab/{target.name}-{key}", key=key)


def build_box(lab: Lab, force: bool = False, verbose: bool = False) -> Box:
    """Build the trusty box unless the cache already has it; return it either way."""
    target = lab.target
    box = cached_box(lab)
    if box.path.is_file() and not force:
        console.info(f"[green]✓[/] box for {target.name} is cached ({box.path}, key {box.key}); "
                     "nothing to build (lab.build --force or lab.up --rebuild builds it again)")
        return box
    tools.require("packer")
    _check_iso_reachable(lab)
    boxes_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-{box.key}-", dir=boxes_dir()))
    try:
        built = build_trusty(lab, work, verbose)
        final_dir = box.path.parent
        staged = work / "final"
        staged.mkdir()
        os.replace(built, staged / box.path.name)
        (staged / "inputs.json").write_text(json.dumps(build_inputs(lab), indent=1))
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(staged, final_dir)
    finally:
        remove_build_dir(work)
    console.info(f"[green]✓[/] box {box.name} built: {box.path} ({box.path.stat().st_size >> 20} MiB)")
    return box


def _check_iso_reachable(lab: Lab) -> None:
    """Every source the build downloads answers now (lab.host.probes), else TestbedError (exit 3)."""
    why = sources_silent(lab.target.sources, lab.setting, has_box=False)
    if why:
        raise TestbedError(
            f"target {lab.target.name} cannot be built here: {why}",
            hint="use a local box instead: set box = '/path/to/trusty.box' in lab.toml, "
                 "or try target = 'bookworm' which builds from Debian's mirror",
        )
