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
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab.config.settings import Settings
from lab.core import console, paths
from lab.core.errors import BootStalled, TestbedError
from lab.core.paths import cache_dir
from lab.core.resources import packer_file
from lab.host import accel, libvirt, storage, tools
from lab.host.probes import sources_silent
from lab.host.providers import resolve_provider
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


def box_packages(settings: Settings) -> tuple[str, ...]:
    """The target's base packages and the scenario's for that target, sorted: one base image per set."""
    target = settings.target_data
    return tuple(sorted({*target.packages, *settings.scenario_data.packages(target.name)}))


def layer_scripts(settings: Settings) -> list[layer.Script]:
    """The provisioning scripts a layer runs, in order: the target's (users) and the scenario's,
    rendered with box_facts (nothing per lab in them), each named the way the user knows it."""
    facts = box_facts(settings)
    scenario = settings.scenario_data
    scripts = []
    for _, _, stage in provision_plan(settings):
        for script in stage:
            if script.source == "scenario":
                label = f"`{script.template}` of scenario {scenario.id}"
                source: Path | None = scenario.folder / script.template
            else:
                label = f"the engine's `{script.template.removesuffix('.j2')}` (the users of scenario {scenario.id})"
                source = None
            scripts.append(layer.Script(name=Path(script.name).name, text=render_script(settings, facts, script),
                                        label=label, source=source))
    return scripts


def layer_users(settings: Settings) -> tuple[str, ...]:
    """Who may log in with a lab's key: the scenario's admin, then its ssh_login users."""
    users = settings.scenario_data.model.users
    return tuple(dict.fromkeys([users.admin, *users.ssh_login]))


def base_for(settings: Settings) -> base.BaseImage:
    return base.base_image(settings.target_data, box_packages(settings), settings.debian_mirror)


def shape_for(settings: Settings) -> vm.MachineShape:
    """The machine the lab's images run on, on the current libvirt host (asks it its hypervisor)."""
    return vm.MachineShape(cpus=settings.cpus, memory=settings.memory,
                           driver=accel.libvirt_driver(libvirt.current().access), hypervisor=vm.hypervisor())


def layer_for(settings: Settings) -> layer.Layer:
    """The scenario's layer on the current libvirt host (computed, not built)."""
    host_base = vm.host_base(base_for(settings), shape_for(settings))
    return layer.layer_for(host_base, settings.scenario_data.id, settings.target, layer_scripts(settings),
                           layer_users(settings))


def built_here(settings: Settings) -> bool:
    """What the lab starts from needs no download any more: a box the user named, the base image
    of a Debian target in the cache (its layer is built from it without the mirror), the trusty box."""
    if settings.box:
        return True
    if uses_layers(settings):
        return base_for(settings).built
    return cached_box(settings).path.is_file()


def uses_layers(settings: Settings) -> bool:
    """Labs of this target start from a saved layer state (our Debian images on libvirt)."""
    return box_provisioned(settings) and resolve_provider(settings) == "libvirt"


def build(settings: Settings, force: bool = False, verbose: bool = False,
          keep_failing: bool = False) -> layer.Layer | Box | None:
    """Build what the lab starts from unless it is cached; return it either way. Debian targets:
    the base image, its saved state on the lab's libvirt host, the scenario's layer (a Layer).
    Trusty: the Vagrant box (a Box). None when the lab uses a box the user named. Raises
    ProvisionFailed (exit 2) for a failing scenario script, TestbedError (exit 3) for the machinery."""
    if settings.box:
        console.info(f"lab {settings.name} uses the box you named ({settings.box}): nothing to build")
        return None
    if not uses_layers(settings):
        return build_box(settings, force, verbose)
    libvirt.use(settings)
    target = settings.target_data
    tools.require(*base.TOOLS, "virsh")
    libvirt.ensure_daemons()
    libvirt.ensure_pool()
    image = base.build(target, box_packages(settings), settings.debian_mirror, settings.build_timeout,
                       verbose=verbose, force=force)
    shape = shape_for(settings)
    host_base = vm.host_base(image, shape)
    lab_dir = paths.lab_dir(settings.name)
    scripts = layer_scripts(settings)
    lay = layer.layer_for(host_base, settings.scenario_data.id, target.name, scripts, layer_users(settings))
    if force:
        for volume in (lay.state_volume, lay.disk_volume, host_base.state_volume, host_base.disk_volume):
            storage.delete(volume)
    cached = layer.ready(lay)
    if cached:
        layer.remove_kept(lab_dir.root)
        _supersede(lay, settings)
        console.info(f"[green]✓[/] {settings.scenario_data.id} on {target.name} is cached: layer {lay.key} on "
                     f"base {image.key} (use --force to rebuild)")
        return lay
    owner = libvirt.owner_mark(lab_dir.root)
    try:
        vm.ensure_host_base(host_base, description=f"cgroup-lab image {host_base.prefix}",
                            boot_timeout=settings.boot_timeout, quiet_timeout=settings.boot_quiet_timeout,
                            upload_timeout=settings.build_timeout, verbose=verbose)
    except BootStalled as exc:  # under KVM, nothing on the console: KVM does not work on this host
        accel.kvm_failed(libvirt.current().access)
        console.info(f"[yellow]{exc.message}: KVM does not boot a guest on this host after all (the 512-byte "
                     "probe ran); from now on TCG is used there[/]")
        return build(settings, force=False, verbose=verbose, keep_failing=keep_failing)
    layer.build(lay, scripts, lab_root=lab_dir.root, owner=owner, boot_timeout=settings.boot_timeout,
                command_timeout=settings.build_timeout, keep_failing=keep_failing, verbose=verbose)
    _supersede(lay, settings)
    console.info(f"[green]✓[/] layer {lay.key} of {settings.scenario_data.id} on {target.name} built "
                 f"(base {image.key})")
    return lay


def _supersede(lay: layer.Layer, settings: Settings) -> None:
    removed = layer.supersede(lay, paths.state_root(), libvirt.current().uri, settings.scenario)
    if removed:
        console.info(f"removed the layer this one replaces (no lab uses it): {', '.join(removed)}")


# --- trusty: a Vagrant box from the ISO ----------------------------------------------------------

def build_inputs(settings: Settings) -> dict[str, str]:
    """Everything the trusty box build reads: the recipe, the target, the provider it is built
    for, the ISO, the Packer template, the rendered kernel-stage scripts, the machine's size and
    Vagrant's public key (baked in). Its hash is the box's key."""
    target = settings.target_data
    template = packer_file(f"{target.family}.pkr.hcl")
    _, public = vagrant_insecure_keys()
    return {
        "recipe": RECIPE_VERSION, "target": target.name, "provider": resolve_provider(settings),
        "iso_url": settings.iso_url, "cpus": str(settings.cpus), "memory": str(settings.memory),
        "packer": template.read_text(encoding="utf-8") if template.exists() else "",
        "scripts": "".join(f"# {name}\n{text}" for name, text in kernel_stage_scripts(settings)),
        "vagrant_pub": public.read_text().strip(),
    }


def box_key(inputs: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(inputs):
        h.update(k.encode() + b"\0" + inputs[k].encode() + b"\0")
    return h.hexdigest()[:16]


def boxes_dir() -> Path:
    return cache_dir() / "boxes"


def cached_box(settings: Settings) -> Box:
    """Where the target's Vagrant box lives (or would live) in the cache."""
    key = box_key(build_inputs(settings))
    target = settings.target_data
    path = boxes_dir() / f"{target.name}-{key}" / f"{target.name}.box"
    return Box(path=path, name=f"cgroup-lab/{target.name}-{key}", key=key)


def build_box(settings: Settings, force: bool = False, verbose: bool = False) -> Box:
    """Build the trusty box unless the cache already has it; return it either way."""
    target = settings.target_data
    box = cached_box(settings)
    if box.path.is_file() and not force:
        console.info(f"[green]✓[/] box for {target.name} is cached ({box.path}, key {box.key}); "
                     "nothing to build (use --force to rebuild)")
        return box
    tools.require("packer")
    _check_iso_reachable(settings)
    boxes_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-{box.key}-", dir=boxes_dir()))
    try:
        built = build_trusty(settings, work, verbose)
        final_dir = box.path.parent
        staged = work / "final"
        staged.mkdir()
        os.replace(built, staged / box.path.name)
        (staged / "inputs.json").write_text(json.dumps(build_inputs(settings), indent=1))
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(staged, final_dir)
    finally:
        remove_build_dir(work)
    console.info(f"[green]✓[/] box {box.name} built: {box.path} ({box.path.stat().st_size >> 20} MiB)")
    return box


def _check_iso_reachable(settings: Settings) -> None:
    """Every source the build downloads answers now (lab.host.probes), else TestbedError (exit 3)."""
    why = sources_silent(settings.target_data.sources, lambda key: str(getattr(settings, key)), has_box=False)
    if why:
        raise TestbedError(
            f"target {settings.target} cannot be built here: {why}",
            hint="use a local box instead: set box = '/path/to/trusty.box' in lab.toml, "
                 "or try target = 'bookworm' which builds from Debian's mirror",
        )
