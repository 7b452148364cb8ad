"""lab.verify's engine against a real OpenSSH sshd on loopback, whose connection really drops in the
middle of a try (issue 19, case 1).

The guest is played by this machine behind an sshd the test starts (tests/test_remote_sshd.py's
Sshd): the scenario's commands are harmless (echo, sleep, files under the test's tmp_path). What
cannot run here is a VM to revert: the testbed has no snapshot, so the run is isolated by the
scenario's teardown, and `alive()` asks whether our sshd still runs (the stand-in for "the VM runs").
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from labtest import make_facts, make_settings
from test_remote_sshd import Sshd, cmdline, descendants, free_port, needs_sshd

from lab.core import console, errors, paths
from lab.machine.resolve import resolve
from lab.remote.keys import ensure_keypair
from lab.remote.ssh import Endpoint, Remote
from lab.render.plan import plan
from lab.report import html, markdown
from lab.run import engine
from lab.run.record import load
from lab.run.verdict import verdict

SCENARIO = """\
id = "drop"
title = "a try whose connection drops"
explanation = "The start command of fix `slow` runs long enough for the test to cut the SSH connection."
[targets.bookworm]
[users]
admin = "{user}"
[vars]
mark = "{mark}"
[outcomes]
bug = {{ words = "shows the bug", failure = true }}
fixed = {{ words = "works" }}
[observe]
rules = [{{ outcome = "fixed", when = {{ output = "fixed" }} }}, {{ outcome = "bug", when = {{ output = "bug" }} }}]
[baseline]
start = {{ command = "echo bug; exit 1" }}
expect = "bug"
[[fixes]]
id = "slow"
title = "a fix whose start is cut off"
start = {{ command = "touch {{{{ vars.mark }}}}; sleep 30; echo fixed" }}
expect = "fixed"
"""


class LoopbackTestbed:
    """The testbed: our sshd on loopback; no snapshot (can_revert False)."""

    can_revert = False

    def __init__(self, sshd: Sshd, key: Path, known_hosts: Path) -> None:
        self.name = "drop-test"
        self.sshd = sshd
        self.key = key
        self.known_hosts = known_hosts

    def connect(self) -> Remote:
        return Remote(Endpoint("127.0.0.1", self.sshd.port, self.sshd.user, self.key), self.known_hosts,
                      connect_timeout=10, command_timeout=60, label="lab drop-test")

    def alive(self) -> None:
        if self.sshd.proc is None or self.sshd.proc.poll() is not None:
            raise errors.TestbedError("the test's sshd is gone")

    def revert(self) -> str:
        raise AssertionError("no snapshot here: the engine must not ask for one")

    def prove_baseline(self, remote: Remote) -> str:
        raise AssertionError("no snapshot here")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[Sshd, Path]]:
    import pwd

    root = tmp_path / "sshd"
    root.mkdir()
    server = Sshd(root, free_port(), pwd.getpwuid(os.geteuid()).pw_name)
    key = tmp_path / "client" / "id_ed25519"
    server.authorize(ensure_keypair(key, key.with_suffix(".pub"), "drop-test"))
    server.start()
    try:
        yield server, key
    finally:
        server.stop()


def cut_when(mark: Path, sshd: Sshd, timeout: float = 30) -> threading.Thread:
    """In the background: once `mark` exists (the slow start command runs), SIGKILL every process of
    the connection (sshd's per-connection children and what they run), by PID. The listener stays."""

    def cut() -> None:
        deadline = time.monotonic() + timeout
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sshd.proc is not None
        for pid in descendants(sshd.proc.pid):
            if cmdline(pid):
                os.kill(pid, signal.SIGKILL)

    thread = threading.Thread(target=cut, daemon=True)
    thread.start()
    return thread


@pytest.mark.integration
@needs_sshd
@pytest.mark.parametrize("keep_failing", [True, False])
def test_a_real_dropped_connection_is_never_reported_as_met(tmp_path: Path, sshd: tuple[Sshd, Path],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             keep_failing: bool) -> None:
    server, key = sshd
    mark = tmp_path / "slow-started"
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "scenario.toml").write_text(SCENARIO.format(user=server.user, mark=mark))
    monkeypatch.chdir(tmp_path)
    s = make_settings(tmp_path, target="bookworm", scenario=str(folder))
    lab = paths.lab_dir(s.name)
    shown = io.StringIO()
    monkeypatch.setattr(console.console, "file", shown)
    cutter = cut_when(mark, server)
    testbed = LoopbackTestbed(server, key, tmp_path / "known_hosts")
    with pytest.raises(errors.TestbedError, match="dropped during step 'slow:start'"):
        engine.run(testbed, plan(resolve(s), make_facts()), lab, "libvirt",
                   engine.Options(keep_failing=keep_failing, isolation="snapshot", command_timeout=60))
    cutter.join(5)
    [run] = [d for d in lab.reports.iterdir() if d.is_dir()]
    rec = load(run)
    v = verdict(rec)
    assert (v.state, v.ok) == ("error", False)
    assert rec.isolation == "teardown" and "no baseline snapshot" in rec.isolation_note
    assert rec.kept_failing is None, "a try that raised is not a kept failure"
    slow = rec.try_("slow")
    assert slow is not None and (slow.observed, slow.ok, slow.kept) == ("error", False, False)
    assert "dropped" in (slow.error or "")
    assert rec.try_("baseline").ok is True  # type: ignore[union-attr]
    assert v.not_run == ("baseline-restored",)
    for text in (markdown.render(rec), html.render(rec), shown.getvalue()):
        assert "every step met its expectation" not in text
    assert "✗ the run broke off" in markdown.render(rec)
