"""Rendering: StrictUndefined, quoting of every value that reaches shell or Ruby, and the files."""

from __future__ import annotations

import shlex
from pathlib import Path

import jinja2
import pytest
from labtest import make_facts, make_settings

from lab import render
from lab.files import write_files


def test_sh_and_rb_quote_hostile_text() -> None:
    hostile = "x'; rm -rf / #\\ $(id) `id` #{system('id')}"
    assert shlex.split(render.sh(hostile)) == [hostile]
    literal = render.rb(hostile)
    assert literal.startswith("'") and literal.endswith("'")
    inner = literal[1:-1]
    # inside a Ruby single-quoted literal only \\ and \' are escapes: no bare quote may remain
    assert "'" not in inner.replace("\\'", "")
    assert inner.replace("\\'", "'").replace("\\\\", "\\") == hostile


def test_strict_undefined_refuses_missing_values() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render.environment().from_string("{{ nope }}").render()


@pytest.mark.parametrize("target", ["trusty", "bookworm", "bookworm-unified"])
def test_render_all_produces_the_lab(tmp_path: Path, target: str) -> None:
    s = make_settings(tmp_path, target=target)
    files = render.render_all(s, make_facts())
    assert "Vagrantfile" in files
    assert any(p.startswith("provision/") for p in files)
    assert {"guest/observe.sh", "guest/reset.sh"} <= set(files)
    for fix in s.target_data.fixes:
        assert f"fixes/{fix.id}-start.sh" in files
    vf = files["Vagrantfile"]
    assert "m.vm.box = 'cgroup-lab/test'" in vf
    assert "lv.management_network_name = 'lab-" + s.name + "'" in vf
    assert "lv.management_network_address = '192.168.150.0/24'" in vf
    assert 'm.vm.synced_folder ".", "/vagrant", disabled: true' in vf
    for stage in s.target_data.provision:
        for script in stage.scripts:
            assert Path(script).name in vf


def test_baseline_command_is_the_seed_command(tmp_path: Path) -> None:
    files = render.render_all(make_settings(tmp_path, target="bookworm"), make_facts())
    assert files["fixes/baseline-start.sh"].strip() == "sudo -H -u dbusr lxc-start -n mysql55 -d"


def test_settings_reach_the_scripts(tmp_path: Path) -> None:
    s = make_settings(tmp_path, target="bookworm", name="demo")
    s = type(s)(**{**s.__dict__, "admin_user": "ops", "container_user": "dbx", "container_name": "pg96"})
    files = render.render_all(s, make_facts())
    assert "admin=ops" in files["provision/01-base-users.sh"]
    assert files["fixes/baseline-start.sh"].strip() == "sudo -H -u dbx lxc-start -n pg96 -d"
    assert "lxc.cgroup.memory.limit_in_bytes = 268435456" in files["provision/03-base-lxc-user.sh"]


def test_public_key_is_quoted_for_shell(tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAA it's $(dangerous)"
    files = render.render_all(make_settings(tmp_path, target="bookworm"), make_facts(public_key=key))
    assert f"pubkey={shlex.quote(key)}" in files["provision/01-base-users.sh"]


def test_unified_target_uses_cgroup2_limit(tmp_path: Path) -> None:
    files = render.render_all(make_settings(tmp_path, target="bookworm-unified"), make_facts())
    assert "lxc.cgroup2.memory.max = 268435456" in files["provision/03-base-lxc-user.sh"]


def test_write_files_is_atomic_and_sets_modes(tmp_path: Path) -> None:
    written = write_files(tmp_path, {"a/x.sh": "echo\n", "Vagrantfile": "x\n"})
    assert [p.name for p in written] == ["x.sh", "Vagrantfile"]
    assert (tmp_path / "a/x.sh").stat().st_mode & 0o111
    assert not (tmp_path / "Vagrantfile").stat().st_mode & 0o111
    assert not list(tmp_path.rglob(".*.*"))  # no temp files left


def test_default_network_is_stable_and_in_range() -> None:
    a = render.default_network_octet("bookworm")
    assert a == render.default_network_octet("bookworm")
    assert 100 <= a < 220
