"""Settings: the merge order and every validation rule, with the key named in each error."""

from __future__ import annotations

from pathlib import Path

import pytest
from labtest import copy_scenario

from lab.config import settings
from lab.core.errors import LabError, SettingError


def load(tmp_path: Path, toml: str | None = None, env: dict | None = None, **flags: object) -> settings.Settings:
    if toml is not None:
        (tmp_path / "lab.toml").write_text(toml)
    return settings.load(environ=env or {}, flags=flags, project_dir=tmp_path)


def test_defaults_follow_the_seed(tmp_path: Path) -> None:
    s = load(tmp_path)
    assert (s.target, s.scenario, s.name) == ("trusty", "sudo-lxc-cgroups", "sudo-lxc-cgroups-trusty")
    scenario = s.scenario_data
    assert scenario.model.users.admin == "labadmin"
    assert (scenario.vars_for(s.target)["user"], scenario.vars_for(s.target)["container"]) == ("dbusr", "mysql55")
    assert s.fix_ids == ("pam-systemd", "cgm")


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    toml = 'target = "bookworm"\ncpus = 1\nmemory = 2048\n'
    s = load(tmp_path, toml, env={"LAB_CPUS": "3", "LAB_MEMORY": "1536"}, memory=4096)
    assert (s.target, s.cpus, s.memory, s.name) == ("bookworm", 3, 4096, "sudo-lxc-cgroups-bookworm")


def test_name_defaults_to_scenario_and_target_and_can_be_set(tmp_path: Path) -> None:
    assert load(tmp_path, target="bookworm-unified").name == "sudo-lxc-cgroups-bookworm-unified"
    assert load(tmp_path, target="bookworm", name="demo-1").name == "demo-1"
    longest = "a" + "b" * 47
    assert load(tmp_path, target="bookworm", name=longest).name == longest
    with pytest.raises(SettingError, match="'name'.*at most 48"):
        load(tmp_path, target="bookworm", name=longest + "c")


def test_fixes_from_env_are_split_and_checked_against_the_target(tmp_path: Path) -> None:
    s = load(tmp_path, env={"LAB_TARGET": "bookworm", "LAB_FIXES": "cgm, pam-cgfs"})
    assert s.fix_ids == ("cgm", "pam-cgfs")
    with pytest.raises(SettingError, match="'fixes'.*pam-cgf.*did you mean 'pam-cgfs'"):
        load(tmp_path, env={"LAB_TARGET": "bookworm", "LAB_FIXES": "pam-cgf"})


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("target", "xenial", "one of"),
    ("provider", "docker", "one of auto, libvirt, virtualbox"),
    ("name", "My Lab", "lower-case"),
    ("name", "a;rm -rf /", "lower-case"),
    ("cpus", "many", "whole number"),
    ("cpus", "0", "whole number from 1"),
    ("memory", "99999999", "whole number"),
    ("scenario", "sudo-lxc-cgroup", "did you mean 'sudo-lxc-cgroups'"),
    ("scenario", "./no/such/folder", "no scenario.toml"),
    ("debian_mirror", "ftp://mirror", "http:// or https://"),
    ("debian_mirror", "http://x/$(reboot)", "http:// or https://"),
    ("ubuntu_mirror", "not a url", "http:// or https://"),
    ("box", "/nonexistent/trusty.box", "no such file"),
    ("box", "just-a-word", "box name like owner/name"),
    ("ssh_timeout", "-1", "whole number"),
])
def test_bad_values_name_the_key(tmp_path: Path, key: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingError) as info:
        load(tmp_path, env={f"LAB_{key.upper()}": value})
    assert info.value.key == key
    assert fragment in str(info.value)
    assert f"LAB_{key.upper()}" in str(info.value)


def test_unknown_key_in_file_suggests_the_right_one(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="unknown key 'memroy'; did you mean 'memory'"):
        load(tmp_path, 'memroy = 2048\n')


def test_unparsable_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="lab.toml is not valid TOML"):
        load(tmp_path, 'target = \n')


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="does not exist"):
        settings.load(config=tmp_path / "nope.toml", environ={}, project_dir=tmp_path)


def test_unknown_lab_variable_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="LAB_TARGT.*did you mean 'LAB_TARGET'"):
        load(tmp_path, env={"LAB_TARGT": "bookworm"})


def test_toml_types_are_checked_too(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="'cpus'"):
        load(tmp_path, 'cpus = true\n')
    with pytest.raises(SettingError, match="'fixes'"):
        load(tmp_path, 'target = "bookworm"\nfixes = "cgm;reboot"\n')


def test_provider_must_fit_the_target(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="for target bookworm: libvirt"):
        load(tmp_path, target="bookworm", provider="virtualbox")
    assert load(tmp_path, target="trusty", provider="virtualbox").provider == "virtualbox"


def test_admin_and_container_user_must_differ(tmp_path: Path) -> None:
    folder = copy_scenario(tmp_path, {'unprivileged = ["dbusr"]': 'unprivileged = ["labadmin"]'})
    with pytest.raises(LabError, match=r"users\.unprivileged: the admin 'labadmin' cannot also be"):
        load(tmp_path, env={"LAB_SCENARIO": str(folder)})


@pytest.mark.parametrize(("line", "hostile", "where"), [
    ('admin = "labadmin"', 'admin = "root\'; x"', "users.admin"),
    ('unprivileged = ["dbusr"]', 'unprivileged = ["$(id)"]', "users.unprivileged"),
])
def test_hostile_scenario_users_are_refused_naming_the_key(tmp_path: Path, line: str, hostile: str,
                                                           where: str) -> None:
    folder = copy_scenario(tmp_path, {line: hostile})
    with pytest.raises(LabError, match="scenario.toml") as info:
        load(tmp_path, env={"LAB_SCENARIO": str(folder)})
    assert where in str(info.value)


def test_local_box_file_is_resolved(tmp_path: Path) -> None:
    box = tmp_path / "trusty.box"
    box.write_bytes(b"x")
    assert load(tmp_path, env={"LAB_BOX": str(box)}).box == str(box.resolve())


def test_settings_round_trip_through_json(tmp_path: Path) -> None:
    s = load(tmp_path, target="bookworm", name="demo")
    assert settings.from_json(s.to_json(), "saved") == s


def test_saved_settings_are_validated_again(tmp_path: Path) -> None:
    s = load(tmp_path, target="bookworm")
    text = s.to_json().replace(f'"name": "{s.name}"', '"name": "db usr"')
    assert '"db usr"' in text
    with pytest.raises(SettingError, match="'name'"):
        settings.from_json(text, "saved")


def test_a_flag_of_a_settings_key_takes_its_help_from_the_one_table() -> None:
    """Issue 21: each key declared once (default, check, when it applies, help); the tasks' flag
    help is read from there, not written a second time."""
    import subprocess
    import sys

    from lab.cli import tasks
    from lab.config.settings import HELP

    for flag in tasks.LAB_FLAGS:
        if flag != "config":
            assert HELP[flag] and tasks.FLAG_HELP[flag] == HELP[flag], flag
    shown = subprocess.run([sys.executable, "-m", "invoke", "--help", "lab.up"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parent.parent, check=True).stdout
    assert "state lives in .lab/NAME/" in " ".join(shown.split())
