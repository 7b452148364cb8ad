"""Targets are data: each loads and names its templates; the measured expectations per target reach
the plan the engine runs and the files the lab is rendered into (not just scenario.toml, read again)."""

from __future__ import annotations

from pathlib import Path

import pytest
from labtest import make_facts, make_settings

from lab.config import scenario as sc
from lab.config.targets import all_targets, get_target
from lab.core.errors import LabError
from lab.images.build import base_for
from lab.machine.resolve import resolve
from lab.render.lab import provision_plan, render_all
from lab.render.plan import plan
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


def planned(tmp_path: Path, target: str) -> dict[str, str]:
    """What the engine will expect on target, as the planner gives it to the run (every try, in order)."""
    p = plan(resolve(make_settings(tmp_path, target=target)), make_facts())
    return {t.id: t.expected for t in (p.baseline, *p.fixes)}


def test_bookworm_hybrid_plans_the_measured_matrix(tmp_path: Path) -> None:
    """Measured on bookworm (tests/test_e2e_vm.py: HYBRID): the plan the engine runs expects it, and the
    box is built with the hybrid layout on the kernel command line."""
    assert planned(tmp_path, "bookworm") == {"baseline": "failing", "pam-systemd": "failing", "pam-cgfs": "running",
                                             "cgm": "running", "systemd-run": "failing"}
    s = make_settings(tmp_path, target="bookworm")
    assert "systemd.unified_cgroup_hierarchy=0" in base_for(resolve(s)).cmdline
    p = plan(resolve(s), make_facts())
    assert p.cgroup_layout == "hybrid" and p.baseline.failure and p.baseline.signatures
    assert "lxc.cgroup.memory.limit_in_bytes" in "\n".join(p.scripts.values()) + render_provision(s)


def test_bookworm_unified_plans_its_own_row(tmp_path: Path) -> None:
    assert planned(tmp_path, "bookworm-unified") == {"baseline": "unlimited", "pam-systemd": "unlimited",
                                                     "pam-cgfs": "failing", "cgm": "running", "systemd-run": "running"}
    s = make_settings(tmp_path, target="bookworm-unified")
    assert "unified_cgroup_hierarchy" not in base_for(resolve(s)).cmdline
    assert "lxc.cgroup2.memory.max" in render_provision(s)


def test_trusty_renders_the_2015_setup(tmp_path: Path) -> None:
    """The rendered lab installs the vivid kernel, reboots into it and asserts 3.19; the plan tries the
    2015 fixes and recognises the 2015 error lines."""
    s = make_settings(tmp_path, target="trusty")
    stages = provision_plan(resolve(s))
    assert stages[0][:2] == ("kernel", True)
    rendered = render_all(resolve(s), make_facts(provider="virtualbox"))
    scripts = "\n".join(text for name, text in rendered.items() if name.startswith("provision/"))
    assert "linux-generic-lts-vivid" in scripts and "3.19" in scripts
    for package in ("lxc", "lxc-templates", "uidmap", "libpam-cgm", "cgmanager"):
        assert package in scripts, package
    p = plan(resolve(s), make_facts(provider="virtualbox"))
    assert [f.id for f in p.fixes] == ["pam-systemd", "cgm"]
    assert any("cgmanager_create_sync" in sig for sig in p.baseline.signatures)
    assert "session required pam_systemd.so class=user" in p.fix("pam-systemd").apply.text  # type: ignore[union-attr]


def render_provision(s: object) -> str:
    """The lab's rendered provisioning scripts, joined."""
    return "\n".join(text for name, text in render_all(resolve(s), make_facts()).items()  # type: ignore[arg-type]
                      if name.startswith("provision/"))


def test_unknown_target_and_fix_are_clear_errors() -> None:
    with pytest.raises(LabError, match="unknown target 'bookwrom'.*did you mean 'bookworm'"):
        get_target("bookwrom")
    with pytest.raises(LabError, match="no fix 'cgmm'.*did you mean 'cgm'"):
        seed().fix("bookworm", "cgmm")
