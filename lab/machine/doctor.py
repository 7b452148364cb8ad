"""lab.doctor: can this host bring the chosen target up? Each check with a fix hint."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass

from lab.config.settings import Settings
from lab.core.console import console
from lab.core.errors import TestbedError
from lab.host import accel, libvirt, proc, tools
from lab.host.probes import url_answers
from lab.machine.resolve import provider_of, use_libvirt


@dataclass(frozen=True)
class Check:
    """One line of lab.doctor: what was checked (name), whether it passed (ok), what was found (detail),
    how to fix it (hint, shown when it failed), and whether a failure means the lab cannot come up
    (required; a failed optional check is a yellow "!" and does not make report() False)."""

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
        out = proc.run([path, *version_args], step=f"{name} {' '.join(version_args)}", timeout=60, check=False,
                       split_stderr=True)
        first = (out.stdout or out.stderr).strip().splitlines()
        detail = first[0] if first else path
    except TestbedError:  # no answer within the minute
        detail = f"{path} (no version answer)"
    return Check(name, True, detail, hint, required)


def local_libvirt_checks() -> list[Check]:
    """This machine's libvirt: /dev/kvm's mode and libvirtd."""
    up = libvirt.reachable()
    slow = libvirt.kvm_node_needs_fixing()
    return [Check("/dev/kvm access", not slow,
                  "libvirt-qemu cannot open it: libvirt re-probes qemu on every call (~1 min per define)"
                  if slow else "fine", "chgrp kvm /dev/kvm && chmod 660 /dev/kvm (lab.up does it as root)",
                  required=False),
            Check("libvirtd", up or shutil.which("libvirtd") is not None,
                  "answers" if up else "installed, not running (lab.up starts it)" if shutil.which("libvirtd")
                  else "not installed", tools.hint("libvirtd"))]


def checks(settings: Settings, provider: str) -> list[Check]:
    """Every check for the settings' target and provider (and its libvirt host, local or remote)."""
    target = settings.target_data
    found = [_tool("vagrant")]
    if provider == "libvirt":
        plugins = ""
        if shutil.which("vagrant"):
            plugins = proc.run([tools.vagrant_exe(), "plugin", "list"], step="vagrant plugin list", timeout=120,
                               check=False, split_stderr=True).stdout
        found.append(Check("vagrant-libvirt", "vagrant-libvirt" in plugins, plugins.strip() or "not installed",
                           tools.hint("vagrant-libvirt")))
        found.append(_tool("virsh", version_args=("-v",)))
        if libvirt.current().remote:
            found += remote_checks(settings)
        else:
            found += local_libvirt_checks()
    else:
        found.append(_tool("VBoxManage"))
    needs_build = not settings.box
    if needs_build:
        if target.box_builder == "mmdebstrap":  # no VM boots to build the base image: no Packer
            found.append(_tool("mmdebstrap"))
            found.append(_tool("mkfs.ext4", version_args=("-V",)))
            found.append(_tool("qemu-img"))
        else:
            found.append(_tool("packer", version_args=("version",)))
    if (provider == "libvirt" and not libvirt.current().remote) or needs_build:
        found.append(_tool("qemu-system-x86_64"))
        kvm_ok, kvm_detail = accel.probe("kvm")
        here = " (here, for builds)" if libvirt.current().remote else ""
        found.append(Check("kvm" + here, kvm_ok, kvm_detail + ("" if kvm_ok else "; TCG will be used (slower)"),
                           "check /dev/kvm and the CPU's virtualisation flags", required=False))
        tcg_ok, tcg_detail = accel.probe("tcg")
        found.append(Check("accelerator" + here, kvm_ok or tcg_ok, "kvm" if kvm_ok else tcg_detail,
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


MEMORY_MARGIN_MIB = 256  # libvirt and qemu's own overhead next to the guest's memory


def remote_checks(settings: Settings) -> list[Check]:
    """The remote libvirt host (the current libvirt.Host): SSH, libvirtd, the pool, an accelerator,
    free memory for the lab. Raises TestbedError (naming the URI) when the host cannot be reached
    at all: every other check would fail the same way."""
    host = libvirt.current()
    assert host.access is not None
    where = host.access.uri.host_label
    hello = host.access.run("echo ok", timeout=host.timeout * 2)
    keys = f"{'checked strictly against' if host.access.strict else 'pinned in'} {host.access.known_hosts}"
    found = [Check("libvirt host ssh", hello.returncode == 0, f"{where}: key accepted, host key {keys}")]
    ok, detail = libvirt.reach()
    if not ok:
        raise TestbedError(f"libvirt host {host.uri}: libvirtd does not answer ({detail})",
                           hint="start libvirtd on that host (systemctl start libvirtd, or libvirtd -d)")
    found.append(Check("libvirtd", True, f"{detail} on {where}"))
    pool = libvirt.lookup("pool", "pool-info", libvirt.POOL)  # None: libvirt has no such pool
    running = pool is not None and re.search(r"State:\s+running", pool.stdout) is not None
    found.append(Check(f"storage pool {libvirt.POOL}", True if pool is None else running,
                       "running" if running else "absent: lab.up defines it" if pool is None
                       else "defined but not running", f"virsh -c URI pool-start {libvirt.POOL}"))
    caps = libvirt.virsh("domcapabilities", "--virttype", "kvm")
    listed = caps.returncode == 0 and "<domain>kvm</domain>" in caps.stdout
    kvm_ok, kvm_detail = accel.probe_remote(host.access, "kvm") if listed else (False, "libvirt lists no kvm")
    found.append(Check("kvm", kvm_ok, kvm_detail + ("" if kvm_ok else "; TCG will be used there (slower)"),
                       "check /dev/kvm on the host", required=False))
    tcg_ok, tcg_detail = (True, "not needed") if kvm_ok else accel.probe_remote(host.access, "tcg")
    found.append(Check("accelerator", kvm_ok or tcg_ok, "kvm" if kvm_ok else tcg_detail,
                       "install qemu-system-x86 on the host"))
    stats = libvirt.virsh("nodememstats").stdout
    free = re.search(r"^free\s*:\s*(\d+) KiB", stats, re.M)
    need = settings.memory + MEMORY_MARGIN_MIB
    if free:
        free_mib = int(free.group(1)) // 1024
        found.append(Check("free memory", free_mib >= need, f"{free_mib} MiB free, the lab needs {need} MiB",
                           "destroy labs you no longer need on that host, or lower memory in lab.toml"))
    else:
        found.append(Check("free memory", False, "virsh nodememstats gave no free figure", required=False))
    cpus = re.search(r"^CPU\(s\):\s*(\d+)", libvirt.virsh("nodeinfo").stdout, re.M)
    found.append(Check("host cpus", bool(cpus) and int(cpus.group(1)) >= 1 if cpus else False,
                       f"{cpus.group(1)} (the lab uses {settings.cpus})" if cpus else "unknown", required=False))
    return found


def report(settings: Settings) -> bool:
    """Print every check; True when the chosen target can be brought up here (on the settings'
    libvirt host). Raises TestbedError when a remote libvirt host cannot be reached at all."""
    provider = provider_of(settings)
    host = use_libvirt(settings)
    console.print(f"[bold]lab.doctor[/] target {settings.target}, provider {provider}"
                  + (f", libvirt host {host.uri}" if host.remote else ""))
    results = checks(settings, provider)
    for c in results:
        mark = "[green]✓[/]" if c.ok else ("[red]✗[/]" if c.required else "[yellow]![/]")
        hint = f"  [dim]→ {c.hint}[/]" if not c.ok and c.hint else ""
        console.print(f" {mark} {c.name:<20} {c.detail}{hint}")
    ok = all(c.ok for c in results if c.required)
    console.print("[green]ready to bring the lab up[/]" if ok else f"[red]target {settings.target} cannot be "
                  "brought up on this host yet[/]")
    return ok
