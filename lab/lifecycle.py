"""Lab lifecycle: render, up (build box if needed, vagrant up, provision, reboot stages), status,
ssh, destroy. Each function takes validated Settings and acts on .lab/<name>/."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lab import accel, build, console, libvirt_host, machine, paths, proc, render, tools
from lab.errors import LabError, ToolMissing
from lab.files import write_files
from lab.keys import ensure_keypair
from lab.remote import Endpoint, Remote
from lab.settings import Settings, from_json


def domain_name(settings: Settings) -> str:
    return f"lab-{settings.name}"


def resolve_provider(settings: Settings) -> str:
    """auto: libvirt on Linux when virsh is installed, else VirtualBox when VBoxManage is."""
    target = settings.target_data
    if settings.provider != "auto":
        return settings.provider
    if sys.platform.startswith("linux") and shutil.which("virsh") and "libvirt" in target.providers:
        return "libvirt"
    if shutil.which("VBoxManage") and "virtualbox" in target.providers:
        return "virtualbox"
    return "libvirt" if "libvirt" in target.providers else target.providers[0]


def box_for(settings: Settings) -> tuple[str, str]:
    """(vagrant box name, box file path or '') for the lab: a local .box, a named box, or the cache."""
    if settings.box.endswith(".box"):
        path = Path(settings.box)
        digest = hashlib.sha256(f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode()).hexdigest()
        return f"cgroup-lab/local-{settings.target}-{digest[:12]}", str(path)
    if settings.box:
        return settings.box, ""
    box = build.cached_box(settings)
    return box.name, str(box.path)


def facts_for(settings: Settings, lab: paths.LabDir, provider: str, probe_network: bool) -> render.LabFacts:
    public_key = ensure_keypair(lab.private_key, lab.public_key, f"cgroup-lab-{settings.name}")
    box_name, box_url = box_for(settings)
    octet = render.default_network_octet(settings.name)
    if probe_network and provider == "libvirt":
        octet = libvirt_host.pick_octet(octet, domain_name(settings), _saved_octet(lab))
    driver = accel.libvirt_driver() if provider == "libvirt" else "kvm"
    return render.LabFacts(provider=provider, libvirt_driver=driver, box_name=box_name, box_url=box_url,
                           public_key=public_key, network_octet=octet)


FACTS = "facts.json"


def load_facts(lab: paths.LabDir) -> render.LabFacts:
    """The facts lab.up rendered the lab with (provider, box, network), as it saved them."""
    try:
        return render.LabFacts(**json.loads((lab.root / FACTS).read_text()))
    except FileNotFoundError:
        raise LabError(f"lab {lab.name} has not been rendered ({lab.root / FACTS} is missing)",
                       hint="run: invoke lab.up") from None
    except (ValueError, TypeError) as exc:
        raise LabError(f"{lab.root / FACTS} is damaged ({exc})", hint="run: invoke lab.up") from None


def _saved_octet(lab: paths.LabDir) -> int | None:
    try:
        return load_facts(lab).network_octet
    except LabError:
        return None


def render_lab(settings: Settings, out: Path | None = None, probe_network: bool = False) -> Path:
    """Write the Vagrantfile and every script into out (default .lab/<name>/); start nothing."""
    lab = paths.LabDir(out) if out else paths.lab_dir(settings.name)
    provider = resolve_provider(settings)
    facts = facts_for(settings, lab, provider, probe_network)
    files = render.render_all(settings, facts)
    files["settings.json"] = settings.to_json() + "\n"
    files[FACTS] = json.dumps(facts.__dict__, indent=2, sort_keys=True) + "\n"
    write_files(lab.root, files)
    return lab.root


def load_lab(name: str | None = None, project_dir: Path | None = None) -> Settings:
    """The settings saved by lab.up for this lab (default: the one brought up last)."""
    name = name or paths.current_name(project_dir)
    lab = paths.lab_dir(name, project_dir)
    try:
        text = lab.settings_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(f"lab {name!r} has not been brought up here ({lab.settings_file} is missing)",
                       hint=f"run: invoke lab.up --name {name}") from None
    return from_json(text, str(lab.settings_file))


def require_provider(provider: str) -> None:
    if provider == "libvirt":
        tools.require("vagrant", "virsh")
        out = proc.run([tools.vagrant_exe(), "plugin", "list"], step="vagrant plugin list", timeout=120).output
        if "vagrant-libvirt" not in out:
            raise ToolMissing("the vagrant-libvirt plugin is missing", hint=tools.hint("vagrant-libvirt"))
        libvirt_host.ensure_daemons()
        libvirt_host.ensure_pool()
    else:
        tools.require("VBoxManage")


def vagrant_for(lab: paths.LabDir, timeout: float, waiting: str,
                on_line: Callable[[str], None] | None = None) -> machine.LabVagrant:
    return machine.LabVagrant(lab.root, timeout=timeout, on_line=on_line, step=waiting)


def up(settings: Settings, verbose: bool = False, force_build: bool = False) -> None:
    """Build the box if needed, bring the VM up, run the provisioning stages, pin the host key."""
    target = settings.target_data
    provider = resolve_provider(settings)
    if provider not in target.providers:
        raise LabError(f"target {target.name} has no {provider} box",
                       hint=f"use provider: {', '.join(target.providers)}")
    require_provider(provider)
    if not settings.box:
        build.build(settings, force=force_build, verbose=verbose)
    lab = paths.lab_dir(settings.name)
    paths.remember_current(settings.name)
    _clear_orphans(settings, lab, provider)
    done = lab.root / UP_COMPLETE
    if _machine_id(settings, lab, provider).exists() and not done.exists():
        console.info("an earlier lab.up of this lab did not finish: removing what it left, then starting over")
        destroy(settings)
    done.unlink(missing_ok=True)
    render_lab(settings, probe_network=True)
    facts = load_facts(lab)
    if (settings.box.endswith(".box") or not settings.box) and facts.box_name not in machine.box_names():
        with console.step(f"vagrant box add {facts.box_name}", "the box to be unpacked", verbose) as out:
            machine.box_add(facts.box_name, Path(facts.box_url), timeout=900, on_line=out)
    stages = target.provision
    ids = render.context(settings, facts)["stages"]
    up_timeout = settings.boot_timeout + 1800
    for i, (stage, rendered) in enumerate(zip(stages, ids, strict=True)):
        names = [s["id"] for s in rendered["scripts"]]
        if i == 0:
            title = (f"vagrant up {domain_name(settings)} ({provider}, {facts.libvirt_driver}), "
                     f"provision {stage.stage}")
            waiting = ("the box upload into libvirt's pool (first time only, ~2 min), the boot (~1 min on TCG), "
                       "SSH and provisioning")
            with console.step(title, waiting, verbose) as out:
                vagrant_for(lab, up_timeout, waiting, out).up(provider=provider, provision_with=names)
        else:
            waiting = "the reboot into the new kernel, SSH and provisioning"
            with console.step(f"vagrant reload, provision {stage.stage}", waiting, verbose) as out:
                vagrant_for(lab, up_timeout, waiting, out).reload(provision_with=names)
        if stage.reboot and i == len(stages) - 1:
            with console.step("vagrant reload", "the reboot", verbose) as out:
                vagrant_for(lab, up_timeout, "the reboot", out).reload(provision=False)
    with console.step("SSH as the admin with the lab's key", "sshd in the guest", verbose), \
            connect(settings, refresh=True) as remote:
        result = remote.run("id -un; uname -r", step="first login")
        if result.failed:
            raise LabError(f"logging in as {settings.admin_user} failed: {result.stderr.strip()}")
    if provider == "libvirt":
        with console.step("snapshot of the provisioned VM (for lab.reset)", "libvirt to save disk and memory",
                          verbose):
            libvirt_host.snapshot_baseline(domain_name(settings))
    done.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    console.info(f"[green]✓[/] lab {settings.name} is up: {result.stdout.split()[-1]} kernel; "
                 f"next: invoke lab.verify")


def reset(settings: Settings) -> float:
    """Back to the freshly provisioned VM through its snapshot: seconds, not a rebuild."""
    if resolve_provider(settings) != "libvirt":
        raise LabError("lab.reset needs the libvirt provider", hint="use: invoke lab.destroy lab.up")
    libvirt_host.ensure_daemons()
    started = time.monotonic()
    with console.step(f"revert {domain_name(settings)} to its baseline snapshot", "libvirt to load disk and memory"):
        libvirt_host.revert_baseline(domain_name(settings))
    with console.step("SSH as the admin after the revert", "sshd in the guest"), connect(settings):
        pass  # an authenticated session proves the guest is back
    return time.monotonic() - started


UP_COMPLETE = "up-complete"


def _machine_id(settings: Settings, lab: paths.LabDir, provider: str) -> Path:
    return lab.root / ".vagrant" / "machines" / domain_name(settings) / provider / "id"


def _clear_orphans(settings: Settings, lab: paths.LabDir, provider: str) -> None:
    """A domain named after the lab that Vagrant no longer knows (interrupted up) blocks the next up."""
    if provider != "libvirt" or _machine_id(settings, lab, provider).exists():
        return
    removed = libvirt_host.cleanup(domain_name(settings), domain_name(settings))
    if removed:
        console.info(f"removed leftovers of an earlier, interrupted run: {', '.join(removed)}")


ENDPOINT = "endpoint.json"


def endpoint(settings: Settings, refresh: bool = False) -> Endpoint:
    """The guest's SSH address: asked from Vagrant once per up (`vagrant ssh-config` costs ~2 s of
    Ruby start-up), then read from .lab/<name>/endpoint.json."""
    lab = paths.lab_dir(settings.name)
    saved = lab.root / ENDPOINT
    if not refresh:
        try:
            data = json.loads(saved.read_text())
            return Endpoint(host=str(data["host"]), port=int(data["port"]), user=settings.admin_user,
                            key_file=lab.private_key)
        except (OSError, ValueError, KeyError):
            pass
    if not lab.vagrantfile.exists():
        raise LabError(f"lab {settings.name} has no Vagrantfile", hint="run: invoke lab.up")
    conf = machine.LabVagrant(lab.root, timeout=120).conf(vm_name=domain_name(settings))
    host, port = conf.get("HostName"), conf.get("Port", "22")
    if not host:
        raise LabError(f"Vagrant knows no address for {domain_name(settings)}", hint="is it running? invoke lab.status")
    write_files(lab.root, {ENDPOINT: json.dumps({"host": host, "port": int(port)}) + "\n"})
    return Endpoint(host=host, port=int(port), user=settings.admin_user, key_file=lab.private_key)


def connect(settings: Settings, refresh: bool = False) -> Remote:
    lab = paths.lab_dir(settings.name)
    return Remote(endpoint(settings, refresh), lab.known_hosts, connect_timeout=settings.ssh_timeout,
                  command_timeout=settings.command_timeout, label=f"lab {settings.name}")


def status(settings: Settings) -> dict[str, str]:
    lab = paths.lab_dir(settings.name)
    info = {"lab": settings.name, "target": settings.target, "provider": resolve_provider(settings),
            "dir": str(lab.root)}
    if info["provider"] == "libvirt" and libvirt_host.reachable():
        info["domain"] = f"{domain_name(settings)}: {libvirt_host.domain_state(domain_name(settings))}"
    if lab.vagrantfile.exists():
        states = machine.LabVagrant(lab.root, timeout=120).status()
        info["vagrant"] = ", ".join(f"{s.name}: {s.state}" for s in states)
    return info


def ssh(settings: Settings, command: str | None = None) -> None:
    """An interactive ssh session (or one command) as the admin, with the lab's key and known_hosts."""
    lab = paths.lab_dir(settings.name)
    ep = endpoint(settings)
    argv = ["ssh", "-i", str(lab.private_key), "-p", str(ep.port), "-o", f"UserKnownHostsFile={lab.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", f"{ep.user}@{ep.host}"]
    if command:
        argv[1:1] = ["-o", "BatchMode=yes"]
        argv.append(command)
    os.execvp("ssh", argv)


def destroy(settings: Settings) -> list[str]:
    """Remove the VM, its volumes and its network; safe to run twice and after a failed up."""
    lab = paths.lab_dir(settings.name)
    removed: list[str] = []
    provider = resolve_provider(settings)
    if lab.vagrantfile.exists() and shutil.which("vagrant"):
        if provider == "libvirt":
            libvirt_host.ensure_daemons()
            libvirt_host.delete_snapshots(domain_name(settings))
        with console.step(f"vagrant destroy {domain_name(settings)}", "the VM to be removed"):
            try:
                machine.LabVagrant(lab.root, timeout=300, step="vagrant destroy").destroy()
            except LabError as exc:
                console.info(f"[yellow]vagrant destroy failed ({exc.message}); cleaning up through libvirt[/]")
    if provider == "libvirt" and libvirt_host.reachable():
        removed += libvirt_host.cleanup(domain_name(settings), domain_name(settings))
    shutil.rmtree(lab.root / ".vagrant", ignore_errors=True)
    lab.known_hosts.unlink(missing_ok=True)
    (lab.root / UP_COMPLETE).unlink(missing_ok=True)
    (lab.root / ENDPOINT).unlink(missing_ok=True)
    return removed
