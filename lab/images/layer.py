"""A scenario's layer: its users and provisioning scripts, run into a qcow2 overlay on the target's
base image, and the provisioned VM's running state saved, which every lab of the scenario and
target starts from.

The build starts from the base image's saved state (no boot: ~1 s), hands the build VM a key only
this build has, runs the scripts over SSH as root (each failure named in the scenario's terms:
script, exit code, line, command, output; the whole log in the lab's folder), starts what the
scripts enabled (`systemctl start default.target`, as a boot would), waits for systemd to settle,
clears the build's key and saves the state. Cached by content: the base's state key, the rendered
scripts, the scenario's users and this recipe. An edit of one script rebuilds only this layer.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from lab.core import console, locks
from lab.core.errors import ProvisionFailed, TestbedError
from lab.core.files import write_files
from lab.host import agent, libvirt, storage
from lab.images import identity
from lab.images.vm import HostBase, disk_capacity, pick_network, remove_network, settle, start_from_state
from lab.remote.keys import ensure_keypair
from lab.remote.ssh import Endpoint, Jump, Remote

RECIPE = "layer-1"  # bump when the build or the preparation for labs change
PREFIX = "cgroup-lab-layer-"  # every volume of a layer on a libvirt host (lab.prune knows them by it)
BUILD_DIR = "build"  # in the lab's folder: the build's key, known_hosts, scripts, log, a kept VM's record
KEPT = "kept-vm.json"
LOG = "provision.log"
ERR_MARK = "__LAB_ERR__"
# Sourced by bash before each script (BASH_ENV): report the line and command of every failure.
ERR_TRAP = ("set -E\ntrap 'printf \"\\n" + ERR_MARK + " %s %s %s\\n\" \"$?\" \"$LINENO\" \"$BASH_COMMAND\" >&2' ERR\n")
TAIL_LINES = 15
USUAL_SCRIPT_S = 60


@dataclass(frozen=True)
class Script:
    """One provisioning script as the layer runs it: file name in the VM, rendered text, where it
    comes from (shown to the user: `provision/NAME.sh` of scenario X, or the engine's template),
    and its source file (for line numbers) when it is a plain file of the scenario."""

    name: str
    text: str
    label: str
    source: Path | None = None


@dataclass(frozen=True)
class Layer:
    """A scenario's layer on a host base: its key and volumes."""

    base: HostBase
    key: str
    scenario: str
    target: str
    users: tuple[str, ...]  # who may log in with the lab's key: the admin first, then ssh_login users

    @property
    def prefix(self) -> str:
        """The stem of the layer's volume names in the pool: cgroup-lab-layer-<key>."""
        return f"{PREFIX}{self.key}"

    @property
    def disk_volume(self) -> str:
        """The pool volume of the layer's disk (a qcow2 overlay on the base's disk): <prefix>.qcow2."""
        return f"{self.prefix}.qcow2"

    @property
    def state_volume(self) -> str:
        """The pool volume of the provisioned VM's saved running state (virsh save): <prefix>.state."""
        return f"{self.prefix}.state"

    @property
    def mac(self) -> str:
        """The guest's MAC address: the base's (the saved RAM knows it, so every VM of the layer keeps it)."""
        return self.base.mac


def layer_for(base: HostBase, scenario: str, target: str, scripts: list[Script], users: tuple[str, ...]) -> Layer:
    """The layer of these scripts and users on the base (its key covers all of them)."""
    h = hashlib.sha256(f"{RECIPE}\0{base.state_key}\0{' '.join(users)}\0".encode())
    for script in scripts:
        h.update(f"{script.name}\0{script.text}\0".encode())
    h.update(identity.script(identity.Identity("x", "x", "x", "x"), now=0).encode())
    h.update(_prepare_script(users).encode())
    return Layer(base=base, key=h.hexdigest()[:16], scenario=scenario, target=target, users=users)


def ready(layer: Layer) -> bool:
    """The host has the layer's disk and its complete saved state."""
    from lab.images.vm import saved_state_ready

    return storage.exists(layer.disk_volume) and saved_state_ready(layer.state_volume)


def build(layer: Layer, scripts: list[Script], *, lab_root: Path, owner: str, boot_timeout: float,
          command_timeout: float, keep_failing: bool = False, verbose: bool = False) -> None:
    """Build the layer on the current libvirt host (the base's state must be there). Raises
    ProvisionFailed (exit 2) naming the failing script, TestbedError (exit 3) when the machinery
    fails. keep_failing: after a failed script the build VM stays running (recorded in
    <lab>/build/kept-vm.json; remove_kept() or the next build removes it)."""
    work = lab_root / BUILD_DIR
    remove_kept(lab_root)
    with locks.held(f"layer-{layer.key}", timeout=boot_timeout * 3, what=f"layer {layer.prefix}",
                    on_wait=lambda: console.info(f"waiting for another build of {layer.prefix}")):
        if ready(layer):
            return
        _build(layer, scripts, work, owner, boot_timeout, command_timeout, keep_failing, verbose)


def _build(layer: Layer, scripts: list[Script], work: Path, owner: str, boot_timeout: float,
           command_timeout: float, keep_failing: bool, verbose: bool) -> None:
    pool = storage.pool_path()
    name = f"cgroup-lab-build-{layer.key[:12]}"
    network = name
    storage.delete_file(f"{pool}/{layer.state_volume}")
    disk = storage.create_overlay(layer.disk_volume, f"{pool}/{layer.base.disk_volume}", disk_capacity())
    octet = pick_network(network, nat=True, reserve=(layer.mac, None), timeout=boot_timeout)
    address = f"192.168.{octet}.2"
    public = ensure_keypair(work / "id_ed25519", work / "id_ed25519.pub", "cgroup-lab-build")
    write_files(work, {f"provision/{s.name}": s.text for s in scripts})
    (work / LOG).write_text("", encoding="utf-8")
    console_log = f"{pool}/{layer.prefix}.console.log"
    kept = done = False
    try:
        with console.step(f"start the build VM of {layer.scenario} on {layer.target} from the base's saved state",
                          "libvirt to restore it (~1 s) and the guest agent", verbose, usual_s=10):
            start_from_state(layer.base.state_volume, name=name, description=owner, disk=disk, network=network,
                             serial_log=console_log, persistent=False, timeout=boot_timeout)
            host_key = identity.hand_over(name, identity.Identity(hostname=f"{layer.target}-build", public_key=public,
                                                                  address=address, gateway=f"192.168.{octet}.1",
                                                                  route=True), timeout=boot_timeout)
            identity.pin(work / "known_hosts", address, host_key)
        remote = Remote(Endpoint(host=address, port=22, user="root", key_file=work / "id_ed25519",
                                 jump=None if not libvirt.current().remote else _jump()),
                        work / "known_hosts", connect_timeout=boot_timeout, command_timeout=command_timeout,
                        label=f"the build VM of {layer.scenario}")
        with remote:
            remote.run("install -d -m 0700 /root/cgroup-lab-provision", step="provisioning directory")
            remote.run("cat > /root/cgroup-lab-provision/errtrap.sh", stdin=ERR_TRAP, step="provisioning trap")
            for script in scripts:
                try:
                    failure = _run_script(remote, script, layer, work, command_timeout, verbose)
                except _ScriptFailed as exc:
                    failure = str(exc)
                if failure is not None:
                    kept = keep_failing
                    if kept:
                        _keep(work, name, network, layer, address, _shell_command(work, address))
                        raise ProvisionFailed(failure, hint=f"the build VM {name} is kept running; a shell in it: "
                                                            f"{_shell_command(work, address)} ; invoke lab.destroy "
                                                            f"(or the next lab.build) removes it")
                    raise ProvisionFailed(failure, hint="fix the script, then: invoke lab.build "
                                                        "(or lab.up); look inside with --keep-failing")
            with console.step("start what the provisioning enabled; systemd to settle",
                              "systemctl start default.target", verbose, usual_s=20):
                started = remote.run(f"systemctl daemon-reload && timeout {int(boot_timeout)} "
                                     "systemctl start default.target", timeout=boot_timeout + 30, step="settle")
                if started.failed:
                    raise ProvisionFailed(f"after the provisioning of scenario {layer.scenario}, systemd could "
                                          f"not start default.target: {started.stderr.strip()[-300:]}")
        settle(name, boot_timeout)
        prepared = agent.run(name, _prepare_script(layer.users), timeout=command_timeout)
        if prepared.failed:
            raise TestbedError(f"preparing the layer for labs failed: {prepared.stderr.strip()[-300:]}")
        with console.step("save the provisioned VM's running state (what every lab starts from)",
                          "libvirt to write RAM and devices (~3 s)", verbose, usual_s=10):
            libvirt.save(name, f"{pool}/{layer.state_volume}", timeout=boot_timeout)
            storage.refresh()
        done = True
    finally:
        if not kept:
            libvirt.stop(name)
            remove_network(network)
            if not done:
                storage.delete_file(f"{pool}/{layer.state_volume}")
                storage.delete(layer.disk_volume)
            storage.delete_file(console_log)


def _jump() -> Jump:
    """The SSH jump through the remote libvirt host to the build VM (as lifecycle.jump_for)."""
    access = libvirt.current().access
    assert access is not None
    uri = access.uri
    return Jump(host=uri.host, port=uri.ssh_port, user=uri.user, key_file=Path(uri.keyfile) if uri.keyfile else None,
                known_hosts=access.known_hosts, strict=access.strict, timeout=float(access.timeout), label=uri.text)


def _run_script(remote: Remote, script: Script, layer: Layer, work: Path, timeout: float,
                verbose: bool) -> str | None:
    """Upload and run one script as root (bash, with the ERR trap); its output goes to the log.
    Returns None when it succeeded, else the failure in the scenario's terms."""
    path = f"/root/cgroup-lab-provision/{script.name}"
    remote.run(f"cat > {shlex.quote(path)}", stdin=script.text, step=f"upload {script.name}")
    log = work / LOG
    output: list[str] = []
    errors: list[tuple[int, int, str, int]] = []
    with console.step(f"provision: {script.label}", "the script", verbose, usual_s=USUAL_SCRIPT_S) as on_line, \
            log.open("a", encoding="utf-8") as fh:
        fh.write(f"=== {script.label} ({script.name}) {time.strftime('%Y-%m-%d %H:%M:%S')}\n")

        def seen(line: str) -> None:
            mark = parse_error_mark(line)
            if mark is not None:
                errors.append((*mark, len(output)))
                return
            output.append(line)
            fh.write(line + "\n")
            on_line(line)

        exit_code = _stream(remote, f"BASH_ENV=/root/cgroup-lab-provision/errtrap.sh bash {shlex.quote(path)}",
                            seen, timeout)
        fh.write(f"=== exit {exit_code}\n")
        if exit_code != 0:  # leaves the step without its check mark
            failure = failure_message(script, exit_code, output, errors, log, work / "provision" / script.name)
            raise _ScriptFailed(failure)
    return None


class _ScriptFailed(Exception):
    """A provisioning script exited non-zero (carries the message; _run_script's caller decides)."""


def parse_error_mark(line: str) -> tuple[int, int, str] | None:
    """(exit status, line number, bash's command) from one line the ERR trap printed, else None."""
    parts = line.split(" ", 3)
    if len(parts) >= 3 and parts[0] == ERR_MARK and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2]), parts[3] if len(parts) > 3 else ""
    return None


def failure_message(script: Script, exit_code: int, output: list[str], errors: list[tuple[int, int, str, int]],
                    log: Path, rendered: Path) -> str:
    """A failed script in the scenario's terms: which script, its exit code, the line and command
    where it failed (the line's own text when it has one), the last output lines and where the
    whole log is. errors: what the ERR trap printed, (status, line, bash's command, how many output
    lines came before it); the failure is the first of the marks that end the output together (a
    command failing in a function reports its own line, then the call's: the first is the cause).
    When the script is a template whose rendering differs from its file, the line is the rendered
    script's (kept at `rendered`)."""
    where = ""
    if errors:
        last = errors[-1][3]
        _, line_no, bash_command, _ = next(e for e in errors if e[3] == last)
        lines = script.text.splitlines()
        command = lines[line_no - 1].strip() if 0 < line_no <= len(lines) else bash_command
        as_rendered = ""
        if not _same_line(script, line_no):
            as_rendered = f" of the script as rendered ({rendered})"
        where = f" at line {line_no}{as_rendered}: {command}"
    tail = [line for line in output if line.strip()][-TAIL_LINES:]
    shown = "\n".join(f"    {line}" for line in tail) or "    (no output)"
    return (f"provisioning script {script.label} failed (exit {exit_code}){where}\n"
            f"  its last output lines:\n{shown}\n  full log: {log}")


def _same_line(script: Script, line_no: int) -> bool:
    """The script's file (a template) has the rendered script's line at line_no and no block or
    comment tag before it (which may remove lines): that line number is then the file's too."""
    if script.source is None:
        return False
    try:
        source = script.source.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    rendered = script.text.splitlines()
    if not (0 < line_no <= len(source) and line_no <= len(rendered)):
        return False
    return source[line_no - 1] == rendered[line_no - 1] and not any(
        "{%" in line or "{#" in line for line in source[:line_no])


def _stream(remote: Remote, command: str, on_line: Callable[[str], None], timeout: float) -> int:
    """Run command over the Remote's connection, stdout and stderr merged line by line into
    on_line; its exit code. Raises TestbedError when it runs past timeout or the connection drops."""
    transport = remote.transport()
    channel = transport.open_session(timeout=30)
    channel.set_combine_stderr(True)
    channel.settimeout(5)
    channel.exec_command(command)
    deadline = time.monotonic() + timeout
    pending = b""
    try:
        while True:
            try:
                chunk = channel.recv(65536)
            except TimeoutError:
                chunk = None
            if chunk:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    on_line(line.decode(errors="replace").rstrip("\r"))
            elif chunk == b"":
                break
            if time.monotonic() > deadline:
                raise TestbedError(f"a provisioning script ran longer than command_timeout ({timeout:.0f}s)",
                                   hint="raise command_timeout if it is just slow")
        if pending:
            on_line(pending.decode(errors="replace"))
        return channel.recv_exit_status()
    except (OSError, paramiko.SSHException, EOFError) as exc:
        raise TestbedError(f"the SSH connection to the build VM dropped ({type(exc).__name__}: {exc})") from None
    finally:
        channel.close()


def _prepare_script(users: tuple[str, ...]) -> str:
    """Run through the agent before the save: the files the identity handover writes a lab's key
    into (each user's authorized_keys, created with its owner), the build's key and scripts gone,
    the admin's (users[0]) user manager running."""
    quoted = " ".join(shlex.quote(u) for u in users)
    return f"""set -eu
list=/etc/cgroup-lab/authorized-keys.new
: > "$list"
for user in {quoted}; do
  home=$(getent passwd "$user" | cut -d: -f6)
  [ -n "$home" ] || {{ echo "no user $user in the provisioned VM" >&2; exit 3; }}
  install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
  [ -f "$home/.ssh/authorized_keys" ] || install -m 0600 -o "$user" -g "$user" /dev/null "$home/.ssh/authorized_keys"
  : > "$home/.ssh/authorized_keys"
  printf '%s\\n' "$home/.ssh/authorized_keys" >> "$list"
done
mv "$list" /etc/cgroup-lab/authorized-keys
: > /root/.ssh/authorized_keys
rm -rf /root/cgroup-lab-provision
# Nothing of the build's own login may stay in the state: its session, root's user manager (logind
# would stop it ~10 s after the restore, in the middle of a lab's first minute).
loginctl terminate-user root 2>/dev/null || true
systemctl stop user@0.service user-runtime-dir@0.service
# The admin's user manager, started now: a lab's first login (lab.up's, before the baseline
# snapshot, which is taken with the admin logged in) then finds it running instead of waiting
# ~3 s on TCG for it to start; logind adopts it at that login as if the login had started it.
systemctl start "user@$(id -u {shlex.quote(users[0])}).service"
# The admin's two ports (lab.remote.port), given to it here: the device nodes are in the saved RAM,
# so a lab's first login starts its port shells without a sudo of its own (~0.5 s on TCG)
for port in /dev/virtio-ports/lab.admin /dev/virtio-ports/lab.admin.err; do
  [ ! -e "$port" ] || chown {shlex.quote(users[0])} "$port"
done
for _ in $(seq 1 300); do
  [ -z "$(systemctl list-jobs --no-legend)" ] && break
  sleep 0.2
done
# root's sessions are the build's logins (systemd 256+ also lists each user manager as a session
# of class "manager": the admin's, started above, stays)
if loginctl list-sessions --no-legend | awk '$3 == "root"' | grep -q .; then
  echo "the build's login is still open:" >&2; loginctl list-sessions --no-legend >&2; exit 4
fi
"""


def _keep(work: Path, name: str, network: str, layer: Layer, address: str, shell: str) -> None:
    record = {"domain": name, "network": network, "volume": layer.disk_volume, "address": address, "shell": shell,
              "libvirt_uri": libvirt.current().uri, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_files(work, {KEPT: json.dumps(record, indent=2) + "\n"})


def _shell_command(work: Path, address: str) -> str:
    """The ssh command line that opens a root shell in the build VM (through the libvirt host
    when it is remote), with the build's own key and the host key pinned at its handover."""
    argv = ["ssh", "-i", str(work / "id_ed25519"), "-o", f"UserKnownHostsFile={work / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"]
    access = libvirt.current().access
    if access is not None:
        argv += ["-o", f"ProxyCommand={access.proxy_command}"]
    argv.append(f"root@{address}")
    return shlex.join(argv)


def kept(lab_root: Path) -> dict | None:
    """The record of a build VM kept by --keep-failing for this lab, or None."""
    try:
        return json.loads((lab_root / BUILD_DIR / KEPT).read_text())
    except (OSError, ValueError):
        return None


def remove_kept(lab_root: Path) -> list[str]:
    """Remove the build VM kept for this lab (its domain, network and layer disk), if any; says
    what was removed. Only what the record names, on the host it names."""
    record = kept(lab_root)
    if record is None:
        return []
    removed = []
    if libvirt.domain_state(record["domain"]) != "not created":
        libvirt.stop(record["domain"])
        removed.append(f"build VM {record['domain']}")
    if libvirt.virsh("net-info", record["network"]).returncode == 0:
        remove_network(record["network"])
        removed.append(f"network {record['network']}")
    if storage.delete(record["volume"]):
        removed.append(f"volume {record['volume']}")
    (lab_root / BUILD_DIR / KEPT).unlink(missing_ok=True)
    return removed



REGISTRY = "layers.json"  # in the checkout's .lab/: the layer it built last per host, scenario and target


def supersede(new: Layer, state_root: Path, host_uri: str, scenario_ref: str) -> list[str]:
    """Record `new` as the layer this checkout built last for (host, scenario, target), and delete
    the one it replaces (an edit-and-retry leaves one per edit otherwise) unless a disk on the host
    is still backed by it (a lab that is up). Only this checkout's own layers are ever deleted:
    another checkout, or another session, may use a layer of the same scenario. Returns what was
    deleted."""
    path = state_root / REGISTRY
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    slot = f"{host_uri} {scenario_ref} {new.target}"
    old = known.get(slot)
    known[slot] = new.key
    write_files(state_root, {REGISTRY: json.dumps(known, indent=1, sort_keys=True) + "\n"})
    if not isinstance(old, str) or old == new.key:
        return []
    gone = Layer(base=new.base, key=old, scenario=new.scenario, target=new.target, users=new.users)
    if storage.exists(gone.disk_volume) and storage.backed_by(storage.path(gone.disk_volume)):
        return []
    removed = [volume for volume in (gone.state_volume, gone.disk_volume) if storage.delete(volume)]
    return removed
