"""A lab's state as the user finds it (issue 19, items 7 and 8), through the invoke tasks.

- A damaged or missing `.lab/NAME/state.json` or settings.json, no Vagrant metadata, a domain already
  gone: lab.destroy always finishes and moves a damaged file aside with a note; lab.status shows
  what libvirt says next to what the file said.
- Settings changed after lab.up: run-time keys apply at once; keys that need a new VM are refused
  in one line naming the key, the frozen value, the new value and lab.destroy.

The labs here are written as lab.up leaves them (settings.json, state.json, .lab/current); their
domains do not exist, which is one of the cases. lab.destroy and lab.status ask the real libvirtd.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from labtest import make_settings

from lab.config import settings
from lab.core import errors

ROOT = Path(__file__).resolve().parent.parent
NAME = f"exits-st-{os.getpid() % 100000}"


def invoke(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    clean.update(env or {}, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=300, check=False)


def a_lab_that_is_up(tmp_path: Path, **flags: object) -> Path:
    """.lab/NAME as lab.up leaves it (provisioned), and .lab/current naming it."""
    lab = tmp_path / ".lab" / NAME
    (lab / ".vagrant").mkdir(parents=True)
    lab.joinpath("settings.json").write_text(make_settings(tmp_path, target="bookworm", name=NAME,
                                                           **flags).to_json())
    lab.joinpath("state.json").write_text(json.dumps({"phase": "provisioned", "since": "2026-12-01T00:00:00Z",
                                                      "task": "up", "baseline_at": "2026-12-01T00:00:00Z"}))
    lab.joinpath("Vagrantfile").write_text("# rendered by lab.up\n")
    (tmp_path / ".lab" / "current").write_text(NAME + "\n")
    return lab


def refusal(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one error line of a refusal (no traceback), with its exit code checked."""
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and all(not ln.startswith("error:") for ln in lines[1:]), result.stderr
    return lines[0]


# --- item 7: damaged state, and a way out ----------------------------------------------------------

@pytest.mark.integration
def test_a_truncated_state_json(tmp_path: Path) -> None:
    lab = a_lab_that_is_up(tmp_path)
    (lab / "state.json").write_text('{"phase": "provis')

    verify = invoke(tmp_path, "lab.verify")
    line = refusal(verify, 3)
    assert f"{lab / 'state.json'} is damaged" in line
    assert f"next: invoke lab.destroy --name {NAME}" in verify.stderr

    status = invoke(tmp_path, "lab.status")
    assert status.returncode == 0, status.stderr
    assert f"phase: unknown: {lab / 'state.json'} is damaged" in status.stdout and "(its state.json)" in status.stdout
    assert f"domain: lab-{NAME}: not created (libvirt)" in status.stdout

    destroy = invoke(tmp_path, "lab.destroy")
    assert destroy.returncode == 0, destroy.stdout + destroy.stderr
    assert f"lab {NAME} destroyed" in destroy.stdout and "moved it aside to" in destroy.stdout
    [aside] = lab.glob("state.json.damaged-*[0-9]Z")
    assert aside.read_text() == '{"phase": "provis'
    note = aside.with_name(aside.name + ".note").read_text()
    assert note.startswith("moved aside by cgroup-lab at ") and "is damaged" in note
    assert json.loads((lab / "state.json").read_text())["phase"] == "absent"
    assert not (lab / ".vagrant").exists()
    assert invoke(tmp_path, "lab.destroy", "--name", NAME).returncode == 0, "twice is fine"


@pytest.mark.integration
@pytest.mark.parametrize("text", ['{"target": "book', "[1, 2]"])
def test_a_damaged_settings_json(tmp_path: Path, text: str) -> None:
    lab = a_lab_that_is_up(tmp_path)
    (lab / "settings.json").write_text(text)
    status = invoke(tmp_path, "lab.status")
    assert status.returncode == 0, status.stderr
    assert "settings: " in status.stdout and f"domain: lab-{NAME}: not created (libvirt)" in status.stdout
    assert (lab / "settings.json").read_text() == text, "lab.status changes nothing"
    destroy = invoke(tmp_path, "lab.destroy")
    assert destroy.returncode == 0, destroy.stdout + destroy.stderr
    assert f"destroying lab {NAME} on qemu:///system all the same" in destroy.stdout
    [aside] = lab.glob("settings.json.damaged-*[0-9]Z")
    assert aside.read_text() == text and aside.with_name(aside.name + ".note").is_file()


@pytest.mark.integration
def test_a_lab_whose_scenario_folder_is_gone_is_destroyed(tmp_path: Path) -> None:
    """settings.json is fine but names a scenario folder deleted since: destroy goes on, and keeps the file."""
    from labtest import copy_scenario

    folder = copy_scenario(tmp_path, {})
    lab = a_lab_that_is_up(tmp_path, scenario=str(folder))
    import shutil

    shutil.rmtree(folder)
    destroy = invoke(tmp_path, "lab.destroy")
    assert destroy.returncode == 0, destroy.stdout + destroy.stderr
    assert (lab / "settings.json").is_file() and not list(lab.glob("settings.json.damaged-*"))


@pytest.mark.integration
def test_no_settings_and_no_vagrant_metadata(tmp_path: Path) -> None:
    lab = a_lab_that_is_up(tmp_path)
    (lab / "settings.json").unlink()
    (lab / ".vagrant").rmdir()
    destroy = invoke(tmp_path, "lab.destroy")
    assert destroy.returncode == 0, destroy.stdout + destroy.stderr
    assert f"lab {NAME} destroyed" in destroy.stdout


# --- item 8: settings changed after lab.up ------------------------------------------------------------

def test_a_changed_vm_key_is_refused_naming_both_values(tmp_path: Path) -> None:
    a_lab_that_is_up(tmp_path)
    result = invoke(tmp_path, "lab.verify", env={"LAB_MEMORY": "2048"})
    line = refusal(result, 2)
    assert line == (f"error: setting 'memory' (from LAB_MEMORY) is 2048, but lab {NAME} was brought up with 1024; "
                    "a new memory needs a new VM")
    assert f"next: invoke lab.destroy --name {NAME}, then lab.up" in result.stderr


def test_a_changed_key_in_lab_toml_is_refused_too(tmp_path: Path) -> None:
    a_lab_that_is_up(tmp_path)
    (tmp_path / "lab.toml").write_text("target = 'bookworm'\ncpus = 4\n")
    line = refusal(invoke(tmp_path, "lab.reset"), 2)
    assert "setting 'cpus' (from lab.toml) is 4, but lab" in line and "brought up with 2" in line


def test_lab_up_of_a_lab_that_is_up_refuses_a_changed_vm_key(tmp_path: Path) -> None:
    a_lab_that_is_up(tmp_path)
    line = refusal(invoke(tmp_path, "lab.up", "--target", "bookworm", "--name", NAME,
                          env={"LAB_LIBVIRT_URI": "qemu+ssh://root@127.0.0.1:1/system"}), 2)
    assert "setting 'libvirt_uri' (from LAB_LIBVIRT_URI) is 'qemu+ssh://root@127.0.0.1:1/system'" in line


def test_a_target_flag_that_is_not_the_labs_is_refused(tmp_path: Path) -> None:
    a_lab_that_is_up(tmp_path)
    line = refusal(invoke(tmp_path, "lab.verify", "--name", NAME, "--target", "trixie"), 2)
    assert "setting 'target' (from --target) is 'trixie', but lab" in line


@pytest.mark.integration
def test_lab_toml_naming_another_target_does_not_stop_the_current_lab(tmp_path: Path) -> None:
    """lab.toml's target is the default for labs to come; the lab brought up last is chosen by name.
    The verify goes on to libvirt, which says the domain is not there (exit 3), and is not refused."""
    a_lab_that_is_up(tmp_path)
    (tmp_path / "lab.toml").write_text("target = 'trixie'\n")
    line = refusal(invoke(tmp_path, "lab.verify"), 3)
    assert f"the VM of lab {NAME} (lab-{NAME}) is not created" in line


@pytest.mark.integration
def test_status_shows_a_change_that_waits_for_a_new_vm(tmp_path: Path) -> None:
    a_lab_that_is_up(tmp_path)
    status = invoke(tmp_path, "lab.status", env={"LAB_CPUS": "4"})
    assert status.returncode == 0, status.stderr
    assert "changed: cpus is 4 in LAB_CPUS, but the lab was brought up with 2: lab.destroy, then lab.up" in \
        status.stdout


@pytest.mark.integration
def test_a_value_is_held_only_against_one_from_as_strong_a_place(tmp_path: Path) -> None:
    """Brought up with LAB_MEMORY=2048 (lab.up recorded where it came from): the checked-in lab.toml's
    memory = 1024 does not stop the next command (it goes on to libvirt, exit 3 here), LAB_MEMORY=4096 does."""
    lab = a_lab_that_is_up(tmp_path, memory=2048)
    (lab / "settings-given.json").write_text(json.dumps({"memory": "LAB_MEMORY", "target": "--target"}))
    (tmp_path / "lab.toml").write_text("memory = 1024\n")
    line = refusal(invoke(tmp_path, "lab.verify"), 3)
    assert f"the VM of lab {NAME} (lab-{NAME}) is not created" in line
    line = refusal(invoke(tmp_path, "lab.verify", env={"LAB_MEMORY": "4096"}), 2)
    assert "setting 'memory' (from LAB_MEMORY) is 4096, but lab" in line and "brought up with 2048" in line


def test_the_layers(tmp_path: Path) -> None:
    frozen = make_settings(tmp_path, target="bookworm", name="x", memory=2048)
    from_file = {"memory": (1024, "lab.toml")}
    assert settings.frozen_changes(frozen, from_file, {"memory": "LAB_MEMORY"}) == []
    assert settings.frozen_changes(frozen, from_file, {"memory": "lab.toml"}) == [("memory", "lab.toml", 2048, 1024)]
    assert settings.frozen_changes(frozen, from_file, {}) == [("memory", "lab.toml", 2048, 1024)], \
        "a default at up, a value in lab.toml now"
    assert settings.frozen_changes(frozen, {"memory": (4096, "--memory")}, {"memory": "LAB_MEMORY"}) != []
    assert settings.frozen_changes(frozen, {"memory": (2048, "LAB_MEMORY")}, {}) == [], "the same value"


def test_run_time_keys_apply_at_once(tmp_path: Path) -> None:
    """main ran a lab on the command_timeout it froze at up (300) whatever LAB_COMMAND_TIMEOUT said."""
    frozen = make_settings(tmp_path, target="bookworm", name="x")
    now = settings.given(environ={"LAB_COMMAND_TIMEOUT": "999", "LAB_KEEP_REPORTS": "3", "LAB_FIXES": "cgm",
                                  "LAB_REACH_TIMEOUT": "45"}, project_dir=tmp_path)
    running = settings.for_lab(frozen, now)
    assert (running.command_timeout, running.keep_reports, running.fixes, running.reach_timeout) == \
        (999, 3, ("cgm",), 45)
    assert running.memory == frozen.memory and running.name == "x"


def test_a_run_time_key_must_still_fit_the_lab(tmp_path: Path) -> None:
    """A fix the lab's scenario does not have on its target is refused, naming where it came from."""
    frozen = make_settings(tmp_path, target="bookworm", name="x")
    now = settings.given(environ={"LAB_FIXES": "no-such-fix"}, project_dir=tmp_path)
    with pytest.raises(errors.SettingError, match="LAB_FIXES"):
        settings.for_lab(frozen, now)


def test_every_key_says_when_it_applies() -> None:
    """One table: each key is RUN, VM or NAMES where it is declared; lab.toml's keys are exactly these."""
    assert set(settings.APPLIES) == set(settings.KEYS)
    assert set(settings.APPLIES.values()) == {settings.RUN, settings.VM, settings.NAMES}
    for key in ("target", "scenario", "memory", "cpus", "libvirt_uri", "box", "provider"):
        assert settings.APPLIES[key] == settings.VM, key
    for key in ("command_timeout", "ssh_timeout", "keep_reports", "fixes", "reach_timeout"):
        assert settings.APPLIES[key] == settings.RUN, key


@pytest.mark.integration
def test_destroying_a_lab_never_brought_up_leaves_nothing(tmp_path: Path) -> None:
    """Seen by a new user: lab.destroy --name of a lab that never existed said "destroyed", left
    .lab/NAME behind, and lab.list showed it as a lab from then on. It still asks libvirt (a lab
    whose folder was deleted by hand is found there), then says there was nothing."""
    result = invoke(tmp_path, "lab.destroy", "--name", "ghost-lab")
    assert result.returncode == 0, result.stderr
    assert "no lab ghost-lab here nor on qemu:///system: nothing to destroy" in result.stdout
    assert "destroyed" not in result.stdout
    assert not (tmp_path / ".lab" / "ghost-lab").exists()
    listed = invoke(tmp_path, "lab.list")
    assert listed.returncode == 0 and "ghost-lab" not in listed.stdout
