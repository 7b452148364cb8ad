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
from lab.core.resources import SCAFFOLD_DIR

ROOT = Path(__file__).resolve().parent.parent
SCAFFOLD = SCAFFOLD_DIR


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
    assert "Input should be a valid dictionary" not in result.stderr, "a value's own error, said once"
    if what == "unknown via":
        assert len(errors) == 1, errors


@pytest.mark.integration
def test_a_script_shellcheck_rejects_is_named_with_its_line(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(SCAFFOLD, folder)
    toml = folder / "scenario.toml"
    toml.write_text(toml.read_text().replace("SCENARIO_ID", "bad"))
    (folder / "teardown.sh").write_text("#!/bin/bash\nuser={{ vars.user|sh }}\nrm -rf $user/*\n")
    result = invoke(tmp_path, "lab.check", "--scenario", str(folder), "--target", "bookworm")
    assert result.returncode == 2
    assert re.search(rf"{re.escape(str(folder))}/teardown\.sh:3: warning: .*(SC2115|SC2086)", result.stderr), \
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
def test_a_mistyped_target_gets_a_suggestion_and_a_config_flag_a_clear_line(tmp_path: Path) -> None:
    """Seen by a new user: lab.check --target bookwrom named no close match (lab.up did), and
    --config of a .toml on a task without that flag reached invoke's own --config: a traceback."""
    typo = invoke(tmp_path, "lab.check", "--scenario", "sudo-lxc-cgroups", "--target", "bookwrom")
    assert typo.returncode == 2 and "did you mean 'bookworm'?" in typo.stderr
    for task in ("lab.check", "lab.verify", "lab.status", "lab.reset", "lab.report", "lab.ssh"):
        missing = invoke(tmp_path, task, "--config", str(tmp_path / "nope.toml"))
        assert missing.returncode == 2, (task, missing.stderr)
        assert missing.stderr.startswith(f"error: settings file {tmp_path / 'nope.toml'} does not exist"), task
        assert "Traceback" not in missing.stderr


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
    # titles are templates: shown rendered with the scenario's vars (seen raw by a new user)
    assert "{{" not in result.stdout and "A cron job of jobuser escapes the TasksMax" in result.stdout


# --- lab.check's catches before any VM boots (issue 20, and 25 item 4): one case each -------------
# (what is caught, old text of the scaffold's scenario.toml, new text, extra files, words that must be in
# the one line that says it, text on the line of scenario.toml it must name (or None))
BASE_START = (r'''start = { command = "sh -c 'grep \"user-$(id -u).slice\" /proc/self/cgroup'", '''
              'via = "sudo", user = "appuser" }')
CATCHES = [
    ("a package the release does not have", "[targets.bookworm]\npackages = []",
     '[targets.bookworm]\npackages = ["lxc-templatez"]', {},
     ["'lxc-templatez' is not a package of Debian bookworm", "did you mean 'lxc-templates'"], "lxc-templatez"),
    ("a non-zero exit through a via that always exits 0", 'via = "ssh", user = "appuser" }\nexpect = "own-slice"',
     'via = "machinectl", user = "appuser" }\nexpect = "own-slice"\nexit = 1', {},
     ["always 0", "machinectl"], None),
    ("an evidence command reading a v1 path on cgroup v2", '{ command = "cat /proc/self/cgroup" },',
     '{ command = "cat /sys/fs/cgroup/memory/memory.limit_in_bytes" },', {},
     ["/sys/fs/cgroup/memory does not exist on bookworm-unified", "will fail"],
     "memory.limit_in_bytes"),
    ("a program no package of the box ships", '{ command = "cat /proc/self/cgroup" },',
     '{ command = "lxc-ls --active" },', {},
     ["'lxc-ls' is not in the box", "lxc", "add it to targets.bookworm.packages"], "lxc-ls --active"),
    ("evidence that differs only by chance", '''expect = "same"
commands = [
  { command = "cat /proc/self/cgroup" },
  { command = "cat /proc/self/cgroup", via = "sudo", user = "appuser" },''', '''expect = "differ"
commands = [
  { command = "cat /proc/self/cgroup" },
  { command = "cat /proc/self/cgroup" },''',
     {}, ["differ only by chance"], None),
    ("a catch-all rule before others", '''rules = [
  { outcome = "own-slice", when = { exit_code = "^0$" } },
  { outcome = "in-admin-session" },
]''', '''rules = [
  { outcome = "in-admin-session" },
  { outcome = "own-slice", when = { exit_code = "^0$" } },
]''', {}, ["matches everything", "can never match; put it last"], None),
    ("a rule field without an observe script", '{ exit_code = "^0$" }', '{ slice = "^user" }', {},
     ["field 'slice': there is no observe script", "can never match"], None),
    ("a rule field the observe script never prints",
     '[observe]\nrules = [\n  { outcome = "own-slice", when = { exit_code = "^0$" } },',
     '[observe]\nscript = "observe.sh"\nrules = [\n  { outcome = "own-slice", when = { slice = "^user" } },',
     {"observe.sh": "#!/bin/bash\necho \"cgroup=$(cat /proc/self/cgroup)\"\n"},
     ["never printed", "observe.sh"], None),
    ("template text in a value", 'user = "appuser"\n', 'user = "appuser"\nwho = "{{ vars.user }}"\n', {},
     ["vars.who", "is a value, not a template"], None),
    ("${#var} in a script", "", "", {"teardown.sh": "#!/bin/bash\nx=abc\necho ${#x}\n"},
     ["`{#` opens a jinja2 comment", "{% raw %}", "teardown.sh:3"], None),
    ("a key given as a value and then per target", "grep finds no line with {{ vars.user }}'s own.\"",
     "grep finds no line with {{ vars.user }}'s own.\"\nwhy.bookworm = \"x\"", {},
     ["why.bookworm: 'why' already has a value (line", "per-target values"], "why.bookworm"),
    ("an undefined var in a fix names the fix and the vars", 'title = "log in as {{ vars.user }}',
     'title = "log in as {{ vars.usr }}', {}, ["fixes[ssh-login].title", "vars defined here: user"], None),
    ("run0 on a target whose systemd lacks it", BASE_START,
     BASE_START.replace('via = "sudo"', 'via = "run0"'), {},
     ["via = 'run0' on bookworm: it came with systemd 256, bookworm has systemd 252"], None),
    ("cron without the cron package", BASE_START, BASE_START.replace('via = "sudo"', 'via = "cron"'), {},
     ["via = 'cron' needs the package 'cron' on bookworm:"], None),
    ("a key that cannot differ by target", 'own-slice = { words = "runs in the user\'s own slice" }',
     'own-slice = { words = { bookworm = "x", "*" = "y" } }', {}, ["cannot differ by target"], "own-slice = {"),
    ("a control that shows the bug", '[[fixes]]\nid = "ssh-login"', '[[controls]]\nid = "sudo-again"\n'
     'title = "t"\nexpect = "in-admin-session"\n\n[[fixes]]\nid = "ssh-login"', {},
     ["a control must not show the bug", "controls[sudo-again]", "on bookworm,"], None),
    ("bash -n on a provisioning script", "", "", {"provision/prepare.sh": "#!/bin/bash\nif true; then\n  echo x\n"},
     ["provision/prepare.sh", "bash -n: syntax error"], None),
    ("a provisioning script runs a program the box lacks", "", "",
     {"provision/prepare.sh": "#!/bin/bash\nset -e\nlxc-create -t busybox -n c1\n"},
     ["provision/prepare.sh:3", "'lxc-create' is not in the box on bookworm:"], None),
    ("a templated user that renders to no user of the scenario", "", "", {}, [], None),
    ("a file outside the scenario and its shared folder", 'script = "provision/prepare.sh"',
     'script = "../../outside.sh"', {}, ["points outside the scenario folder and its shared folder"], None),
    ("a program of /usr/local/bin run by cron without its path", BASE_START,
     BASE_START.replace('via = "sudo"', 'via = "cron"').replace(
         "sh -c 'grep \\\"user-$(id -u).slice\\\" /proc/self/cgroup'", "lab-tool --now"),
     {"provision/prepare.sh": "#!/bin/bash\nprintf '#!/bin/sh\\necho hi\\n' > /usr/local/bin/lab-tool\n",
      "__cron__": ""},
     ["'lab-tool' is made in /usr/local/bin, which is not on cron's PATH", "write its full path"], None),
    ("a login-shell via for a nologin user", 'unprivileged = ["appuser"]',
     'unprivileged = [{ name = "appuser", shell = "/usr/sbin/nologin" }]', {},
     ["runs appuser's login shell, /usr/sbin/nologin, which refuses"], None),
]
# the templated user case: its user renders to a name the scenario does not have
CATCHES[18] = (CATCHES[18][0], BASE_START, BASE_START.replace('user = "appuser"', 'user = "{{ vars.other }}"'),
               {"__vars__": ""}, ["baseline.start.user", "'nobody2' (as rendered) is not a user of the scenario"],
               None)


@pytest.mark.integration
@pytest.mark.parametrize(("what", "old", "new", "files", "says", "on_line"), CATCHES, ids=[c[0] for c in CATCHES])
def test_lab_check_catches_before_any_vm(tmp_path: Path, what: str, old: str, new: str, files: dict[str, str],
                                         says: list[str], on_line: str | None) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(SCAFFOLD, folder)
    toml = folder / "scenario.toml"
    text = toml.read_text().replace("SCENARIO_ID", "bad")
    if "__vars__" in files:
        text = text.replace('user = "appuser"\n', 'user = "appuser"\nother = "nobody2"\n', 1)
    if "__cron__" in files:
        text = text.replace("packages = []", 'packages = ["cron"]')
    if old:
        assert old in text, old
        text = text.replace(old, new, 1)
    toml.write_text(text)
    for rel, content in files.items():
        if not rel.startswith("__"):
            (folder / rel).write_text(content)
    result = invoke(tmp_path, "lab.check", "--scenario", str(folder))
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "Traceback" not in out
    lines = [line for line in result.stderr.splitlines() if all(s in line for s in says)]
    assert len(lines) == 1, (says, result.stderr)
    if on_line is not None:
        assert f"scenario.toml:{line_of(folder, on_line)}" in lines[0], lines[0]


@pytest.mark.integration
def test_a_shellcheck_finding_in_an_inherited_command_is_said_once_at_its_line(tmp_path: Path) -> None:
    """The baseline's start, inherited by two fixes, on two targets: one line, at scenario.toml's line."""
    folder = folder_with(tmp_path, BASE_START,
                         '''start = { command = "cd /tmp; sh -c 'grep \\"user-$(id -u).slice\\" /proc/self/cgroup'", '''
                         '''via = "sudo", user = "appuser" }''')
    toml = folder / "scenario.toml"
    toml.write_text(toml.read_text() + '\n[[fixes]]\nid = "again"\ntitle = "t"\nexpect = "in-admin-session"\n'
                    '\n[[fixes]]\nid = "again2"\ntitle = "t"\nexpect = "in-admin-session"\n')
    result = invoke(tmp_path, "lab.check", "--scenario", str(folder))
    assert result.returncode == 2
    found = [line for line in result.stderr.splitlines() if "SC2164" in line]
    assert len(found) == 1, result.stderr
    assert f"scenario.toml:{line_of(folder, 'cd /tmp;')}: baseline.start.command" in found[0]
    assert found[0].startswith("error: [bookworm, bookworm-unified]"), found[0]


@pytest.mark.integration
def test_an_unreachable_mirror_is_said_and_not_a_problem_of_the_scenario(tmp_path: Path) -> None:
    """Without the package index (a mirror that refuses: a closed port on loopback), lab.check says
    what it could not check and still passes a scenario that is fine otherwise."""
    folder = folder_with(tmp_path, 'id = "bad"', 'id = "fine"')
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env.update(COLUMNS="250", LAB_DEBIAN_MIRROR="http://127.0.0.1:9/debian",
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), "lab.check", "--scenario", str(folder)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "packages and commands not checked: the package index could not be read" in out
    assert "127.0.0.1:9" in out


@pytest.mark.integration
def test_a_program_of_a_required_package_is_in_the_box_and_one_of_no_package_is_not(tmp_path: Path) -> None:
    """mmdebstrap --variant=minbase installs the Essential set, every Priority: required package and
    apt, with their Depends and Pre-Depends (mmdebstrap(1), VARIANTS: "required, minbase: The essential
    set plus all packages with Priority:required and apt"). On trixie `login` is required but not
    Essential: its programs (sg, newgrp, login) are in the box, and lab.check accepts them unlisted;
    lxc-ls (lxc: neither required nor asked for) is refused on the same target, so the index was read."""
    folder = folder_with(tmp_path, "[targets.bookworm-unified]\npackages = []",
                         "[targets.bookworm-unified]\npackages = []\n[targets.trixie]\npackages = []")
    toml = folder / "scenario.toml"
    toml.write_text(toml.read_text().replace(
        '  { command = "cat /proc/self/cgroup" },\n',
        '  { command = "sg appuser -c \'cat /proc/self/cgroup\'" },\n  { command = "lxc-ls --active" },\n', 1))
    result = invoke(tmp_path, "lab.check", "--scenario", str(folder), "--target", "trixie")
    assert result.returncode == 2, result.stdout + result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: [trixie] {folder / 'scenario.toml'}:{line_of(folder, 'lxc-ls')}: evidence[0].commands[1].command: "
        "'lxc-ls' is not in the box on trixie: it comes with lxc; add it to targets.trixie.packages"], result.stderr
