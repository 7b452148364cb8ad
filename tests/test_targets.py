"""Targets are data: each loads, names its templates, and carries the measured expectations."""

from __future__ import annotations

import pytest

from lab import render
from lab.errors import LabError
from lab.targets import Outcome, all_targets, get_target

TEMPLATES = render.TEMPLATES_DIR


def test_the_three_targets_load() -> None:
    assert set(all_targets()) == {"trusty", "bookworm", "bookworm-unified"}


@pytest.mark.parametrize("name", ["trusty", "bookworm", "bookworm-unified"])
def test_every_template_a_target_names_exists(name: str) -> None:
    t = get_target(name)
    for stage in t.provision:
        for script in stage.scripts:
            assert (TEMPLATES / f"{script}.j2").is_file(), script
    for fix in (t.baseline, *t.fixes):
        for phase in ("apply", "start", "revert"):
            template = getattr(fix, phase)
            if template:
                assert (TEMPLATES / f"{template}.j2").is_file(), (fix.id, phase)
        assert fix.title and fix.why
        if fix.expected == Outcome.FAILING:
            assert fix.signature, f"{name}/{fix.id}: a failure needs a signature to be recognised"
        assert bool(fix.apply) == bool(fix.revert), f"{name}/{fix.id}: what is applied must be reverted"


def test_bookworm_hybrid_matrix_is_the_measured_one() -> None:
    t = get_target("bookworm")
    assert t.cgroup_layout == "hybrid"
    assert "systemd.unified_cgroup_hierarchy=0" in t.kernel_cmdline
    assert t.baseline.expected == Outcome.FAILING
    assert {f.id: f.expected for f in t.fixes} == {
        "pam-systemd": Outcome.FAILING, "pam-cgfs": Outcome.RUNNING,
        "cgm": Outcome.RUNNING, "systemd-run": Outcome.FAILING}


def test_bookworm_unified_has_its_own_row() -> None:
    t = get_target("bookworm-unified")
    assert t.cgroup_layout == "unified"
    assert "unified_cgroup_hierarchy" not in t.kernel_cmdline
    assert t.memory_limit_key == "lxc.cgroup2.memory.max"
    assert t.baseline.expected == Outcome.UNLIMITED
    assert {f.id: f.expected for f in t.fixes} == {
        "pam-systemd": Outcome.UNLIMITED, "pam-cgfs": Outcome.FAILING,
        "cgm": Outcome.RUNNING, "systemd-run": Outcome.RUNNING}


def test_trusty_follows_the_2015_report() -> None:
    t = get_target("trusty")
    assert t.kernel_package == "linux-generic-lts-vivid" and t.kernel_prefix == "3.19"
    assert set(t.packages) >= {"lxc", "lxc-templates", "uidmap", "libpam-cgm", "cgmanager"}
    assert t.provision[0].reboot, "the kernel stage must be followed by a reboot"
    assert any("cgmanager_create_sync" in sig for sig in t.baseline.signature)
    assert {f.id for f in t.fixes} == {"pam-systemd", "cgm"}
    assert t.fix("pam-systemd").pam_lines == (
        "session required pam_loginuid.so", "session required pam_systemd.so class=user")


def test_unknown_target_and_fix_are_clear_errors() -> None:
    with pytest.raises(LabError, match="unknown target 'bookwrom'.*did you mean 'bookworm'"):
        get_target("bookwrom")
    with pytest.raises(LabError, match="no fix 'cgmm'.*did you mean 'cgm'"):
        get_target("bookworm").fix("cgmm")
