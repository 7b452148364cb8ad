"""The lab's verbs: render, up, reset, status, ssh, destroy, connect. Each takes validated Settings,
acts on .lab/<name>/ under the lab's lock, moves its lifecycle state, and touches only libvirt
objects that carry this lab's owner mark."""

from __future__ import annotations

import contextvars
import fcntl
import hashlib
import json
import secrets
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

from lab.config.settings import CHECKS, Given, Settings, for_lab, from_json, sources
from lab.core import console, paths
from lab.core.errors import LabBusy, LabError, TestbedError, ToolMissing
from lab.core.files import write_files
from lab.core.paths import cache_dir
from lab.core.wait import NotYet, wait_until
from lab.host import accel, agent, libvirt, proc, storage, tools
from lab.images import identity, layer, vm
from lab.images.build import build, cached_box, uses_layers
from lab.machine import ports, state
from lab.machine.phases import PhaseClock
from lab.machine.resolve import provider_of, resolve, use_libvirt
from lab.machine.state import Phase
from lab.machine.vagrant import LabVagrant, box_add, box_names
from lab.remote.keys import ensure_keypair
from lab.remote.port import Ports, PortShell, start_command
from lab.remote.ssh import Endpoint, Jump, Remote
from lab.render.lab import LabFacts, box_provisioned, default_network_octet, provision_plan, render_all
from lab.render.plan import plan

FACTS = "facts.json"
UP_PHASES = "up-phases.json"  # where the last lab.up's time went (lab.bench reads it)
ENDPOINT = "endpoint.json"
GIVEN = "settings-given.json"  # where each key lab.up froze came from (lab.toml, LAB_X, --flag)
# What fixes change and a baseline must not carry: PAM and sudo configuration, lingering users, the
# users' own cgroups under /sys/fs/cgroup; one sha256 over all of it, taken at the snapshot. Not the
# user@UID.service cgroups (cgroup v2 delegates them to the user): systemd starts one at a login
# and stops it ~10 s after the last logout (Vagrant's own login at up included), so they come and
# go on their own after a revert; lingering, which keeps one, is in the linger files.
FINGERPRINT_SCRIPT = ("cd / && { find etc/pam.d etc/sudoers.d etc/security var/lib/systemd/linger -xdev "
                      "-type f -print0 2>/dev/null | sort -z | xargs -0 sha256sum; find sys/fs/cgroup -maxdepth 3 "
                      "-type d -uid +999 ! -name \"user@*.service\" 2>/dev/null | sort; } | sha256sum | cut -c1-16")
FINGERPRINT = "sudo sh -c " + shlex.quote(FINGERPRINT_SCRIPT)  # as the admin, over SSH

def domain_name(settings: Settings) -> str:
    """The libvirt domain of the lab: lab-<name> (libvirt domain names are global on a host)."""
    return f"lab-{settings.name}"


def box_for(settings: Settings) -> tuple[str, str]:
    """(vagrant box name, box file path or '') for the lab: a local .box, a named box, or the cache."""
    if settings.box.endswith(".box"):
        path = Path(settings.box)
        digest = hashlib.sha256(f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode()).hexdigest()
        return f"cgroup-lab/local-{settings.target}-{digest[:12]}", str(path)
    if settings.box:
        return settings.box, ""
    if uses_layers(resolve(settings)):  # no Vagrant box: the VM starts from the scenario's image (lab.images)
        return f"cgroup-lab/{settings.scenario_data.id}-{settings.target}", ""
    box = cached_box(resolve(settings))
    return box.name, str(box.path)


def facts_for(settings: Settings, lab: paths.LabDir, provider: str, probe_network: bool) -> LabFacts:
    """The lab's facts: its key (made once), box, accelerator, a free /24 (probed when asked)."""
    public_key = ensure_keypair(lab.private_key, lab.public_key, f"cgroup-lab-{settings.name}")
    box_name, box_url = box_for(settings)
    octet = default_network_octet(settings.name)
    if probe_network and provider == "libvirt":
        octet = libvirt.pick_octet(octet, domain_name(settings), _saved_octet(lab))
    host = libvirt.current()
    driver = accel.libvirt_driver(host.access) if provider == "libvirt" and probe_network else "qemu"
    return LabFacts(provider=provider, libvirt_driver=driver, box_name=box_name, box_url=box_url,
                    public_key=public_key, network_octet=octet, owner=libvirt.owner_mark(lab.root),
                    box_provisioned=provider == "libvirt" and box_provisioned(resolve(settings)),
                    private_key_path=str(lab.private_key.resolve()),
                    libvirt_uri=host.libvirt_uri, ssh_proxy=host.access.proxy_command if host.access else "")


def load_facts(lab: paths.LabDir) -> LabFacts:
    """The facts lab.up rendered the lab with (provider, box, network), as it saved them."""
    try:
        return LabFacts(**json.loads((lab.root / FACTS).read_text()))
    except FileNotFoundError:
        raise LabError(f"lab {lab.name} has not been rendered ({lab.root / FACTS} is missing)",
                       hint="run: invoke lab.up") from None
    except (ValueError, TypeError) as exc:
        raise TestbedError(f"{lab.root / FACTS} is damaged ({exc})",
                           hint=f"next: invoke lab.destroy --name {lab.name}, then lab.up") from None


def _saved_octet(lab: paths.LabDir) -> int | None:
    try:
        return load_facts(lab).network_octet
    except LabError:
        return None


def render_lab(settings: Settings, out: Path | None = None, probe_network: bool = False) -> Path:
    """Write the Vagrantfile, the provisioning scripts and the scenario's scripts into out (default
    .lab/<name>/); start nothing."""
    lab = paths.LabDir(out) if out else paths.lab_dir(settings.name)
    use_libvirt(settings)
    provider = provider_of(settings)
    facts = facts_for(settings, lab, provider, probe_network)
    resolved = resolve(settings)
    files = render_all(resolved, facts)
    files.update(plan(resolved, facts).scripts)
    files["settings.json"] = settings.to_json() + "\n"
    files[FACTS] = json.dumps(facts.__dict__, indent=2, sort_keys=True) + "\n"
    write_files(lab.root, files)
    return lab.root


def load_lab(name: str | None = None, project_dir: Path | None = None, now: Given | None = None,
             refuse: bool = True) -> Settings:
    """The settings lab.up froze for this lab (default: the one brought up last), with the run-time
    keys given now applied (settings.for_lab: a VM key given now with another value is refused,
    FrozenSetting, unless refuse is False). Raises LabError when the lab was not brought up here
    or its settings.json is damaged."""
    name = name or paths.current_name(project_dir)
    lab = paths.lab_dir(name, project_dir)
    try:
        text = lab.settings_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LabError(f"lab {name!r} has not been brought up here ({lab.settings_file} is missing)",
                       hint="run: invoke lab.up with the same --target/--scenario (or --name)") from None
    frozen = from_json(text, str(lab.settings_file))
    return for_lab(frozen, now, refuse, given_at_up(name, project_dir)) if now else frozen


def given_at_up(name: str, project_dir: Path | None = None) -> dict[str, str] | None:
    """Where each key lab.up froze came from (settings.sources(): lab.toml, LAB_X, --flag), as
    lab.up recorded it in .lab/<name>/settings-given.json; None when it did not (an older lab)."""
    try:
        raw = json.loads((paths.lab_dir(name, project_dir).root / GIVEN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else None


def hold_settings(name: str, now: Given) -> bool:
    """At lab.up, before anything: a lab that is up refuses a VM key given now with another value
    than it was brought up with (FrozenSetting, exit 2; settings.frozen_changes). Returns whether
    the lab was up (its settings stay as they were frozen)."""
    st, _ = state.peek(paths.lab_dir(name))
    if st is None or st.phase not in state.READY:
        return False
    try:
        frozen = load_lab(name)
    except LabError:
        return True
    for_lab(frozen, now, at_up=given_at_up(name))
    return True


def record_given(name: str, now: Given) -> None:
    """After lab.up brought a lab up: where each key given came from (settings.sources), for the
    commands to come (frozen_changes holds a value only against one from as strong a place)."""
    write_files(paths.lab_dir(name).root, {GIVEN: json.dumps(sources(now), indent=2, sort_keys=True) + "\n"})


def salvage_lab(name: str, fallback: Settings, set_aside: bool) -> tuple[Settings, list[str]]:
    """The lab's settings for lab.destroy and lab.status, which must work whatever state the lab is
    in: what lab.up saved when it loads; else fallback (lab.toml, LAB_*) named after the lab, with
    whatever of the saved target, provider and libvirt host still reads. A settings.json that is not
    JSON is moved aside when set_aside (state.set_aside). Returns (settings, notes on what was wrong)."""
    lab = paths.lab_dir(name)
    try:
        return load_lab(name), []
    except LabError as exc:
        problem = exc.message
    raw: object = {}
    try:
        raw = json.loads(lab.settings_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        raw = None
    if not isinstance(raw, dict):
        raw = {}
        if set_aside:
            problem += f"; moved it aside to {state.set_aside(lab.settings_file, problem)}"
    kept: dict[str, object] = {"name": name}
    for key in ("target", "provider", "libvirt_uri", "libvirt_timeout"):
        with suppress(LabError, KeyError):
            kept[key] = CHECKS[key](key, raw[key], str(lab.settings_file))
    return replace(fallback, **kept), [problem]  # type: ignore[arg-type]


def require_provider(provider: str, vagrant: bool = True) -> None:
    """The provider's tools are there and libvirt answers (started by hand without systemd).
    vagrant False: the lab starts from an image with virsh alone (no `vagrant plugin list`, which
    starts Ruby for ~1 s)."""
    if provider == "libvirt":
        tools.require(*(("vagrant", "virsh") if vagrant else ("virsh",)))
        if vagrant:
            out = proc.run([tools.vagrant_exe(), "plugin", "list"], step="vagrant plugin list", timeout=120).output
            if "vagrant-libvirt" not in out:
                raise ToolMissing("the vagrant-libvirt plugin is missing", hint=tools.hint("vagrant-libvirt"))
        libvirt.ensure_daemons()
        libvirt.ensure_pool()
    else:
        tools.require("VBoxManage")


def _vagrant(lab: paths.LabDir, timeout: float, waiting: str, on_line=None) -> LabVagrant:  # type: ignore[no-untyped-def]
    return LabVagrant(lab.root, timeout=timeout, on_line=on_line, step=waiting)


def _claim(settings: Settings, lab: paths.LabDir, provider: str) -> None:
    """Refuse, before any work, a domain of this name that another checkout or something else owns."""
    if provider != "libvirt":
        return
    mark = libvirt.domain_owner(domain_name(settings))
    if mark is not None and mark != libvirt.owner_mark(lab.root):
        raise LabError(f"the libvirt domain {domain_name(settings)} belongs to someone else "
                       f"({mark or 'no cgroup-lab owner mark'}); not touching it",
                       hint="give this lab another name: --name NAME")


def up(settings: Settings, verbose: bool = False, force_build: bool = False, keep_failing: bool = False) -> None:
    """Bring the lab to `provisioned`: build what it starts from if needed, start it (from the
    scenario's saved image state on the Debian targets; vagrant up and provisioning otherwise),
    take the baseline snapshot once. A lab that is already provisioned is only checked, never
    re-provisioned or re-snapshotted. keep_failing: a build VM whose provisioning script failed
    stays running (lab.destroy removes it). Raises LabBusy, LabError, TestbedError."""
    lab = paths.lab_dir(settings.name)
    use_libvirt(settings)
    if provider_of(settings) != "libvirt":
        tools.require("VBoxManage")
    else:
        tools.require(*(("virsh",) if uses_layers(resolve(settings)) else ("vagrant", "virsh")))
    with state.locked(lab, "up"):
        _up(settings, lab, verbose, force_build, keep_failing)


def _up(settings: Settings, lab: paths.LabDir, verbose: bool, force_build: bool, keep_failing: bool) -> None:
    target = settings.target_data
    provider = provider_of(settings)
    if provider not in target.providers:
        raise LabError(f"target {target.name} has no {provider} box",
                       hint=f"use provider: {', '.join(target.providers)}")
    require_provider(provider, vagrant=not uses_layers(resolve(settings)))
    _claim(settings, lab, provider)
    st = state.read(lab)
    domain = domain_name(settings)
    if st.phase in state.READY and provider == "libvirt":
        running = libvirt.domain_state(domain)
        if running != "not created":
            _bring_back(settings, lab, running, st.baseline_at)
            return
        console.info(f"lab {settings.name} was provisioned but its VM is gone: starting over")
    built = (build(resolve(settings), force=force_build, verbose=verbose, keep_failing=keep_failing)
             if not settings.box else None)
    paths.remember_current(settings.name)
    if st.phase == Phase.UP or (provider == "libvirt" and libvirt.domain_owner(domain) is not None):
        console.info("an earlier lab.up of this lab did not finish: removing what it left, then starting over")
        _remove(settings, lab, provider)
    clock = PhaseClock()
    if isinstance(built, layer.Layer):
        _left_on_failure(settings, provider, lambda: _up_from_layer(settings, lab, built, clock))
        return
    with _network_lock(settings):
        render_lab(settings, probe_network=True)
        facts = load_facts(lab)
        if provider == "libvirt" and libvirt.ensure_network(domain, facts.network_octet):
            console.info(f"network {domain}: 192.168.{facts.network_octet}.0/24, isolated, spanning tree off")
    state.advance(lab, Phase.RENDERED, "up")
    clock.mark("lab: render and network")
    if (settings.box.endswith(".box") or not settings.box) and facts.box_name not in box_names():
        with console.step(f"vagrant box add {facts.box_name}", "the box to be unpacked", verbose) as out:
            box_add(facts.box_name, Path(facts.box_url), timeout=900, on_line=out)
    state.advance(lab, Phase.UP, "up")
    clock.mark("vagrant: box add (first time only)")
    _left_on_failure(settings, provider, lambda: _boot_and_provision(settings, lab, provider, facts, verbose, clock))
    with console.step("SSH as the admin with the lab's key", "sshd in the guest", verbose), \
            connect(settings, refresh=True, connect_timeout=settings.ssh_timeout) as remote:
        result = remote.run("id -un; uname -r", step="first login")
        if result.failed:
            raise TestbedError(f"logging in as the admin failed: {result.stderr.strip()}")
        kernel = result.stdout.split()[-1]
        clock.mark("lab: first SSH login as the admin")
        taken = ""
        if provider == "libvirt":
            _settle(remote, settings, verbose)
            clock.mark("guest: rest of the boot (is-system-running --wait)")
            shells = _start_port_shells(settings, lab, remote, domain, verbose)
            clock.mark("lab: port shells")
            try:
                taken = _take_baseline(settings, lab, remote, verbose, clock)
            finally:
                if shells is not None:
                    shells.close()
    state.advance(lab, Phase.PROVISIONED, "up", baseline_at=taken)
    clock.save(lab.root / UP_PHASES)
    console.info(f"[green]✓[/] lab {settings.name} is up: {kernel} kernel; next: invoke lab.verify")


def _left_on_failure(settings: Settings, provider: str, start: Callable[[], None]) -> None:
    """Run start(); when it fails, say what it left (the next lab.up cleans it up) and re-raise."""
    try:
        start()
    except BaseException:
        domain = domain_name(settings)
        try:
            left = libvirt.domain_state(domain) if provider == "libvirt" else "its state unknown"
        except LabError as exc:  # said, and the failure that ended the up goes on up
            left = f"its state unknown: {exc.message}"
        what = "nothing" if left == "not created" else f"domain {domain} ({left})"
        console.info(f"[yellow]lab.up did not finish; it left: {what}. The next lab.up cleans it up and starts "
                     f"over; lab.destroy removes it.[/]")
        raise


def _take_baseline(settings: Settings, lab: paths.LabDir, remote: Remote, verbose: bool, clock: PhaseClock) -> str:
    """The baseline: its fingerprint, then an internal snapshot (disk and memory) taken while the
    admin's SSH session is open, so the baseline has the admin logged in (the scenario's premise)
    with a running user manager and a lab.verify after lab.reset does not wait for one to start.
    Returns when it was taken."""
    fingerprint = remote.run(FINGERPRINT, step="baseline fingerprint").stdout.strip()
    mark = remote.run(f"sudo sh -c {shlex.quote(baseline_mark_script(secrets.token_hex(8)))}",
                      step="baseline mark").stdout.strip()
    clock.mark("lab: baseline fingerprint and mark")
    return _snapshot_baseline(settings, lab, fingerprint, verbose, clock, mark=mark)


def _snapshot_baseline(settings: Settings, lab: paths.LabDir, fingerprint: str, verbose: bool,
                       clock: PhaseClock, mark: str = "") -> str:
    """Snapshot the running VM as its baseline (the caller's SSH session open) and record the
    fingerprint and the baseline mark (BaselineMark.line) taken with it; returns when."""
    with console.step("snapshot of the provisioned VM (the baseline for lab.reset)",
                      "libvirt to save disk and memory", verbose):
        libvirt.snapshot_baseline(domain_name(settings))
    clock.mark("libvirt: baseline snapshot")
    write_files(lab.root, {"baseline.fingerprint": fingerprint + "\n",
                           **({BASELINE_MARK: mark + "\n"} if mark else {})})
    return state.now()


BASELINE_MARK = "baseline.mark"  # the token and the guest's uptime written into the VM at the snapshot
MARK_FILE = "/run/cgroup-lab/baseline"  # tmpfs: in the snapshot's RAM, gone at a reboot
MARK_SLACK_S = 120.0  # seconds of guest time a revert may be past the mark (the login after it on TCG)


def baseline_mark_script(token: str) -> str:
    """As root: write the token into the guest's RAM (MARK_FILE) and print it with the guest's
    uptime ("TOKEN SECONDS"), right before the baseline snapshot."""
    return (f"mkdir -p /run/cgroup-lab && printf '%s\\n' {shlex.quote(token)} > {MARK_FILE} && "
            f"read -r up _ < /proc/uptime && printf '%s %s\\n' {shlex.quote(token)} \"$up\"")


READ_MARK = (f"if read -r token < {MARK_FILE} 2>/dev/null; then read -r up _ < /proc/uptime; "
             "printf '%s %s\\n' \"$token\" \"$up\"; else echo none; fi")  # builtins only: no process


def mark_proves_baseline(recorded: str, now: str) -> str:
    """'' when `now` (READ_MARK's output after a revert) proves the guest runs the snapshot's RAM:
    the token written just before the snapshot, and a guest uptime at most MARK_SLACK_S past the
    one then (the guest's clock resumes from the snapshot: a later snapshot, or a VM that was not
    reverted, is further on). Else why not."""
    try:
        token, taken = recorded.split()
        got, up = now.split()
        later = float(up) - float(taken)
    except ValueError:
        return f"no baseline mark in the guest ({now.strip() or 'nothing'})"
    if got != token:
        return "the guest carries another baseline mark: another snapshot was restored"
    if not 0 <= later <= MARK_SLACK_S:
        return f"the guest's clock is {later:.0f}s past the snapshot's: it was not restored from it"
    return ""


LAB_ADDRESS_HOST = 2  # a lab started from an image has 192.168.<octet>.2


def _up_from_layer(settings: Settings, lab: paths.LabDir, image: layer.Layer, clock: PhaseClock) -> None:
    """Start the lab from its layer's saved state: its own network (the DHCP server reserves the
    lab's address for the image's MAC), its own disk (a qcow2 overlay on the layer), a copy of the
    state restored under the lab's name, then the lab's identity through the guest agent (its key,
    hostname, a new SSH host key pinned in its known_hosts, its address, the clock), Vagrant's
    machine id, the admin's first login, the baseline. Every second is marked on `clock`."""
    domain = domain_name(settings)
    # The state's copy (the slow part of the start) while the lab's files, network and disk are made
    with ThreadPoolExecutor(max_workers=1) as pool:
        staging = pool.submit(contextvars.copy_context().run, vm.stage_state, image.state_volume, name=domain,
                              description=libvirt.owner_mark(lab.root), disk=storage.path(f"{domain}.qcow2"),
                              network=domain, serial_log="", timeout=settings.boot_timeout)
        try:
            with _network_lock(settings):
                render_lab(settings, probe_network=True)
                facts = load_facts(lab)
                address = f"192.168.{facts.network_octet}.{LAB_ADDRESS_HOST}"
                libvirt.ensure_network(domain, facts.network_octet, reserve=(image.mac, address))
            state.advance(lab, Phase.RENDERED, "up")
            clock.mark("lab: render and network (the saved state copied beside them)")
            state.advance(lab, Phase.UP, "up")
            storage.create_overlay(f"{domain}.qcow2", storage.path(image.disk_volume), vm.disk_capacity())
            clock.mark("libvirt: the lab's disk (an overlay on the layer)")
        except BaseException:
            with suppress(Exception):  # the copy, when it was made: what stopped the start is said, not this
                storage.delete_file(staging.result().copy_path)
            raise
        staged = staging.result()
    with console.step(f"start {domain} from the saved state of {settings.scenario_data.id} on {settings.target}",
                      "libvirt to restore it (~1 s)", usual_s=5):
        vm.start_staged(staged, persistent=True, timeout=settings.boot_timeout)
    clock.mark("libvirt: start from the saved state (define, restore)")
    with console.step("the lab's identity through the guest agent (key, host key, hostname, address, clock)",
                      "the guest agent", usual_s=5):
        host_key = identity.hand_over(domain, identity.Identity(
            hostname=settings.name, public_key=facts.public_key, address=address,
            gateway=f"192.168.{facts.network_octet}.1"), timeout=settings.boot_timeout)
    identity.pin(lab.known_hosts, address, host_key)
    write_files(lab.root, {ENDPOINT: json.dumps({"host": address, "port": 22}) + "\n"})
    _write_vagrant_id(lab, domain)
    clock.mark("guest agent: the lab's identity")
    kernel, taken = _login_and_baseline(settings, lab, domain, clock)
    state.advance(lab, Phase.PROVISIONED, "up", baseline_at=taken)
    clock.save(lab.root / UP_PHASES)
    console.info(f"[green]✓[/] lab {settings.name} is up: {kernel} kernel, {address}, started from the "
                 f"saved state in {clock.as_dict()['total_s']:.1f}s; next: invoke lab.verify")


def _login_and_baseline(settings: Settings, lab: paths.LabDir, domain: str, clock: PhaseClock) -> tuple[str, str]:
    """The admin's first SSH login into the restored lab, which also starts the port shells (the
    layer gave the admin its ports, so no sudo chown), their proof, then the baseline snapshot with
    the login open. The baseline's fingerprint and mark go through the agent beside the login (the
    guest has two vCPUs; the login mostly waits for logind and systemd). Returns (the guest's
    kernel release, when the baseline was taken). Raises TestbedError when the login or the
    fingerprint fails; port shells that do not answer leave a lab without them (said in yellow)."""
    admin = settings.scenario_data.model.users.admin
    with ThreadPoolExecutor(max_workers=1) as pool, \
            console.step("SSH as the admin with the lab's key (host key pinned), the port shells; the baseline's "
                         "fingerprint", "sshd in the guest", usual_s=5), \
            connect(settings, connect_timeout=settings.ssh_timeout) as remote:
        token = secrets.token_hex(8)
        fingerprinted = pool.submit(contextvars.copy_context().run, agent.run, domain,
                                    f"{FINGERPRINT_SCRIPT}; {baseline_mark_script(token)}", settings.command_timeout)
        shells = _open_ports(settings, lab, remote, domain)
        try:
            # the shells first (root's sudo is the longest wait), then who logged in and the kernel (a builtin)
            first = ((f"{start_command(admin, chown=False)} && " if shells is not None else "")
                     + "id -un && read -r kernel < /proc/sys/kernel/osrelease && echo \"$kernel\"")
            result = remote.run(first, step="first login")
            if result.failed or len(result.stdout.split()) != 2:
                raise TestbedError(f"logging in as the admin failed: {result.stderr.strip() or result.stdout.strip()}")
            clock.mark("lab: first SSH login as the admin (it starts the port shells)")
            if shells is not None and not _prove_port_shells(settings, lab, shells):
                shells.close()
                shells = None
            clock.mark("lab: port shells answer")
            marked = fingerprinted.result()
            lines = marked.stdout.split("\n")
            if marked.failed or len(lines) < 2 or not lines[0].strip():
                raise TestbedError(f"the baseline's fingerprint failed in the guest: {marked.stderr.strip()[-200:]}")
            clock.mark("lab: baseline fingerprint and mark (through the agent, beside the login)")
            taken = _snapshot_baseline(settings, lab, lines[0].strip(), False, clock, mark=lines[1].strip())
        finally:
            if shells is not None:
                shells.close()
    return result.stdout.split()[1], taken


def _write_vagrant_id(lab: paths.LabDir, domain: str) -> None:
    """Vagrant's machine id for the domain lab.up defined (vagrant-libvirt looks the domain up by
    this UUID), so `vagrant status`, `vagrant ssh`, `vagrant destroy` in the lab's folder act on it."""
    uuid = libvirt.domain_uuid(domain)
    if uuid:
        write_files(lab.root, {f".vagrant/machines/{domain}/libvirt/id": uuid})


def _bring_back(settings: Settings, lab: paths.LabDir, running: str, baseline_at: str) -> None:
    """lab.up of a provisioned lab whose domain exists: repair what can be repaired (its network,
    gone or stopped, is defined and started again; said), then check SSH. A VM that is not running,
    had lost its network or does not answer is restarted from its baseline snapshot (said): a
    restarted QEMU plugs the guest into the network again. Raises TestbedError when that fails."""
    domain = domain_name(settings)
    restart = running != "running"
    with _network_lock(settings):
        active = libvirt.network_active(domain)
        if not active:
            octet = load_facts(lab).network_octet
            libvirt.ensure_network(domain, octet)
            console.info(f"[yellow]the lab's network {domain} was {'gone' if active is None else 'stopped'}: "
                         f"{'defined it again' if active is None else 'started it'} (192.168.{octet}.0/24)[/]")
            restart = True  # the guest's port was on the old bridge
    if not restart:
        try:
            with console.step(f"lab {settings.name} is already up (baseline of {baseline_at}); checking SSH",
                              "sshd in the guest"), connect(settings, connect_timeout=settings.reach_timeout):
                pass
            paths.remember_current(settings.name)
            console.info(f"[green]✓[/] lab {settings.name} is up and answers; nothing re-provisioned. "
                         "next: invoke lab.verify (or lab.reset for the baseline)")
            return
        except TestbedError as exc:
            console.info(f"[yellow]{exc.message}[/]")
    console.info(f"lab {settings.name} is {running}: restarting it from its baseline snapshot")
    if running == "running":
        libvirt.restart_baseline(domain)
    else:
        libvirt.revert_baseline(domain)
    with connect(settings, connect_timeout=settings.ssh_timeout):
        pass
    paths.remember_current(settings.name)
    console.info(f"[green]✓[/] lab {settings.name} is up again at its baseline")


def _start_port_shells(settings: Settings, lab: paths.LabDir, remote: Remote, domain: str,
                       verbose: bool) -> Ports | None:
    """Start the admin's and root's port shells (lab.remote.port) before the baseline snapshot; the
    connected host ends, to keep open until the snapshot is taken. A lab whose port shells cannot be
    started still comes up (each revert then logs in over SSH again, ~3-8 s instead of ~0.5 s): said
    in yellow, with why."""
    opened = _open_ports(settings, lab, remote, domain)
    if opened is None:
        return None
    try:
        with console.step("the port shells (the admin's and root's shells that survive a revert)",
                          "the shells to answer on their virtio-serial ports", verbose):
            ports.start(remote, opened, settings.scenario_data.model.users.admin, lab.root,
                        timeout=settings.ssh_timeout)
        return opened
    except TestbedError as exc:
        opened.close()
        console.info(f"[yellow]no port shells in this lab ({exc.message}): each revert logs in over SSH again[/]")
        return None


def _open_ports(settings: Settings, lab: paths.LabDir, remote: Remote, domain: str) -> Ports | None:
    """The host ends of the lab's ports, connected (the lab's marker of having port shells removed
    until they are proven); None, said in yellow, when they cannot be reached."""
    (lab.root / ports.MARKER).unlink(missing_ok=True)
    try:
        return ports.open_ports(domain, remote, timeout=settings.libvirt_timeout)
    except TestbedError as exc:
        console.info(f"[yellow]no port shells in this lab ({exc.message}): each revert logs in over SSH again[/]")
        return None


def _prove_port_shells(settings: Settings, lab: paths.LabDir, opened: Ports) -> bool:
    """Whether the port shells the admin's first command started answer (ports.prove); when they do
    not, the lab still comes up without them: said in yellow, with why."""
    try:
        ports.prove(opened, settings.scenario_data.model.users.admin, lab.root, timeout=settings.ssh_timeout)
        return True
    except TestbedError as exc:
        console.info(f"[yellow]no port shells in this lab ({exc.message}): each revert logs in over SSH again[/]")
        return False


def _settle(remote: Remote, settings: Settings, verbose: bool) -> None:
    """Wait until the guest's boot has finished (systemd's job queue is empty: lingering users'
    managers and the scenario's services have started) so the baseline snapshot holds a settled
    system; a degraded boot is reported with its failed units, not hidden."""
    wait = f"timeout {int(settings.boot_timeout)} systemctl is-system-running --wait"
    with console.step("the guest's boot to finish (systemctl is-system-running --wait)", "systemd in the guest",
                      verbose):
        result = remote.run(f"command -v systemctl >/dev/null || {{ echo no-systemd; exit 0; }}; {wait}",
                            step="boot finished", timeout=settings.boot_timeout + 30)
    status = result.stdout.strip().splitlines()[-1:] or ["?"]
    if status[0] == "degraded":
        failed = remote.run("systemctl --failed --no-legend --plain | cut -d' ' -f1", step="failed units")
        console.info(f"[yellow]the guest booted degraded; failed units: {' '.join(failed.stdout.split())}[/]")
    elif status[0] not in ("running", "no-systemd"):
        raise TestbedError(f"the guest's boot did not finish: systemctl is-system-running says {status[0]!r}",
                           hint="look inside with: invoke lab.ssh; raise boot_timeout if it is just slow")


@contextmanager
def _network_lock(settings: Settings) -> Iterator[None]:
    """Host-wide, while a lab picks its free /24 and defines its network, so labs brought up at
    once (lab.matrix --jobs, two checkouts) never pick the same one. Waits at most ssh_timeout."""
    path = cache_dir() / "network.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        def take() -> bool:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                raise NotYet(f"{path} held by another lab.up") from None

        wait_until(f"another lab.up to release {path}", take, settings.ssh_timeout, interval=0.2,
                   error=LabBusy, hint="is a lab.up hung? see: ps; raise ssh_timeout")
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _boot_and_provision(settings: Settings, lab: paths.LabDir, provider: str, facts: LabFacts,
                        verbose: bool, clock: PhaseClock) -> None:
    """vagrant up and the provisioning stages (a box lab.build did not provision: trusty, or a box
    the user named), with a reload after a stage that asks for one."""
    up_timeout = settings.boot_timeout + 1800
    stages = provision_plan(resolve(settings))
    for i, (stage, reboot, scripts) in enumerate(stages):
        names = [s.id for s in scripts]
        if i == 0:
            title = f"vagrant up {domain_name(settings)} ({provider}, {facts.libvirt_driver}), provision {stage}"
            waiting = "the boot (~1 min on TCG), SSH and provisioning"
            if provider == "libvirt" and facts.box_name not in libvirt.box_volumes():
                waiting = "the box upload into libvirt's pool (first time only, ~1 min), " + waiting
            with console.step(title, waiting, verbose) as out:
                _vagrant(lab, up_timeout, waiting, clock.wrap(out)).up(provider=provider, provision_with=names)
            clock.mark("vagrant: provisioning and exit")
        else:
            waiting = "the reboot into the new kernel, SSH and provisioning"
            with console.step(f"vagrant reload, provision {stage}", waiting, verbose) as out:
                _vagrant(lab, up_timeout, waiting, out).reload(provision_with=names)
        if reboot and i == len(stages) - 1:
            with console.step("vagrant reload", "the reboot", verbose) as out:
                _vagrant(lab, up_timeout, "the reboot", out).reload(provision=False)


def require_running(settings: Settings) -> None:
    """Before connecting, and whenever the guest falls silent: libvirt says the domain runs and every
    network its interfaces use is there and active; else a TestbedError in seconds naming what is
    wrong and the next command (instead of waiting out the SSH timeout)."""
    if provider_of(settings) != "libvirt":
        return
    use_libvirt(settings)
    libvirt.ensure_daemons()
    domain = domain_name(settings)
    now = libvirt.domain_state(domain)
    if now != "running":
        raise TestbedError(f"the VM of lab {settings.name} ({domain}) is {now}",
                           hint="next: invoke lab.up" + (" (it restores the baseline)" if now != "not created" else ""))
    xml = libvirt.domain_xml(domain)
    for network in sorted(libvirt.domain_networks(xml) if xml is not None else ()):
        active = libvirt.network_active(network)
        if not active:
            raise TestbedError(f"the VM of lab {settings.name} ({domain}) runs, but its libvirt network {network} "
                               f"is {'gone' if active is None else 'stopped'}: the guest cannot be reached",
                               hint=f"next: invoke lab.up --name {settings.name} (defines the network again and "
                                    "restarts the VM from its baseline snapshot)")


@dataclass(frozen=True)
class ResetResult:
    """What lab.reset did, measured: how the revert ran (libvirt.revert_baseline's answer:
    "loadvm" in the running QEMU, or "snapshot-revert"), how the baseline was proven, and seconds
    for the revert, for the first SSH command after it, for the proof after that, and in all."""

    method: str
    revert_s: float
    first_command_s: float
    fingerprint_s: float
    seconds: float
    proof: str = "fingerprint"  # how the baseline was proven: "mark" (READ_MARK) or "fingerprint"
    via: str = "SSH"  # where the first command after the revert ran: "port shell" or "SSH"


@dataclass(frozen=True)
class AtBaseline:
    """The lab's VM at its baseline and a connected Remote (see back_to_baseline); method: how the
    revert ran; revert_s, login_s: seconds for the revert and for the first SSH command after it;
    mark: what that command read (READ_MARK: the baseline's token and the guest's uptime)."""

    remote: Remote
    method: str
    revert_s: float
    login_s: float
    mark: str


def back_to_baseline(settings: Settings, timeout: float | None = None) -> AtBaseline:
    """Revert the lab's VM to its baseline snapshot and log in as the admin.

    Contract: on return the VM is exactly its baseline (disk and memory as lab.up snapshotted them,
    the admin's session and user manager included; nothing of any earlier try survives, since the
    guest's RAM and disk are the snapshot's), and the returned Remote is connected and has already
    run one command (READ_MARK, shell builtins only: it reads back the mark lab.up wrote into the
    guest's RAM at the snapshot, which mark_proves_baseline checks), so the caller's next command
    runs at once. The caller closes the Remote. The engine calls this before every try. Raises
    LabError without a baseline snapshot, TestbedError when the guest does not answer SSH within
    `timeout` (default ssh_timeout). Measured on TCG: loadvm 0.3-0.6 s, the login after it
    0.8-2.5 s depending on the host's load (lab.bench prints both)."""
    started = time.monotonic()
    method = libvirt.revert_baseline(domain_name(settings))
    reverted = time.monotonic()
    remote = connect(settings, connect_timeout=timeout or settings.ssh_timeout)
    try:
        remote.connect()
        mark = remote.run(READ_MARK, step="first command after the revert").stdout.strip()
    except BaseException:
        remote.close()
        raise
    return AtBaseline(remote=remote, method=method, revert_s=reverted - started,
                      login_s=time.monotonic() - reverted, mark=mark)


def reset(settings: Settings) -> ResetResult:
    """Back to the freshly provisioned VM through its baseline snapshot, proven by the mark lab.up
    wrote into the guest's RAM at the snapshot (or, for a lab without one, by the baseline's
    fingerprint): read in the admin's port shell, which waits in the snapshot (no new login), or
    over a new SSH login for a lab without port shells. Returns what it did and how long each part
    took."""
    lab = paths.lab_dir(settings.name)
    use_libvirt(settings)
    with state.locked(lab, "reset"):
        if provider_of(settings) != "libvirt":
            raise LabError("lab.reset needs the libvirt provider", hint="use: invoke lab.destroy lab.up")
        state.require(lab, "reset", *state.READY)
        libvirt.ensure_daemons()
        _claim(settings, lab, "libvirt")
        recorded = _read(lab.root / BASELINE_MARK)
        proof = "mark" if recorded else "fingerprint"
        started = time.monotonic()
        if ports.has_port_shells(lab.root):
            shells = ports.open_ports(domain_name(settings), connect(settings), timeout=settings.libvirt_timeout)
            try:
                with console.step(f"revert {domain_name(settings)} to its baseline snapshot; the admin's port shell",
                                  "QEMU to load disk and memory, then the shell waiting in the snapshot"):
                    method = libvirt.revert_baseline(domain_name(settings))
                    reverted = time.monotonic()
                    shell = PortShell(shells, as_root=False, user=settings.scenario_data.model.users.admin,
                                      label=f"lab {settings.name}")
                    now = shell.run(READ_MARK if recorded else FINGERPRINT, step="the baseline's proof",
                                    timeout=settings.command_timeout).stdout.strip()
                    answered = time.monotonic()
            finally:
                shells.close()
            revert_s, first_s, via = reverted - started, answered - reverted, "port shell"
        else:
            with console.step(f"revert {domain_name(settings)} to its baseline snapshot; SSH as the admin",
                              "QEMU to load disk and memory, then sshd in the guest"):
                at = back_to_baseline(settings)
                try:
                    answered = time.monotonic()
                    now = at.mark if recorded else \
                        at.remote.run(FINGERPRINT, step="baseline fingerprint").stdout.strip()
                finally:
                    at.remote.close()
            method, revert_s, first_s, via = at.method, at.revert_s, at.login_s, "SSH"
        done = time.monotonic()
        if recorded:
            why = mark_proves_baseline(recorded, now)
            if why:
                raise TestbedError(f"after the revert, lab {lab.name} is not the baseline that lab.up took: {why}",
                                   hint="start over: invoke lab.destroy lab.up")
        else:
            prove_baseline(lab, now)
        state.advance(lab, Phase.PROVISIONED, "reset")
        return ResetResult(method=method, revert_s=revert_s, first_command_s=first_s, fingerprint_s=done - answered,
                           seconds=done - started, proof=proof, via=via)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def prove_baseline(lab: paths.LabDir, now: str) -> None:
    """The reverted guest must carry the fingerprint taken with the snapshot (`now`: the FINGERPRINT
    command's output); else TestbedError: it is no baseline."""
    try:
        want = (lab.root / "baseline.fingerprint").read_text().strip()
    except FileNotFoundError:
        console.info("[yellow]no baseline fingerprint recorded (a lab from an older version): not proven[/]")
        return
    if now != want:
        raise TestbedError(f"after the revert, lab {lab.name} is not the baseline that lab.up provisioned "
                           f"(fingerprint {now or 'none'}, expected {want}): the snapshot was changed",
                           hint="start over: invoke lab.destroy lab.up")


def endpoint(settings: Settings, refresh: bool = False) -> Endpoint:
    """The guest's SSH address: asked once per up from libvirt's DHCP lease (or `vagrant ssh-config`,
    ~2 s of Ruby start-up, for VirtualBox), then read from .lab/<name>/endpoint.json."""
    lab = paths.lab_dir(settings.name)
    admin = settings.scenario_data.model.users.admin
    saved = lab.root / ENDPOINT
    if not refresh:
        try:
            data = json.loads(saved.read_text())
            return Endpoint(host=str(data["host"]), port=int(data["port"]), user=admin, key_file=lab.private_key,
                            jump=jump_for(settings))
        except (OSError, ValueError, KeyError):
            pass
    if not lab.vagrantfile.exists():
        raise LabError(f"lab {settings.name} has no Vagrantfile", hint="run: invoke lab.up")
    host = (libvirt.guest_address(domain_name(settings), agent=True)
            if provider_of(settings) == "libvirt" else None)
    port = "22"
    if not host:
        conf = LabVagrant(lab.root, timeout=120).conf(vm_name=domain_name(settings))
        host, port = conf.get("HostName"), conf.get("Port", "22")
    if not host:
        raise TestbedError(f"Vagrant knows no address for {domain_name(settings)}",
                           hint="is it running? invoke lab.status")
    write_files(lab.root, {ENDPOINT: json.dumps({"host": host, "port": int(port)}) + "\n"})
    return Endpoint(host=host, port=int(port), user=admin, key_file=lab.private_key, jump=jump_for(settings))


def jump_for(settings: Settings) -> Jump | None:
    """On a remote libvirt host: the SSH jump through it to the guest; else None."""
    access = use_libvirt(settings).access
    if access is None:
        return None
    uri = access.uri
    return Jump(host=uri.host, port=uri.ssh_port, user=uri.user, key_file=Path(uri.keyfile) if uri.keyfile else None,
                known_hosts=access.known_hosts, strict=access.strict, timeout=float(access.timeout), label=uri.text)


def connect(settings: Settings, refresh: bool = False, connect_timeout: float | None = None) -> Remote:
    """A Remote to the lab's admin (not yet connected; use it as a context manager). connect_timeout:
    seconds to wait for sshd, default reach_timeout (a lab that is up answers at once; a boot passes
    ssh_timeout or boot_timeout). While the guest does not answer, require_running() says why when
    libvirt knows; paramiko's log goes to .lab/<name>/lab.log."""
    lab = paths.lab_dir(settings.name)
    return Remote(endpoint(settings, refresh), lab.known_hosts,
                  connect_timeout=connect_timeout or settings.reach_timeout,
                  command_timeout=settings.command_timeout, label=f"lab {settings.name}",
                  diagnose=lambda: require_running(settings), log_file=lab.log,
                  hint=f"next: invoke lab.up --name {settings.name} (restarts the VM from its baseline snapshot); "
                       "raise reach_timeout if the guest is just slow")


def status(settings: Settings) -> dict[str, str]:
    """What the lab is: scenario, target, what its state.json says (phase, baseline), next to what
    libvirt says of its domain and network, and Vagrant's view. Works whatever state the lab is
    in: a damaged state.json, a scenario that no longer loads, libvirt not answering are shown as
    such. Returns {label: value}, in display order."""
    lab = paths.lab_dir(settings.name)
    use_libvirt(settings)
    st, damaged = state.peek(lab)
    try:
        scenario = settings.scenario_data.id
    except LabError as exc:
        scenario = f"{settings.scenario} (does not load: {exc.message})"
    provider = provider_of(settings)
    info = {"lab": settings.name, "scenario": scenario, "target": settings.target, "provider": provider,
            "phase": (f"{st.phase}" + (f" since {st.since} ({st.task})" if st.since else "") if st is not None
                      else f"unknown: {damaged}") + " (its state.json)",
            "baseline": (st.baseline_at or "none") if st is not None else "unknown",
            "dir": str(lab.root), "libvirt": settings.libvirt_uri}
    if provider == "libvirt":
        info["domain"] = _domain_status(settings, lab) + " (libvirt)"
    if lab.vagrantfile.exists() and (lab.root / ".vagrant").exists():
        try:
            states = LabVagrant(lab.root, timeout=120).status()
            info["vagrant"] = ", ".join(f"{s.name}: {s.state}" for s in states)
        except LabError as exc:
            info["vagrant"] = f"does not answer ({exc.message})"
    return info


def _domain_status(settings: Settings, lab: paths.LabDir) -> str:
    """What libvirt says of the lab's domain and its networks, in one line (or why it cannot say)."""
    domain = domain_name(settings)
    ok, why = libvirt.reach()
    if not ok:
        return f"{domain}: unknown, libvirt does not answer ({why})"
    try:
        mark = libvirt.domain_owner(domain)
        if mark is not None and mark != libvirt.owner_mark(lab.root):
            return f"{domain}: belongs to someone else ({mark or 'no owner mark'})"
        now = libvirt.domain_state(domain)
        xml = libvirt.domain_xml(domain, inactive=True)
        nets = []
        for network in sorted(libvirt.domain_networks(xml) if xml is not None else ()):
            active = libvirt.network_active(network)
            nets.append(f"network {network} " + ("active" if active else "gone" if active is None else "stopped"))
        return f"{domain}: {now}" + (f"; {', '.join(nets)}" if nets else "")
    except TestbedError as exc:
        return f"{domain}: unknown ({exc.message})"


def ssh(settings: Settings, command: str | None = None) -> None:
    """An interactive ssh session (or one command) as the admin, with the lab's key and known_hosts."""
    require_running(settings)
    lab = paths.lab_dir(settings.name)
    ep = endpoint(settings)
    argv = ["ssh", "-i", str(lab.private_key), "-p", str(ep.port), "-o", f"UserKnownHostsFile={lab.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", f"{ep.user}@{ep.host}"]
    access = libvirt.current().access
    if access is not None:  # through the libvirt host, with its own host-key file
        argv[1:1] = ["-o", f"ProxyCommand={access.proxy_command}"]
    if command:
        argv[1:1] = ["-o", "BatchMode=yes"]
        argv.append(command)
    proc.exec_(argv)


def destroy(settings: Settings) -> list[str]:
    """Remove the lab's VM, its volumes and its network (only what carries its owner mark); safe
    to run twice, after a failed up, with a damaged state.json (moved aside, said), without
    Vagrant's metadata, with the domain already gone, or with a domain of this name that is not
    ours (left alone, said). Returns what was removed. Raises TestbedError when libvirt fails."""
    lab = paths.lab_dir(settings.name)
    use_libvirt(settings)
    with state.locked(lab, "destroy"):
        _, damaged = state.read_or_set_aside(lab)
        if damaged:
            console.info(f"[yellow]{damaged}[/]")
        removed = _remove(settings, lab, provider_of(settings), destroying=True)
        state.advance(lab, Phase.ABSENT, "destroy")
        return removed


def _remove(settings: Settings, lab: paths.LabDir, provider: str, destroying: bool = False) -> list[str]:
    """Remove what the lab made (vagrant destroy, then libvirt: domain, volume, network) and its
    per-VM files. A domain of this name that is not ours raises LabError, or when destroying is
    left alone (said)."""
    removed: list[str] = []
    domain = domain_name(settings)
    if provider == "libvirt":
        libvirt.ensure_daemons()
        try:
            _claim(settings, lab, provider)
        except LabError as exc:
            if not destroying:
                raise
            console.info(f"[yellow]{exc.message}; only this lab's files are removed[/]")
            provider = "not ours"
        if provider == "libvirt" and libvirt.domain_owner(domain) is not None:
            libvirt.delete_snapshots(domain)
    # A lab started from an image is libvirt's alone (lab.up defined it): libvirt removes it in a
    # second, where `vagrant destroy` spends ~4 s starting Ruby to do the same.
    by_vagrant = provider != "not ours" and not (provider == "libvirt" and uses_layers(resolve(settings)))
    if by_vagrant and lab.vagrantfile.exists() and (lab.root / ".vagrant").exists() and shutil.which("vagrant"):
        with console.step(f"vagrant destroy {domain}", "the VM to be removed"):
            try:
                LabVagrant(lab.root, timeout=300, step="vagrant destroy").destroy()
            except LabError as exc:
                console.info(f"[yellow]vagrant destroy failed ({exc.message}); cleaning up through libvirt[/]")
    if provider == "libvirt":
        removed += libvirt.cleanup(domain, domain, libvirt.owner_mark(lab.root))
        removed += layer.remove_kept(lab.root)
    shutil.rmtree(lab.root / ".vagrant", ignore_errors=True)
    (lab.root / ports.MARKER).unlink(missing_ok=True)
    lab.known_hosts.unlink(missing_ok=True)
    (lab.root / ENDPOINT).unlink(missing_ok=True)
    return removed
