"""Every via measured on every Debian target, and the two scenarios that need them (issue 20).

One lab per target of the test scenario tests/scenarios/vias: its evidence prints, for a process
started through each via, its cgroup, its logind session (loginctl), loginuid and limits (a nofile
limit for viauser in limits.conf shows where pam_limits ran; a TasksMax on viauser's slice where the
slice holds the process); its variants exit 3 through each via and the record says which vias pass
the exit status on. Then cron-tasksmax and limits-nopam over the three targets with lab.matrix.
Nothing is faked: real VMs (TCG), cron, agetty, logind. Marked `vm`; CI runs them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_e2e_vm import invoke, leftovers

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parent.parent
VIAS = ROOT / "tests" / "scenarios" / "vias"  # test data, not a shipped scenario
TARGETS = ["bookworm", "bookworm-unified", "trixie"]
PAM_LIMITS = 4321  # viauser's soft nofile in limits.conf (tests/scenarios/vias/provision/where.sh)
SYSTEMD_DEFAULT_NOFILE = 1024  # systemd's DefaultLimitNOFILE soft value, which logins start from


def fields(output: str) -> dict[str, str]:
    """lab-where's key=value lines (machinectl's terminal adds ^@ and escape sequences around them)."""
    out = {}
    for line in output.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*[A-Za-z]|\^@", "", line)
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[\w.]+", key):
            out[key] = value.strip()
    return out


@pytest.fixture(scope="module", params=TARGETS)
def measured(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """(target, verify record) of the vias scenario on one target; the lab is destroyed afterwards."""
    target = request.param
    workdir = tmp_path_factory.mktemp(f"vias-{target}")
    name = f"lang-vias-t-{target}"
    try:
        up = invoke(workdir, "lab.up", "--scenario", str(VIAS), "--target", target, "--name", name)
        assert up.returncode == 0
        verified = invoke(workdir, "lab.verify", "--name", name, timeout=1800)
        record = json.loads((workdir / ".lab" / name / "reports" / "latest" / "verify.json").read_text())
        record["exit_code"] = verified.returncode
        yield target, record
    finally:
        invoke(workdir, "lab.destroy", "--name", name, timeout=600)
        assert leftovers(name) == []


def where(record: dict) -> dict[str, dict[str, str]]:
    """Each via's lab-where fields, by the evidence column's title (the via's name)."""
    return {c["title"]: fields(c["output"]) for c in record["evidence"][0]["columns"]}


def test_each_via_lands_where_the_readme_says(measured: tuple[str, dict]) -> None:
    target, record = measured
    got = where(record)
    print(json.dumps(got, indent=1))
    admin_scope = got["login"]["cgroup"]
    assert re.fullmatch(r"/user\.slice/user-\d+\.slice/session-\d+\.scope", admin_scope)
    # no session of their own: the process stays in the admin's SSH session scope
    for via in ("sudo", "su", "su-login", "runuser", "runuser-login", "setpriv"):
        assert got[via]["user"] == "viauser", via
        assert got[via]["cgroup"] == admin_scope, via
        assert got[via]["session.Name"] == "labadmin" and got[via]["XDG_SESSION_ID"] == "unset", via
    # pam_limits runs for sudo, su, su -, runuser and runuser -l; setpriv runs no PAM at all
    for via in ("sudo", "su", "su-login", "runuser", "runuser-login"):
        assert got[via]["nofile"] == str(PAM_LIMITS), via
    assert got["setpriv"]["nofile"] == str(SYSTEMD_DEFAULT_NOFILE)
    # a session of the user's own, in the user's slice (its TasksMax holds it)
    for via, service, kind in (("ssh", "sshd", "user"), ("machinectl", "login", "user"), ("tty", "login", "user"),
                               ("unit-pam", "login", "background")):
        assert re.fullmatch(r"/user\.slice/user-\d+\.slice/session-\w+\.scope", got[via]["cgroup"]), via
        assert got[via]["session.Name"] == "viauser" and got[via]["session.Service"] == service, via
        assert got[via]["session.Class"] == kind, via
        assert got[via]["tasks_max"].startswith("77 at /user.slice/user-"), via
        assert got[via]["nofile"] == str(PAM_LIMITS), via
    assert got["tty"]["session.Type"] == "tty" and got["tty"]["session.TTY"].startswith("pts/")
    assert got["tty"]["session.Remote"] == "no" and got["ssh"]["session.Remote"] == "yes"
    # cron: the job stays in cron.service (Debian's cron has no pam_systemd), but pam_limits runs
    assert got["cron"]["cgroup"] == "/system.slice/cron.service" and got["cron"]["session"] == "none"
    assert got["cron"]["nofile"] == str(PAM_LIMITS) and got["cron"]["loginuid"] != "4294967295"
    # a unit without PAMName=: its own service in system.slice, no session, no loginuid, systemd's limits
    assert re.fullmatch(r"/system\.slice/run-[\w-]+\.service", got["unit"]["cgroup"])
    assert got["unit"]["session"] == "none" and got["unit"]["loginuid"] == "4294967295"
    assert got["unit"]["nofile"] == str(SYSTEMD_DEFAULT_NOFILE)
    if target == "trixie":
        # run0 (systemd 257): a background session of its own in the user's slice, but systemd's limits
        assert re.fullmatch(r"/user\.slice/user-\d+\.slice/session-c?\d+\.scope", got["run0"]["cgroup"])
        assert got["run0"]["session.Service"] == "systemd-run0" and got["run0"]["session.Class"] == "background"
        assert got["run0"]["nofile"] == str(SYSTEMD_DEFAULT_NOFILE)
    else:
        assert "run0" not in got, "run0 is only on the target whose systemd has it"


def test_which_vias_pass_the_exit_status_on(measured: tuple[str, dict]) -> None:
    """Every via passes the start command's exit status on, but machinectl shell (always 0)."""
    target, record = measured
    observed = {t["id"]: t["observed"] for t in record["tries"] if t["id"] != "baseline-restored"}
    expected = {f"exit-{v}": "three" for v in ("sudo", "su", "su-login", "runuser", "runuser-login", "setpriv",
                                               "ssh", "cron", "unit", "tty")}
    expected.update({"baseline": "three", "exit-machinectl": "zero"})
    if target == "trixie":
        expected["exit-run0"] = "three"
    assert observed == expected
    assert {t["kind"] for t in record["tries"] if t["id"].startswith("exit-")} == {"variant"}
    assert record["ok"] is True and record["exit_code"] == 0


# --- the two scenarios that need the new vias, over the three targets ----------------------------

# Measured (see the README): the same on Debian 12 (hybrid and cgroup v2) and Debian 13.
CRON_TASKSMAX = {"baseline": "escapes", "unit": "escapes", "ssh-login": "held", "pam-systemd": "held",
                 "user-scope": "held", "baseline-restored": "escapes"}
LIMITS_NOPAM = {"baseline": "ignored", "chroot-userspec": "ignored", "unit": "ignored", "su-login": "applied",
                "runuser-login": "applied", "ssh-login": "applied", "unit-limit": "applied", "unit-pam": "applied",
                "baseline-restored": "ignored"}


@pytest.mark.parametrize(("scenario", "measured_matrix"), [("cron-tasksmax", CRON_TASKSMAX),
                                                           ("limits-nopam", LIMITS_NOPAM)])
def test_new_scenarios_over_three_targets(tmp_path: Path, scenario: str, measured_matrix: dict[str, str]) -> None:
    run = invoke(tmp_path, "lab.matrix", "--scenario", scenario, "--targets", ",".join(TARGETS), "--jobs", "2",
                 timeout=3600)
    matrix = json.loads(next((tmp_path / ".lab" / "matrix" / scenario).glob("*/matrix.json")).read_text())
    print(json.dumps(matrix, indent=1)[:4000])
    for cell in matrix["targets"]:
        observed = {tid: t["observed"] for tid, t in cell["tries"].items()}
        want = dict(measured_matrix)
        if scenario == "limits-nopam" and cell["target"] == "trixie":
            want["run0"] = "ignored"
        assert observed == want, cell["target"]
    assert run.returncode == 0
    for target in TARGETS:
        assert leftovers(f"{scenario}-{target}") == []
