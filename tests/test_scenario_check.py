"""lab.check on bad scenario folders: each kind of mistake is refused with one line naming the file
and the line (or key path), exit code 2; good folders (every shipped scenario, the lab.new
scaffold) pass. Runs the real CLI and, for scripts, the real shellcheck."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab.config import scenario as sc

ROOT = Path(__file__).resolve().parent.parent
SCAFFOLD = ROOT / "templates" / "scaffold"


def invoke(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env["COLUMNS"] = "250"
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def folder_with(tmp_path: Path, old: str, new: str, extra: dict[str, str] | None = None) -> Path:
    """A copy of the scaffold with one text change in scenario.toml (old must be there)."""
    folder = tmp_path / "bad"
    shutil.copytree(SCAFFOLD, folder)
    toml = folder / "scenario.toml"
    text = toml.read_text().replace("SCENARIO_ID", "bad")
    assert old in text, old
    toml.write_text(text.replace(old, new, 1))
    for rel, content in (extra or {}).items():
        (folder / rel).write_text(content)
    return folder


def line_of(folder: Path, needle: str) -> int:
    lines = (folder / "scenario.toml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if needle in line)


# (what is wrong, old text, new text, text on the line the error must name (or None), message part)
MISTAKES = [
    ("unknown top-level key", 'title = "sudo -u', 'titel = "sudo -u', "titel =", "did you mean 'title'"),
    ("unknown key in a fix", 'expect = "own-slice"', 'expext = "own-slice"', "expext =", "did you mean 'expect'"),
    ("unknown target", "[targets.bookworm-unified]", "[targets.bookwurm]", "[targets.bookwurm]",
     "did you mean 'bookworm'"),
    ("outcome used but not defined", 'expect = "own-slice"', 'expect = "own-slise"', "own-slise",
     "not defined in [outcomes]"),
    ("rule names an undefined outcome", '{ outcome = "in-admin-session" },', '{ outcome = "broken" },',
     None, "observe.rules[1].outcome"),
    ("regex that does not compile", '{ exit_code = "^0$" }', '{ exit_code = "^(0$" }', None, "does not compile"),
    ("missing provisioning script", 'script = "provision/prepare.sh"', 'script = "provision/nope.sh"',
     "provision/nope.sh", "does not exist"),
    ("apply without a revert", 'expect = "own-slice"', 'expect = "own-slice"\napply = "teardown.sh"', None,
     "has no revert"),
    ("via needs a user", '{ command = "cat /proc/self/cgroup", via = "sudo", user = "appuser" }',
     '{ command = "cat /proc/self/cgroup", via = "sudo" }', None, "needs user"),
    ("user that the scenario does not have", 'via = "ssh", user = "appuser"', 'via = "ssh", user = "nobody2"',
     None, "not a user of the scenario"),
    ("unknown via", 'via = "ssh", user', 'via = "telnet", user', None, "via"),
    ("not valid TOML", 'id = "bad"', 'id = "bad', 'id = "bad', "not valid TOML"),
    ("template uses an undefined value", 'title = "log in as {{ vars.user }}', 'title = "log in as {{ vars.usr }}',
     None, "fixes[ssh-login].title: 'dict object' has no attribute 'usr'"),
    ("required key missing", '[baseline]\nstart', '[baseline]\nstrat', None, "start"),
    ("fix id not allowed", 'id = "ssh-login"', 'id = "SSH login"', None, "fixes[0].id"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("what", "old", "new", "on_line", "says"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_a_bad_scenario_is_refused_with_file_and_line(tmp_path: Path, what: str, old: str, new: str,
                                                      on_line: str | None, says: str) -> None:
    folder = folder_with(tmp_path, old, new)
    result = invoke(tmp_path, "lab.check", "--scenario", str(folder))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors, result.stderr
    assert says in result.stderr, (says, result.stderr)
    assert str(folder / "scenario.toml") in result.stderr
    if on_line is not None:
        assert f"scenario.toml:{line_of(folder, on_line)}:" in result.stderr, result.stderr


@pytest.mark.integration
def test_a_script_shellcheck_rejects_is_named_with_its_line(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(SCAFFOLD, folder)
    toml = folder / "scenario.toml"
    toml.write_text(toml.read_text().replace("SCENARIO_ID", "bad"))
    (folder / "teardown.sh").write_text("#!/bin/bash\nuser={{ vars.user|sh }}\nrm -rf $user/*\n")
    result = invoke(tmp_path, "lab.check", "--scenario", str(folder), "--target", "bookworm")
    assert result.returncode == 2
    assert re.search(r"teardown\.sh \(as rendered for the lab\):3:\d+: warning: .*(SC2115|SC2086)", result.stderr), \
        result.stderr


@pytest.mark.integration
def test_lab_up_runs_the_same_check_first(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, 'expect = "own-slice"', 'expect = "own-slise"')
    result = invoke(tmp_path, "lab.up", "--scenario", str(folder), "--target", "bookworm")
    assert result.returncode == 2
    assert "own-slise" in result.stderr
    assert not (tmp_path / ".lab").exists(), "nothing may be written before the scenario is valid"


@pytest.mark.integration
@pytest.mark.parametrize("sid", sorted(sc.shipped()))
def test_every_shipped_scenario_checks(tmp_path: Path, sid: str) -> None:
    result = invoke(tmp_path, "lab.check", "--scenario", sid)
    assert result.returncode == 0, result.stderr
    assert f"scenario {sid}" in result.stdout


@pytest.mark.integration
def test_the_scaffold_checks_as_it_is(tmp_path: Path) -> None:
    made = invoke(tmp_path, "lab.new", str(tmp_path / "my-bug"))
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "my-bug" / "scenario.toml").is_file()
    result = invoke(tmp_path, "lab.check", "--scenario", str(tmp_path / "my-bug"))
    assert result.returncode == 0, result.stderr
    again = invoke(tmp_path, "lab.new", str(tmp_path / "my-bug"))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_scenarios_lists_every_shipped_one(tmp_path: Path) -> None:
    result = invoke(tmp_path, "lab.scenarios")
    assert result.returncode == 0
    for sid in sc.shipped():
        assert sid in result.stdout
    assert "pam-cgfs" in result.stdout
