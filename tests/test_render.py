"""Rendering: StrictUndefined, quoting of every value that reaches shell or Ruby, and the files."""

from __future__ import annotations

import shlex
from pathlib import Path

import jinja2
import pytest
from labtest import copy_scenario, make_facts, make_settings

from lab.core.files import write_files
from lab.render.lab import provision_plan, render_all
from lab.render.plan import plan
from lab.render.templates import environment, rb, sh


def test_sh_and_rb_quote_hostile_text() -> None:
    hostile = "x'; rm -rf / #\\ $(id) `id` #{system('id')}"
    assert shlex.split(sh(hostile)) == [hostile]
    literal = rb(hostile)
    assert literal.startswith("'") and literal.endswith("'")
    inner = literal[1:-1]
    # inside a Ruby single-quoted literal only \\ and \' are escapes: no bare quote may remain
    assert "'" not in inner.replace("\\'", "")
    assert inner.replace("\\'", "'").replace("\\\\", "\\") == hostile


def test_strict_undefined_refuses_missing_values() -> None:
    with pytest.raises(jinja2.UndefinedError):
        environment().from_string("{{ nope }}").render()


@pytest.mark.parametrize("target", ["trusty", "bookworm", "bookworm-unified"])
def test_render_all_produces_the_lab(tmp_path: Path, target: str) -> None:
    s = make_settings(tmp_path, target=target)
    facts = make_facts()
    files = render_all(s, facts)
    assert "Vagrantfile" in files
    assert any(p.startswith("provision/") for p in files)
    assert all(p == "Vagrantfile" or p.startswith("provision/") for p in files)
    p = plan(s, facts)
    scripts = p.scripts
    assert {"observe.sh", "teardown.sh"} <= set(scripts)
    for fix in s.scenario_data.fixes_for(target):
        planned = p.fix(fix.id)
        assert planned.start.run.strip(), fix.id
        if fix.apply:
            assert {f"fixes/{fix.id}-apply.sh", f"fixes/{fix.id}-revert.sh"} <= set(scripts)
    vf = files["Vagrantfile"]
    assert "m.vm.box = 'cgroup-lab/test'" in vf
    assert "lv.management_network_name = 'lab-" + s.name + "'" in vf
    assert "lv.management_network_address = '192.168.150.0/24'" in vf
    assert 'm.vm.synced_folder ".", "/vagrant", disabled: true' in vf
    for _, _, stage_scripts in provision_plan(s):
        for script in stage_scripts:
            assert script.name in files
            assert f"path: '{script.name}'" in vf


def test_baseline_command_is_the_seed_command(tmp_path: Path) -> None:
    start = plan(make_settings(tmp_path, target="bookworm"), make_facts()).baseline.start
    assert start.run.strip() == "sudo -H -u dbusr lxc-start -n mysql55 -d"
    assert start.shown == start.run and start.channel == "admin"


def test_settings_reach_the_scripts(tmp_path: Path) -> None:
    folder = copy_scenario(tmp_path, {'admin = "labadmin"': 'admin = "ops"',
                                      'unprivileged = ["dbusr"]': 'unprivileged = ["dbx"]',
                                      'user = "dbusr"': 'user = "dbx"',
                                      'container = "mysql55"': 'container = "pg96"'})
    s = make_settings(tmp_path, target="bookworm", name="demo", scenario=str(folder))
    files = render_all(s, make_facts())
    assert "admin=ops" in files["provision/01-base-users.sh"]
    assert plan(s, make_facts()).baseline.start.run.strip() == "sudo -H -u dbx lxc-start -n pg96 -d"
    assert "lxc.cgroup.memory.limit_in_bytes = 268435456" in files["provision/03-base-lxc-user.sh"]


def test_hostile_scenario_vars_are_quoted_for_shell(tmp_path: Path) -> None:
    hostile = "pg`id`$(reboot)"
    folder = copy_scenario(tmp_path, {'container = "mysql55"': f'container = "{hostile}"'})
    s = make_settings(tmp_path, target="bookworm", scenario=str(folder))
    p = plan(s, make_facts())
    assert shlex.split(p.baseline.start.run) == ["sudo", "-H", "-u", "dbusr", "lxc-start", "-n", hostile, "-d"]
    assert f"container={shlex.quote(hostile)}\n" in p.scripts["observe.sh"]
    assert f"container={shlex.quote(hostile)}\n" in p.scripts["teardown.sh"]


def test_public_key_is_quoted_for_shell(tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAA it's $(dangerous)"
    files = render_all(make_settings(tmp_path, target="bookworm"), make_facts(public_key=key))
    assert f"pubkey={shlex.quote(key)}" in files["provision/01-base-users.sh"]


def test_unified_target_uses_cgroup2_limit(tmp_path: Path) -> None:
    files = render_all(make_settings(tmp_path, target="bookworm-unified"), make_facts())
    assert "lxc.cgroup2.memory.max = 268435456" in files["provision/03-base-lxc-user.sh"]


def test_write_files_is_atomic_and_sets_modes(tmp_path: Path) -> None:
    written = write_files(tmp_path, {"a/x.sh": "echo\n", "Vagrantfile": "x\n"})
    assert [p.name for p in written] == ["x.sh", "Vagrantfile"]
    assert (tmp_path / "a/x.sh").stat().st_mode & 0o111
    assert not (tmp_path / "Vagrantfile").stat().st_mode & 0o111
    assert not list(tmp_path.rglob(".*.*"))  # no temp files left


def test_provisioned_box_lab_boots_without_vagrant_round_trips(tmp_path: Path) -> None:
    """A lab on a box lab.build provisioned: no provisioners, no key insertion or hostname over SSH;
    the key and hostname go to QEMU as fw_cfg entries, the key file is the lab's own."""
    s = make_settings(tmp_path, target="bookworm")
    vf = render_all(s, make_facts(box_provisioned=True, private_key_path="/labs/x/ssh/id_ed25519"))["Vagrantfile"]
    assert "m.ssh.insert_key = false" in vf
    assert "m.ssh.private_key_path = ['/labs/x/ssh/id_ed25519']" in vf
    assert "m.ssh.username = 'labadmin'" in vf
    assert "m.vm.hostname" not in vf and "m.vm.provision" not in vf
    assert f"'name=opt/cgroup-lab/hostname,string={s.name}'" in vf
    assert "'name=opt/cgroup-lab/authorized_keys,string=ssh-ed25519 " in vf
    assert "m.vm.guest = 'debian'" in vf and "m.vm.allow_fstab_modification = false" in vf
    classic = render_all(s, make_facts())["Vagrantfile"]
    assert "m.ssh.insert_key = true" in classic and "fw_cfg" not in classic and "m.vm.provision" in classic


def test_fw_cfg_values_double_their_commas() -> None:
    from lab.render.lab import fw_cfg_entry

    assert fw_cfg_entry("authorized_keys", "ssh-ed25519 AAA a,b") == \
        "name=opt/cgroup-lab/authorized_keys,string=ssh-ed25519 AAA a,,b"


def test_box_provisioning_is_rendered_without_lab_values(tmp_path: Path) -> None:
    """lab.build runs the provisioning into the box: the scripts carry no lab's key, so two labs
    of one scenario and target share the box; users.sh records who gets the key at boot."""
    from lab.images.build import box_provision_scripts, build_inputs

    a = make_settings(tmp_path, target="bookworm", name="lab-one")
    b = make_settings(tmp_path, target="bookworm", name="lab-two")
    scripts = box_provision_scripts(a)
    users = next(text for name, text in scripts.items() if "users" in name)
    assert "pubkey=''" in users and "/etc/cgroup-lab/ssh-users" in users
    assert any("lxc" in name for name in scripts), scripts.keys()
    assert build_inputs(a) == build_inputs(b)
    other = make_settings(tmp_path, target="bookworm", scenario="sudo-systemctl-user")
    assert build_inputs(other)["provision"] != build_inputs(a)["provision"]
    assert box_provision_scripts(make_settings(tmp_path, target="bookworm", box="owner/name")) == {}


def test_scenario_scripts_import_the_engines_snippets(tmp_path: Path) -> None:
    """The shipped scenarios share their linger scripts through templates/lib (lab/linger.sh.j2);
    the rendered scripts are whole shell, with the user quoted."""
    s = make_settings(tmp_path, target="bookworm-unified", scenario="sudo-rootless-podman")
    scripts = plan(s, make_facts()).scripts
    apply = scripts["fixes/linger-env-apply.sh"]
    assert "user=poduser\n" in apply and 'loginctl enable-linger "$user"' in apply and "{%" not in apply
    assert 'loginctl disable-linger "$user"' in scripts["fixes/linger-env-revert.sh"]
