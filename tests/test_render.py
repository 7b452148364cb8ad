"""Rendering: StrictUndefined, quoting of every value that reaches shell or Ruby, and the files."""

from __future__ import annotations

import shlex
from pathlib import Path

import jinja2
import pytest
from labtest import copy_scenario, make_facts, make_settings

from lab.core.files import write_files
from lab.machine.resolve import resolve
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
    files = render_all(resolve(s), facts)
    assert "Vagrantfile" in files
    assert any(p.startswith("provision/") for p in files)
    assert all(p == "Vagrantfile" or p.startswith("provision/") for p in files)
    p = plan(resolve(s), facts)
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
    for _, _, stage_scripts in provision_plan(resolve(s)):
        for script in stage_scripts:
            assert script.name in files
            assert f"path: '{script.name}'" in vf


def test_baseline_command_is_the_seed_command(tmp_path: Path) -> None:
    start = plan(resolve(make_settings(tmp_path, target="bookworm")), make_facts()).baseline.start
    assert start.run.strip() == "sudo -H -u dbusr lxc-start -n mysql55 -d"
    assert start.shown == start.run and start.channel == "admin"


def test_settings_reach_the_scripts(tmp_path: Path) -> None:
    folder = copy_scenario(tmp_path, {'admin = "labadmin"': 'admin = "ops"',
                                      'unprivileged = ["dbusr"]': 'unprivileged = ["dbx"]',
                                      'user = "dbusr"': 'user = "dbx"',
                                      'container = "mysql55"': 'container = "pg96"'})
    s = make_settings(tmp_path, target="bookworm", name="demo", scenario=str(folder))
    files = render_all(resolve(s), make_facts())
    assert "admin=ops" in files["provision/01-base-users.sh"]
    assert plan(resolve(s), make_facts()).baseline.start.run.strip() == "sudo -H -u dbx lxc-start -n pg96 -d"
    assert "lxc.cgroup.memory.limit_in_bytes = 268435456" in files["provision/03-base-lxc-user.sh"]


def test_hostile_scenario_vars_are_quoted_for_shell(tmp_path: Path) -> None:
    hostile = "pg`id`$(reboot)"
    folder = copy_scenario(tmp_path, {'container = "mysql55"': f'container = "{hostile}"'})
    s = make_settings(tmp_path, target="bookworm", scenario=str(folder))
    p = plan(resolve(s), make_facts())
    assert shlex.split(p.baseline.start.run) == ["sudo", "-H", "-u", "dbusr", "lxc-start", "-n", hostile, "-d"]
    assert f"container={shlex.quote(hostile)}\n" in p.scripts["observe.sh"]
    assert f"container={shlex.quote(hostile)}\n" in p.scripts["teardown.sh"]


def test_public_key_is_quoted_for_shell(tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAA it's $(dangerous)"
    files = render_all(resolve(make_settings(tmp_path, target="bookworm")), make_facts(public_key=key))
    assert f"pubkey={shlex.quote(key)}" in files["provision/01-base-users.sh"]


def test_unified_target_uses_cgroup2_limit(tmp_path: Path) -> None:
    files = render_all(resolve(make_settings(tmp_path, target="bookworm-unified")), make_facts())
    assert "lxc.cgroup2.memory.max = 268435456" in files["provision/03-base-lxc-user.sh"]


def test_write_files_is_atomic_and_sets_modes(tmp_path: Path) -> None:
    written = write_files(tmp_path, {"a/x.sh": "echo\n", "Vagrantfile": "x\n"})
    assert [p.name for p in written] == ["x.sh", "Vagrantfile"]
    assert (tmp_path / "a/x.sh").stat().st_mode & 0o111
    assert not (tmp_path / "Vagrantfile").stat().st_mode & 0o111
    assert not list(tmp_path.rglob(".*.*"))  # no temp files left


def test_a_lab_started_from_an_image_is_described_for_vagrant(tmp_path: Path) -> None:
    """A lab lab.up starts from the scenario's image: no provisioners, no key insertion or hostname
    over SSH (the guest agent hands them over), Vagrant logs in as the admin with the lab's own key
    and finds the address through the guest agent; nothing of the old fw_cfg handover is left."""
    s = make_settings(tmp_path, target="bookworm")
    facts = make_facts(box_provisioned=True, private_key_path="/labs/x/ssh/id_ed25519")
    vf = render_all(resolve(s), facts)["Vagrantfile"]
    assert "m.ssh.insert_key = false" in vf
    assert "m.ssh.private_key_path = ['/labs/x/ssh/id_ed25519']" in vf
    assert "m.ssh.username = 'labadmin'" in vf
    assert "m.vm.hostname" not in vf and "m.vm.provision" not in vf
    assert "lv.qemu_use_agent = true" in vf and "fw_cfg" not in vf
    assert "m.vm.guest = 'debian'" in vf and "m.vm.allow_fstab_modification = false" in vf
    classic = render_all(resolve(s), make_facts())["Vagrantfile"]
    assert "m.ssh.insert_key = true" in classic and "qemu_use_agent" not in classic and "m.vm.provision" in classic


def test_layer_scripts_are_rendered_without_lab_values(tmp_path: Path) -> None:
    """lab.build runs the provisioning into the scenario's layer: the scripts carry no lab's key, so
    two labs of one scenario and target share the layer; another scenario has other scripts; a
    box the user names is provisioned by Vagrant instead (no layers)."""
    from lab.images.build import layer_scripts, layer_users, uses_layers

    a = make_settings(tmp_path, target="bookworm", name="lab-one")
    b = make_settings(tmp_path, target="bookworm", name="lab-two")
    scripts = layer_scripts(resolve(a))
    users = next(script for script in scripts if "users" in script.name)
    assert "pubkey=''" in users.text and users.label.startswith("the engine's `common/users.sh`")
    lxc = next(script for script in scripts if "lxc" in script.name)
    assert lxc.label == "`provision/lxc-user.sh` of scenario sudo-lxc-cgroups"
    assert lxc.source is not None and lxc.source.name == "lxc-user.sh"
    assert [(x.name, x.text) for x in scripts] == [(x.name, x.text) for x in layer_scripts(resolve(b))]
    other = make_settings(tmp_path, target="bookworm", scenario="sudo-systemctl-user")
    assert [x.text for x in layer_scripts(resolve(other))] != [x.text for x in scripts]
    assert layer_users(resolve(a)) == ("labadmin",)
    named_box = make_settings(tmp_path, target="bookworm", box="owner/name")
    assert uses_layers(resolve(a)) and not uses_layers(resolve(named_box))


def test_scenario_scripts_import_the_engines_snippets(tmp_path: Path) -> None:
    """The shipped scenarios share their linger scripts through templates/lib (lab/linger.sh.j2);
    the rendered scripts are whole shell, with the user quoted."""
    s = make_settings(tmp_path, target="bookworm-unified", scenario="sudo-rootless-podman")
    scripts = plan(resolve(s), make_facts()).scripts
    apply = scripts["fixes/linger-env-apply.sh"]
    assert "user=poduser\n" in apply and 'loginctl enable-linger "$user"' in apply and "{%" not in apply
    assert 'loginctl disable-linger "$user"' in scripts["fixes/linger-env-revert.sh"]
