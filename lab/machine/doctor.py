"""lab.doctor: can this host bring the chosen target up? Each check with a fix hint."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from lab.config.settings import Settings
from lab.core.console import console
from lab.host import accel, libvirt, tools
from lab.host.probes import url_answers
from lab.host.providers import resolve_provider


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""
    required: bool = True


def _tool(name: str, required: bool = True, version_args: tuple[str, ...] = ("--version",)) -> Check:
    hint = tools.hint(name)
    path = shutil.which(name)
    if not path:
        return Check(name, False, "not found", hint, required)
    try:
        out = subprocess.run([path, *version_args], capture_output=True, text=True, timeout=60, check=False)
        first = (out.stdout or out.stderr).strip().splitlines()
        detail = first[0] if first else path
    except subprocess.TimeoutExpired:
        detail = f"{path} (no version answer)"
    return Check(name, True, detail, hint, required)


def checks(settings: Settings, provider: str) -> list[Check]:
    target = settings.target_data
    found = [_tool("vagrant")]
    if provider == "libvirt":
        plugins = ""
        if shutil.which("vagrant"):
            plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True, timeout=120,
                                     check=False).stdout
        found.append(Check("vagrant-libvirt", "vagrant-libvirt" in plugins, plugins.strip() or "not installed",
                           tools.hint("vagrant-libvirt")))
        found.append(_tool("virsh", version_args=("-v",)))
        up = libvirt.reachable()
        slow = libvirt.kvm_node_needs_fixing()
        found.append(Check("/dev/kvm access", not slow,
                           "libvirt-qemu cannot open it: libvirt re-probes qemu on every call (~1 min per define)"
                           if slow else "fine", "chgrp kvm /dev/kvm && chmod 660 /dev/kvm (lab.up does it as root)",
                           required=False))
        found.append(Check("libvirtd", up or shutil.which("libvirtd") is not None,
                           "answers" if up else "installed, not running (lab.up starts it)" if shutil.which("libvirtd")
                           else "not installed", tools.hint("libvirtd")))
    else:
        found.append(_tool("VBoxManage"))
    needs_build = not settings.box
    if needs_build:
        found.append(_tool("packer", version_args=("version",)))
        if target.box_builder == "mmdebstrap":
            found.append(_tool("mmdebstrap"))
            found.append(_tool("sfdisk"))
            found.append(_tool("mkfs.ext4", version_args=("-V",)))
            found.append(_tool("qemu-img"))
    if provider == "libvirt" or needs_build:
        found.append(_tool("qemu-system-x86_64"))
        kvm_ok, kvm_detail = accel.probe("kvm")
        found.append(Check("kvm", kvm_ok, kvm_detail + ("" if kvm_ok else "; TCG will be used (slower)"),
                           "check /dev/kvm and the CPU's virtualisation flags", required=False))
        tcg_ok, tcg_detail = accel.probe("tcg")
        found.append(Check("accelerator", kvm_ok or tcg_ok, "kvm" if kvm_ok else tcg_detail,
                           tools.hint("qemu-system-x86_64")))
    found.append(_tool("shellcheck", required=False))
    if target.family == "trusty" and needs_build:
        for label, url in (("ubuntu archive", f"{settings.ubuntu_mirror}/dists/trusty/Release"),
                           ("old-releases", f"{settings.ubuntu_old_mirror}/dists/trusty/Release"),
                           ("lxc-stable PPA", f"{settings.ppa_url}/dists/trusty/Release"),
                           ("trusty ISO", settings.iso_url)):
            ok, detail = url_answers(url)
            found.append(Check(label, ok, f"{url}: {detail}", "set box = '/path/to/trusty.box' in lab.toml "
                               "to use a local box, or use target bookworm",
                               required=label == "trusty ISO"))
    return found


def report(settings: Settings) -> bool:
    """Print every check; True when the chosen target can be brought up here."""
    provider = resolve_provider(settings)
    console.print(f"[bold]lab.doctor[/] target {settings.target}, provider {provider}")
    results = checks(settings, provider)
    for c in results:
        mark = "[green]✓[/]" if c.ok else ("[red]✗[/]" if c.required else "[yellow]![/]")
        hint = f"  [dim]→ {c.hint}[/]" if not c.ok and c.hint else ""
        console.print(f" {mark} {c.name:<20} {c.detail}{hint}")
    ok = all(c.ok for c in results if c.required)
    console.print("[green]ready to bring the lab up[/]" if ok else f"[red]target {settings.target} cannot be "
                  "brought up on this host yet[/]")
    return ok
