"""A remote libvirt host for real, on this machine: an sshd on a loopback port that the test starts
(its own host key, a client key made for the test, root login by key only), and this machine's
libvirtd behind it, reached as qemu+ssh://root@127.0.0.1:PORT/system. Nothing in ~/.ssh changes.

integration: lab.doctor through the URI, the SSH jump to a "guest" (a second sshd) through the
host, and the failures (closed port, bad URI, unknown or changed host key): one line, exit 2 or 3,
in seconds. vm: lab.up, lab.verify, lab.destroy of the seed on bookworm-unified through the URI.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
from labtest import copy_scenario, make_facts, make_settings
from test_remote_sshd import Sshd, free_port, needs_sshd

from lab.core import errors
from lab.core.files import write_files
from lab.host import libvirt
from lab.machine.resolve import resolve
from lab.remote.keys import ensure_keypair
from lab.remote.ssh import Endpoint, Jump, Remote
from lab.render.lab import render_all
from lab.render.plan import plan

ROOT = Path(__file__).resolve().parent.parent
SSH_DIR = Path.home() / ".ssh"
QUICK = 20.0  # seconds: a refused connection or a bad URI must be answered well within this


@dataclass
class LoopbackHost:
    sshd: Sshd
    key: Path
    known_hosts: Path  # holds the sshd's host key: strict checking

    def uri(self, strict: bool = True, port: int | None = None) -> str:
        query = f"keyfile={self.key}" + (f"&known_hosts={self.known_hosts}" if strict else "")
        return f"qemu+ssh://root@127.0.0.1:{port or self.sshd.port}/system?{query}"


def ssh_dir_state() -> dict[str, str]:
    """Every file under ~/.ssh with a hash of its content (empty when there is no ~/.ssh)."""
    if not SSH_DIR.exists():
        return {}
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted([SSH_DIR, *SSH_DIR.rglob("*")])}


def invoke(cwd: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.monotonic() - started
    print(f"--- invoke {' '.join(args)}: exit {result.returncode} in {seconds:.1f}s")
    print(result.stdout[-6000:], result.stderr[-3000:])
    return result, seconds


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def ssh_unchanged() -> Iterator[None]:
    before = ssh_dir_state()
    yield
    assert ssh_dir_state() == before, "~/.ssh must not change"


@pytest.fixture(scope="module")
def loopback_host(tmp_path_factory: pytest.TempPathFactory, ssh_unchanged: None) -> Iterator[LoopbackHost]:
    if not Path("/usr/sbin/sshd").is_file() or os.geteuid() != 0:
        pytest.skip("needs openssh-server and root")
    root = tmp_path_factory.mktemp("libvirt-host")
    (root / "sshd").mkdir()
    key = root / "client" / "id_ed25519"
    line = ensure_keypair(key, key.with_suffix(".pub"), "lab-test-libvirt-client")
    server = Sshd(root / "sshd", free_port(), "root")
    server.authorize(line)
    server.start()
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{server.port} ssh-ed25519 {server.host_key_blob}\n", encoding="utf-8")
    libvirt.ensure_daemons()  # the libvirtd behind the sshd is this machine's
    try:
        yield LoopbackHost(server, key, known_hosts)
    finally:
        server.stop()


pytestmark = needs_sshd


@pytest.mark.integration
def test_doctor_checks_the_remote_host(loopback_host: LoopbackHost, tmp_path: Path) -> None:
    result, _ = invoke(tmp_path, "lab.doctor", "--target", "bookworm-unified", "--libvirt-uri", loopback_host.uri())
    assert result.returncode == 0, result.stderr
    out = "".join(result.stdout.split())  # rich wraps long lines anywhere
    assert f"libvirthost{loopback_host.uri()}" in out
    for name in ("libvirt host ssh", "libvirtd", "storage pool default", "accelerator", "free memory"):
        assert "✓" + name.replace(" ", "") in out, name
    assert "Runninghypervisor" in out and "127.0.0.1:" in out


@pytest.mark.integration
def test_first_contact_pins_the_host_key_in_the_labs_file(loopback_host: LoopbackHost, tmp_path: Path) -> None:
    """Without known_hosts= in the URI: .lab/hosts/known_hosts gets the key, then a changed host key
    is refused (exit 3, one line), nothing is written to ~/.ssh."""
    uri = loopback_host.uri(strict=False)
    result, _ = invoke(tmp_path, "lab.doctor", "--target", "bookworm-unified", "--libvirt-uri", uri)
    assert result.returncode == 0, result.stderr
    hosts_file = tmp_path / ".lab" / "hosts" / "known_hosts"
    pinned = hosts_file.read_text()
    assert loopback_host.sshd.host_key_blob in pinned
    # paramiko's jump reads what ssh pinned (Debian's ssh_config hashes host names) and agrees
    jump = Jump(host="127.0.0.1", port=loopback_host.sshd.port, user="root", key_file=loopback_host.key,
                known_hosts=hosts_file, strict=False, timeout=10, label=uri)
    with Remote(Endpoint("127.0.0.1", loopback_host.sshd.port, "root", loopback_host.key, jump=jump),
                tmp_path / "guest_hosts", connect_timeout=20, command_timeout=20, label="the host itself") as r:
        assert r.run("echo ok").stdout == "ok\n"
    assert len(hosts_file.read_text().splitlines()) == len(pinned.splitlines()), "no second entry for the host"
    # the same checkout, a host whose key changed (another sshd on the same port would be a new host)
    (tmp_path / "other").mkdir()
    other = Sshd(tmp_path / "other", free_port(), "root")
    other.authorize(loopback_host.key.with_suffix(".pub").read_text())
    other.start()
    try:
        with (tmp_path / ".lab" / "hosts" / "known_hosts").open("a") as hosts:  # pinned earlier: the first key
            hosts.write(f"[127.0.0.1]:{other.port} ssh-ed25519 {loopback_host.sshd.host_key_blob}\n")
        result, seconds = invoke(tmp_path, "lab.doctor", "--target", "bookworm-unified", "--libvirt-uri",
                                 loopback_host.uri(strict=False, port=other.port))
    finally:
        other.stop()
    assert result.returncode == 3 and seconds < QUICK
    assert len(error_lines(result.stderr)) == 1 and "Traceback" not in result.stderr
    assert "SSH failed: Host key verification failed." in result.stderr  # ssh's words (BatchMode, a changed key)
    assert "hint: the host's key is not the one pinned in" in result.stderr


@pytest.mark.integration
def test_a_closed_port_is_one_line_and_exit_3(loopback_host: LoopbackHost, tmp_path: Path) -> None:
    uri = loopback_host.uri(port=free_port())
    for task in (("lab.doctor", "--target", "bookworm-unified"), ("lab.up", "--target", "bookworm-unified",
                                                                  "--name", "rmt-closed")):
        result, seconds = invoke(tmp_path, *task, "--libvirt-uri", uri)
        assert result.returncode == 3, task
        assert seconds < QUICK, f"{task[0]} took {seconds:.1f}s"
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and "Traceback" not in result.stderr
        assert uri in lines[0] and "Connection refused" in lines[0]


@pytest.mark.integration
def test_an_unknown_host_key_is_refused(loopback_host: LoopbackHost, tmp_path: Path) -> None:
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{loopback_host.sshd.port} ssh-ed25519 "
                     "AAAAC3NzaC1lZDI1NTE5AAAAIBzZ2pYzb3ZkZ2pYzb3ZkZ2pYzb3ZkZ2pYzb3ZkZ2pY\n")
    uri = loopback_host.uri().replace(str(loopback_host.known_hosts), str(wrong))
    result, seconds = invoke(tmp_path, "lab.doctor", "--target", "bookworm-unified", "--libvirt-uri", uri)
    assert result.returncode == 3 and seconds < QUICK
    assert len(error_lines(result.stderr)) == 1
    assert "Host key verification failed" in result.stderr and str(wrong) in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("uri", ["qemu+tcp://127.0.0.1/system", "qemu:///session",
                                 "qemu+ssh://127.0.0.1/system?command=/bin/sh",
                                 "qemu+ssh://127.0.0.1/system?keyfile=/nonexistent/key", "qemu+ssh://a b/system"])
def test_a_bad_uri_is_one_line_and_exit_2(tmp_path: Path, uri: str) -> None:
    result, seconds = invoke(tmp_path, "lab.up", "--target", "bookworm-unified", "--libvirt-uri", uri)
    assert result.returncode == 2 and seconds < QUICK
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: setting 'libvirt_uri' (from --libvirt-uri)")
    assert not (tmp_path / ".lab").exists(), "nothing may start on a bad setting"


def guest_sshd(tmp_path: Path) -> tuple[Sshd, Path]:
    """A real sshd on loopback that plays the lab's guest, trusting a key made for the test (started;
    the caller stops it)."""
    (tmp_path / "guest").mkdir()
    guest = Sshd(tmp_path / "guest", free_port(), "root")
    guest_key = tmp_path / "lab" / "id_ed25519"
    guest.authorize(ensure_keypair(guest_key, guest_key.with_suffix(".pub"), "lab-test-guest"))
    guest.start()
    return guest, guest_key


@pytest.mark.integration
def test_the_guest_is_reached_through_the_host(loopback_host: LoopbackHost, tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    """paramiko's jump: a second sshd plays the guest; the connection to it runs in a direct-tcpip
    channel of the connection to the libvirt host."""
    guest, guest_key = guest_sshd(tmp_path)
    try:
        jump = Jump(host="127.0.0.1", port=loopback_host.sshd.port, user="root", key_file=loopback_host.key,
                    known_hosts=loopback_host.known_hosts, strict=True, timeout=10, label="the test host")
        remote = Remote(Endpoint("127.0.0.1", guest.port, "root", guest_key, jump=jump), tmp_path / "guest_hosts",
                        connect_timeout=20, command_timeout=20, label="the test guest")
        with remote:
            assert remote.run("echo ok").stdout == "ok\n"
            assert remote._jump is not None and remote._client is not None
            transport = remote._client.get_transport()
            assert transport is not None and isinstance(transport.sock, paramiko.Channel)  # inside the jump
        # a guest that does not answer yet: retried quietly until connect_timeout, then one error
        log = tmp_path / "lab.log"
        booting = Remote(Endpoint("127.0.0.1", free_port(), "root", guest_key, jump=jump), tmp_path / "guest_hosts",
                         connect_timeout=2, command_timeout=20, label="a booting guest", log_file=log)
        capfd.readouterr()
        with pytest.raises(errors.TestbedError, match="waiting for a booting guest to answer SSH.*last seen: the "
                                                      "libvirt host could not connect to it"):
            booting.connect()
        assert capfd.readouterr().err == "", "paramiko logs nothing on the terminal, not a line per retry"
        assert "Secsh channel" in log.read_text(), "paramiko's refusals go to the lab's log"
        # the host vanishes: the next connection fails at once, naming it
        closed = Jump(host="127.0.0.1", port=free_port(), user="root", key_file=loopback_host.key,
                      known_hosts=loopback_host.known_hosts, strict=True, timeout=5, label="the gone host")
        gone = Remote(Endpoint("127.0.0.1", guest.port, "root", guest_key, jump=closed), tmp_path / "guest_hosts",
                      connect_timeout=20, command_timeout=20, label="the test guest")
        started = time.monotonic()
        with pytest.raises(errors.TestbedError, match="the gone host is unreachable"):
            gone.connect()
        assert time.monotonic() - started < QUICK
    finally:
        guest.stop()


@pytest.mark.integration
def test_vagrant_validates_the_remote_vagrantfile(loopback_host: LoopbackHost, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """What lab.render writes for a qemu+ssh URI passes `vagrant validate` (vagrant-libvirt reads
    lv.uri, its keyfile; Vagrant's own ssh.proxy_command is the tool's wrapper)."""
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, target="bookworm-unified", libvirt_uri=loopback_host.uri())
    host = libvirt.host_for(s.libvirt, s.libvirt_timeout)
    assert host.access is not None
    facts = make_facts(libvirt_uri=host.libvirt_uri, ssh_proxy=host.access.proxy_command)
    out = tmp_path / "rendered"
    write_files(out, {**render_all(resolve(s), facts), **plan(resolve(s), facts).scripts})
    env = {**os.environ, "VAGRANT_DEFAULT_PROVIDER": "libvirt", "VAGRANT_CHECKPOINT_DISABLE": "1"}
    result = subprocess.run(["vagrant", "validate"], cwd=out, env=env, capture_output=True, text=True,
                            timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    ssh_config = (out / "Vagrantfile").read_text()
    assert f"lv.uri = '{host.libvirt_uri}'" in ssh_config


@pytest.mark.integration
def test_matrix_hosts_leave_out_a_host_that_does_not_answer(loopback_host: LoopbackHost, tmp_path: Path) -> None:
    """--hosts with the loopback host and a closed port: the closed one is left out (said and
    recorded), the matrix goes on; trusty needs no host (not run). Only closed ports: exit 3, one line."""
    closed = loopback_host.uri(port=free_port())
    result, seconds = invoke(tmp_path, "lab.matrix", "--scenario", "sudo-lxc-cgroups", "--targets", "trusty",
                             "--hosts", f"{loopback_host.uri()},{closed}")
    assert result.returncode == 1 and seconds < 60  # nothing ran: trusty cannot be built here
    rec = json.loads((tmp_path / ".lab" / "matrix" / "sudo-lxc-cgroups" / "latest" / "matrix.json").read_text())
    by_uri = {h["uri"]: h for h in rec["hosts"]}
    assert by_uri[loopback_host.uri()]["down"] == "" and by_uri[loopback_host.uri()]["room"] >= 1
    assert "Connection refused" in by_uri[closed]["down"]
    assert rec["targets"][0]["status"] == "not run"
    result, seconds = invoke(tmp_path, "lab.matrix", "--scenario", "sudo-lxc-cgroups", "--targets", "bookworm",
                             "--hosts", closed)
    assert result.returncode == 3 and seconds < QUICK
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "no libvirt host of --hosts answers" in lines[0] and "Connection refused" in lines[0]


def second_host(loopback_host: LoopbackHost, where: Path) -> LoopbackHost:
    """Another sshd in front of this machine's libvirtd, same client key, its own host key pinned."""
    where.mkdir()
    server = Sshd(where, free_port(), "root")
    server.authorize(loopback_host.key.with_suffix(".pub").read_text())
    server.start()
    known_hosts = where / "pinned"
    known_hosts.write_text(f"[127.0.0.1]:{server.port} ssh-ed25519 {server.host_key_blob}\n", encoding="utf-8")
    return LoopbackHost(server, loopback_host.key, known_hosts)


@pytest.mark.integration
def test_a_host_vanishing_mid_command_ends_it_in_seconds(loopback_host: LoopbackHost, tmp_path: Path) -> None:
    """The libvirt host (the jump) goes away while a guest command runs: a TestbedError naming the
    lost connection within seconds, not the command's own timeout."""
    host = second_host(loopback_host, tmp_path / "host")
    guest, guest_key = guest_sshd(tmp_path)
    try:
        jump = Jump(host="127.0.0.1", port=host.sshd.port, user="root", key_file=host.key,
                    known_hosts=host.known_hosts, strict=True, timeout=10, label="the vanishing host")
        remote = Remote(Endpoint("127.0.0.1", guest.port, "root", guest_key, jump=jump), tmp_path / "guest_hosts",
                        connect_timeout=20, command_timeout=120, label="the test guest")
        with remote:
            timer = threading.Timer(2.0, host.sshd.stop)
            timer.start()
            started = time.monotonic()
            with pytest.raises(errors.TestbedError, match="dropped"):
                remote.run("sleep 60", step="a long step")
            assert time.monotonic() - started < QUICK
            timer.join()
    finally:
        host.sshd.stop()
        guest.stop()


@pytest.mark.integration
def test_a_vanished_host_is_not_a_missing_domain(loopback_host: LoopbackHost, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the host is gone, libvirt queries raise a TestbedError naming the URI (exit 3) instead
    of answering "not created", which would make lab.up start over on a host it cannot see."""
    monkeypatch.chdir(tmp_path)
    host = second_host(loopback_host, tmp_path / "host")
    uri = host.uri()
    s = make_settings(tmp_path, target="bookworm-unified", libvirt_uri=uri, libvirt_timeout=10)

    def check() -> None:
        libvirt.use(s.libvirt, s.libvirt_timeout)
        assert libvirt.domain_state("lab-rmt-nothing-here") == "not created"
        host.sshd.stop()
        started = time.monotonic()
        with pytest.raises(errors.TestbedError, match="is unreachable") as info:
            libvirt.domain_state("lab-rmt-nothing-here")
        assert uri in info.value.message and "Connection refused" in info.value.message
        assert time.monotonic() - started < QUICK
        assert errors.TestbedError.exit_code == 3

    try:
        contextvars.copy_context().run(check)
    finally:
        host.sshd.stop()


# --- vm tier: one lab through the URI -------------------------------------------------------------

def leftovers(name: str) -> list[str]:
    def virsh(*args: str) -> str:
        return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True,
                              timeout=60, check=False).stdout

    domain = f"lab-{name}"
    found = [d for d in virsh("list", "--all", "--name").split() if d == domain]
    found += [n for n in virsh("net-list", "--all", "--name").split() if n == domain]
    found += [v for v in virsh("vol-list", "default").split() if v.startswith(domain)]
    return found


@pytest.mark.vm
def test_up_verify_destroy_through_qemu_ssh(loopback_host: LoopbackHost, tmp_path: Path) -> None:
    name = "rmt-e2e"
    uri = loopback_host.uri()
    try:
        up, up_s = invoke(tmp_path, "lab.up", "--target", "bookworm-unified", "--name", name,
                          "--libvirt-uri", uri, timeout=3600)
        assert up.returncode == 0 and "started from the saved state" in up.stdout
        vagrantfile = (tmp_path / ".lab" / name / "Vagrantfile").read_text()
        assert "lv.uri = 'qemu+ssh://root@127.0.0.1:" in vagrantfile and "m.ssh.proxy_command" in vagrantfile
        owner = subprocess.run(["virsh", "-c", "qemu:///system", "desc", f"lab-{name}"], capture_output=True,
                               text=True, check=False).stdout
        assert "cgroup-lab lab " in owner and ":" + str(tmp_path) in owner  # this machine's name, then the path
        verify, verify_s = invoke(tmp_path, "lab.verify", "--name", name, timeout=1800)
        assert verify.returncode == 0
        record = json.loads((tmp_path / ".lab" / name / "reports" / "latest" / "verify.json").read_text())
        assert record["ok"] is True and record["tries"][0]["observed"] == "unlimited"
        status, _ = invoke(tmp_path, "lab.status", "--name", name)
        assert uri in status.stdout and "running" in status.stdout
        ssh, _ = invoke(tmp_path, "lab.ssh", "--name", name, "--command", "echo $SSH_CONNECTION")  # ProxyCommand
        assert ssh.returncode == 0 and ssh.stdout.split()[2].startswith("192.168.")
        reset, _ = invoke(tmp_path, "lab.reset", "--name", name, timeout=900)
        assert reset.returncode == 0
    finally:
        destroy, destroy_s = invoke(tmp_path, "lab.destroy", "--name", name, timeout=900)
    assert destroy.returncode == 0
    assert leftovers(name) == []
    print(f"through {uri}: up {up_s:.0f}s, verify {verify_s:.0f}s, destroy {destroy_s:.0f}s")


@pytest.mark.vm
def test_matrix_over_two_hosts(loopback_host: LoopbackHost, tmp_path: Path) -> None:
    """lab.matrix --hosts with this machine's libvirt and the loopback qemu+ssh host, two targets,
    one lab at a time (both hosts are this 2-core machine): each target runs on its own host, the
    reports say which, and nothing of either lab is left. A copy of the seed named rmt-seed keeps
    the labs' names apart from everyone else's (it shares the seed's boxes)."""
    scenario = copy_scenario(tmp_path, {'id = "sudo-lxc-cgroups"': 'id = "rmt-seed"'}, name="rmt-seed")
    hosts = f"qemu:///system,{loopback_host.uri()}"
    result, seconds = invoke(tmp_path, "lab.matrix", "--scenario", str(scenario), "--targets",
                             "bookworm-unified,bookworm", "--hosts", hosts, "--jobs", "1", timeout=3600)
    assert result.returncode == 0
    rec = json.loads((tmp_path / ".lab" / "matrix" / "rmt-seed" / "latest" / "matrix.json").read_text())
    ran_on = {c["target"]: c["host"] for c in rec["targets"]}
    assert ran_on == {"bookworm-unified": "local", "bookworm": "root@127.0.0.1:" + str(loopback_host.sshd.port)}
    assert all(c["status"] == "ran" and c["ok"] for c in rec["targets"])
    assert [h["ran"] for h in rec["hosts"]] == [["bookworm-unified"], ["bookworm"]]
    md = (tmp_path / ".lab" / "matrix" / "rmt-seed" / "latest" / "matrix.md").read_text()
    assert f"| root@127.0.0.1:{loopback_host.sshd.port} |" in md and "| local |" in md
    for target in ("bookworm-unified", "bookworm"):
        assert leftovers(f"rmt-seed-{target}") == []
    print(f"matrix over two hosts: {seconds:.0f}s; " + ", ".join(
        f"{c['target']} on {c['host']}: up {c['seconds']['up']:.0f}s verify {c['seconds']['verify']:.0f}s "
        f"destroy {c['seconds']['destroy']:.0f}s" for c in rec["targets"]))
