"""A guest that stops answering while its domain runs, with real parts: a lab on bookworm-unified, its
libvirt network removed under it, then its sshd stopped. Each time lab.verify says in one line, well
within reach_timeout plus a few seconds, what is wrong and the next command, with no library
traceback; lab.status shows libvirt's view; lab.up repairs it and says so.

Marked `vm` (boots one VM; run it under /work/bin/vm-slot). The lab is destroyed in a finally.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parent.parent
NAME = f"exits-net-{os.getpid() % 10000}"
DOMAIN = f"lab-{NAME}"
SAID_WITHIN = 30.0  # seconds: the bound for saying what is wrong (reach_timeout's default is 20)


def invoke(cwd: Path, *args: str, timeout: float = 1800) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env["COLUMNS"] = "200"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout, check=False)
    took = time.monotonic() - started
    print(f"--- invoke {' '.join(args)}: exit {result.returncode} in {took:.1f}s")
    print(result.stdout[-4000:], result.stderr[-3000:])
    return result, took


def virsh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error line of a refusal: exactly one `error:` line, a hint, no traceback anywhere."""
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3, f"one line and its hint, not a flood:\n{result.stderr}"
    return errors[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    workdir = tmp_path_factory.mktemp("vm-exits")
    try:
        up, _ = invoke(workdir, "lab.up", "--target", "bookworm-unified", "--name", NAME, timeout=3600)
        assert up.returncode == 0
        given = json.loads((workdir / ".lab" / NAME / "settings-given.json").read_text())
        assert given["target"] == "--target" and given["name"] == "--name", "lab.up records where each key came from"
        yield workdir
    finally:
        invoke(workdir, "lab.destroy", "--name", NAME, timeout=600)
        assert DOMAIN not in virsh("list", "--all", "--name").stdout.split()
        assert DOMAIN not in virsh("net-list", "--all", "--name").stdout.split()


def test_the_lab_network_removed_under_a_running_lab(lab: Path) -> None:
    assert virsh("net-destroy", DOMAIN).returncode == 0
    assert virsh("net-undefine", DOMAIN).returncode == 0
    assert virsh("domstate", DOMAIN).stdout.strip() == "running"

    verify, took = invoke(lab, "lab.verify", "--name", NAME, timeout=900)
    assert verify.returncode == 3
    line = one_error_line(verify)
    assert f"the VM of lab {NAME} ({DOMAIN}) runs, but its libvirt network {DOMAIN} is gone" in line
    assert f"next: invoke lab.up --name {NAME}" in verify.stderr
    assert took < SAID_WITHIN

    status, _ = invoke(lab, "lab.status", "--name", NAME)
    assert status.returncode == 0
    assert f"{DOMAIN}: running; network {DOMAIN} gone (libvirt)" in status.stdout
    assert "provisioned" in status.stdout and "(its state.json)" in status.stdout

    up, _ = invoke(lab, "lab.up", "--target", "bookworm-unified", "--name", NAME, timeout=900)
    assert up.returncode == 0
    assert f"the lab's network {DOMAIN} was gone: defined it again" in up.stdout
    assert "restarting it from its baseline snapshot" in up.stdout and "up again at its baseline" in up.stdout
    ssh, _ = invoke(lab, "lab.ssh", "--name", NAME, "--command", "true")
    assert ssh.returncode == 0, "the guest answers on its network again"
    verify, _ = invoke(lab, "lab.verify", "--name", NAME, "--fix", "cgm", timeout=900)
    assert verify.returncode == 0, "the repaired lab verifies (snapshot isolation, its port shells)"


def test_sshd_stopped_in_a_running_guest(lab: Path) -> None:
    """A verify over SSH (teardown isolation: the shells are SSH logins, not the port shells a
    snapshot-isolated verify uses, which need no sshd)."""
    stop, _ = invoke(lab, "lab.ssh", "--name", NAME, "--command",
                     "sudo systemctl stop ssh.socket ssh.service 2>/dev/null; sudo systemctl stop ssh")
    assert stop.returncode in (0, 255)  # the session may go with the service

    verify, took = invoke(lab, "lab.verify", "--name", NAME, "--isolation", "teardown", timeout=900)
    assert verify.returncode == 3
    line = one_error_line(verify)
    assert f"waiting for lab {NAME} to answer SSH at " in line and "port 22 is closed (connection refused)" in line
    assert f"next: invoke lab.up --name {NAME}" in verify.stderr
    assert took < SAID_WITHIN  # reach_timeout (20 s), then the one line
    log = (lab / ".lab" / NAME / "lab.log").read_text()
    assert "paramiko" in log, "paramiko's own log went to the lab's log file"

    up, _ = invoke(lab, "lab.up", "--target", "bookworm-unified", "--name", NAME, timeout=900)
    assert up.returncode == 0
    assert "port 22 is closed" in up.stdout and "restarting it from its baseline snapshot" in up.stdout
    ssh, _ = invoke(lab, "lab.ssh", "--name", NAME, "--command", "systemctl is-active ssh")
    assert ssh.returncode == 0
