"""Targets are data: each loads and names its templates; the measured expectations per target are
the scenario's (scenarios/sudo-lxc-cgroups/scenario.toml)."""

from __future__ import annotations

import pytest

from lab.config import scenario as sc
from lab.config.targets import all_targets, get_target
from lab.core.errors import LabError
from lab.render.templates import TEMPLATES_DIR

TEMPLATES = TEMPLATES_DIR


def seed() -> sc.Scenario:
    return sc.load(sc.DEFAULT_SCENARIO)


def test_the_three_targets_load() -> None:
    assert set(all_targets()) == {"trusty", "bookworm", "bookworm-unified", "trixie"}
    assert set(seed().target_names) == {"trusty", "bookworm", "bookworm-unified", "trixie"}


@pytest.mark.parametrize("name", ["trusty", "bookworm", "bookworm-unified"])
def test_every_template_a_target_names_exists(name: str) -> None:
    t = get_target(name)
    for stage in t.provision:
        for script in stage.scripts:
            assert (TEMPLATES / f"{script}.j2").is_file(), script
    scenario = seed()
    for script in scenario.provision_for(name):
        assert (scenario.folder / script).is_file(), script
    for fix in (scenario.model.baseline, *scenario.fixes_for(name)):
        fid = getattr(fix, "id", "baseline")
        for phase in ("apply", "revert"):
            script = getattr(fix, phase, "")
            if script:
                assert (scenario.folder / script).is_file(), (fid, phase)
        assert (fix.start or scenario.model.baseline.start).command, (fid, "start")
        assert fix.title and sc.per_target(fix.why, name, ""), (fid, "title and why")
        expected = sc.expected(fix, name)
        if scenario.outcome(expected).failure:
            assert sc.signatures(fix, name), f"{name}/{fid}: a failure needs a signature to be recognised"
        assert bool(getattr(fix, "apply", "")) == bool(getattr(fix, "revert", "")), \
            f"{name}/{fid}: what is applied must be reverted"


def matrix(target: str) -> dict[str, str]:
    return {f.id: sc.expected(f, target) for f in seed().fixes_for(target)}


def test_bookworm_hybrid_matrix_is_the_measured_one() -> None:
    t = get_target("bookworm")
    assert t.cgroup_layout == "hybrid"
    assert "systemd.unified_cgroup_hierarchy=0" in t.kernel_cmdline
    assert sc.expected(seed().model.baseline, "bookworm") == "failing"
    assert matrix("bookworm") == {
        "pam-systemd": "failing", "pam-cgfs": "running", "cgm": "running", "systemd-run": "failing"}


def test_bookworm_unified_has_its_own_row() -> None:
    t = get_target("bookworm-unified")
    assert t.cgroup_layout == "unified"
    assert "unified_cgroup_hierarchy" not in t.kernel_cmdline
    assert seed().vars_for("bookworm-unified")["memory_limit_key"] == "lxc.cgroup2.memory.max"
    assert sc.expected(seed().model.baseline, "bookworm-unified") == "unlimited"
    assert matrix("bookworm-unified") == {
        "pam-systemd": "unlimited", "pam-cgfs": "failing", "cgm": "running", "systemd-run": "running"}


def test_trusty_follows_the_2015_report() -> None:
    t = get_target("trusty")
    scenario = seed()
    assert t.kernel_package == "linux-generic-lts-vivid" and t.kernel_prefix == "3.19"
    assert set(scenario.packages("trusty")) >= {"lxc", "lxc-templates", "uidmap", "libpam-cgm", "cgmanager"}
    assert t.provision[0].reboot, "the kernel stage must be followed by a reboot"
    assert any("cgmanager_create_sync" in sig for sig in sc.signatures(scenario.model.baseline, "trusty"))
    assert {f.id for f in scenario.fixes_for("trusty")} == {"pam-systemd", "cgm"}
    assert scenario.fix("trusty", "pam-systemd").vars["pam_lines"] == [
        "session required pam_loginuid.so", "session required pam_systemd.so class=user"]


def test_unknown_target_and_fix_are_clear_errors() -> None:
    with pytest.raises(LabError, match="unknown target 'bookwrom'.*did you mean 'bookworm'"):
        get_target("bookwrom")
    with pytest.raises(LabError, match="no fix 'cgmm'.*did you mean 'cgm'"):
        seed().fix("bookworm", "cgmm")
