"""The installable tool (issue 23): the wheel is built from the checkout's files, installed into a
fresh venv outside the checkout, and `cgroup-lab` runs from a temporary directory with its
scenarios and templates from the package, its state in ./.lab there.

Offline: the wheel is built with the installed setuptools (--no-build-isolation), and the venv sees
the installed dependencies (--system-site-packages), so pip resolves them with --no-index; `lab`
itself is imported from the venv (asserted). The vm tests boot labs with the installed command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.core import resources

ROOT = Path(__file__).resolve().parent.parent
PLAYER_FILES = ("LICENSE", "dist/bundle/asciinema-player.min.js", "dist/bundle/asciinema-player.css")


def run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """argv in cwd without the checkout on any path: no LAB_* settings, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["COLUMNS"] = "200"
    started = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    print(f"--- {' '.join(argv)}: exit {result.returncode} in {time.monotonic() - started:.1f}s")
    print(result.stdout[-4000:], result.stderr[-3000:])
    return result


@dataclass(frozen=True)
class Installed:
    """The built wheel and the venv it is installed in; `cgroup-lab` is the venv's console script."""

    wheel: Path
    venv: Path

    @property
    def command(self) -> str:
        return str(self.venv / "bin" / "cgroup-lab")

    def __call__(self, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run([self.command, *args], cwd, timeout)


def source_copy(dest: Path) -> Path:
    """The checkout's files as a clean clone has them (tracked and new, not ignored), plus the
    asciinema player that setup.sh installed (ignored, but built into the wheel)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    player = resources.PLAYER_PACKAGE / "node_modules" / "asciinema-player"
    for name in PLAYER_FILES:
        if not (player / name).is_file():
            pytest.fail(f"the asciinema player is not installed in {player}: run ./setup.sh")
        target = dest / player.relative_to(ROOT) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(player / name, target)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("package")
    src = source_copy(base / "src")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "--disable-pip-version-check", "-w", str(base / "dist"), str(src)], base)
    assert built.returncode == 0, built.stderr
    (wheel,) = (base / "dist").glob("cgroup_lab-*.whl")
    shutil.rmtree(src)  # nothing may read the tree the wheel came from
    venv = base / "venv"
    made = run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], base)
    assert made.returncode == 0, made.stderr
    pip = run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-index", "--disable-pip-version-check",
               str(wheel)], base)
    assert pip.returncode == 0, pip.stderr
    yield Installed(wheel=wheel, venv=venv)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory outside the checkout, as a user's bug folder would be."""
    assert ROOT not in tmp_path.parents
    return tmp_path


@pytest.mark.integration
def test_the_wheel_carries_the_data_and_nothing_else(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    data = "lab/data/"
    for shipped in (ROOT / "lab" / "data").rglob("*"):
        rel = shipped.relative_to(ROOT).as_posix()
        if shipped.is_file() and "node_modules" not in rel:
            assert rel in names, f"{rel} is not in the wheel"
    assert {f"{data}Vagrantfile.j2", f"{data}packer/trusty.pkr.hcl", f"{data}templates/images/identity.sh.j2",
            f"{data}templates/lib/linger.sh.j2",
            f"{data}scenarios/sudo-lxc-cgroups/scenario.toml", f"{data}templates/scaffold/scenario.toml",
            "lab/config/targets/bookworm.toml"} <= names
    assert {f"{data}player/node_modules/asciinema-player/{name}" for name in PLAYER_FILES} <= names
    assert not [n for n in names if n.startswith(("tests/", "tasks/", "lab/data/player/node_modules/.bin"))]
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "cgroup-lab = lab.cli.main:main" in zipfile.ZipFile(installed.wheel).read(entry).decode()


@pytest.mark.integration
def test_the_venv_runs_its_own_copy(installed: Installed, outside: Path) -> None:
    where = run([str(installed.venv / "bin" / "python"), "-c",
                 "import lab, lab.core.resources as r; print(lab.__file__); print(r.DATA_DIR)"], outside)
    lab_file, data_dir = where.stdout.split()
    site = installed.venv / "lib"
    assert Path(lab_file).is_relative_to(site) and Path(data_dir).is_relative_to(site), where.stdout


@pytest.mark.integration
def test_list_and_help_are_invokes_own(installed: Installed, outside: Path) -> None:
    """The same collection as `invoke lab.*`: the same task names (without the prefix), the same flags."""
    ours = installed(outside, "--list")
    assert ours.returncode == 0, ours.stderr
    theirs = run([sys.executable, "-m", "invoke", "-r", str(ROOT), "--list"], outside)
    names = {line.split()[0] for line in ours.stdout.splitlines() if line[:2] == "  " and line[2:3].strip()}
    invoke_names = {line.split()[0].removeprefix("lab.") for line in theirs.stdout.splitlines()
                    if line.strip().startswith("lab.")}
    assert names == invoke_names and {"up", "verify", "list", "new", "check", "render"} <= names
    helped = installed(outside, "--help", "up")
    assert helped.returncode == 0
    assert "Usage: cgroup-lab [--core-opts] up" in helped.stdout and "--target" in helped.stdout
    assert installed(outside, "--version").stdout.strip() == "cgroup-lab 0.1.0"
    bad = installed(outside, "up", "--no-such-flag")
    assert bad.returncode == 1 and "No idea what '--no-such-flag' is!" in bad.stderr  # invoke's parser, exit 1


@pytest.mark.integration
def test_new_check_render_from_a_bug_folder(installed: Installed, outside: Path) -> None:
    made = installed(outside, "new", "my-bug")
    assert made.returncode == 0, made.stderr
    assert (outside / "my-bug" / "scenario.toml").is_file()
    assert f"cgroup-lab check --scenario {outside / 'my-bug'}" in made.stdout  # the hint as the user types it
    assert "invoke" not in made.stdout
    assert "`cgroup-lab check --scenario THIS_FOLDER`" in (outside / "my-bug" / "scenario.toml").read_text()
    checked = installed(outside, "check", "--scenario", "my-bug")
    assert checked.returncode == 0, checked.stderr
    assert "scenario my-bug" in checked.stdout and "is fine on bookworm, bookworm-unified" in checked.stdout
    seed = installed(outside, "check")
    assert seed.returncode == 0 and "scenario sudo-lxc-cgroups" in seed.stdout, seed.stderr

    rendered = installed(outside, "render", "--target", "trusty")
    assert rendered.returncode == 0, rendered.stderr
    vagrantfile = (outside / ".lab" / "sudo-lxc-cgroups-trusty" / "Vagrantfile").read_text()
    assert "ubuntu" in vagrantfile.lower() and f"{ROOT}/" not in vagrantfile  # (a cache beside it may share a prefix)
    mine = installed(outside, "render", "--target", "bookworm", "--scenario", "./my-bug")
    assert mine.returncode == 0, mine.stderr
    lab = outside / ".lab" / "my-bug-bookworm"
    assert (lab / "Vagrantfile").is_file() and (lab / "settings.json").is_file()
    assert json.loads((lab / "settings.json").read_text())["scenario"] == str(outside / "my-bug")

    listed = installed(outside, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert sorted(rows) == ["my-bug-bookworm", "sudo-lxc-cgroups-trusty"]
    assert rows["my-bug-bookworm"]["scenario"] == "my-bug" and rows["my-bug-bookworm"]["phase"] == "absent"


@pytest.mark.integration
def test_settings_and_errors_from_the_directory(installed: Installed, outside: Path) -> None:
    """lab.toml is read from the directory the command runs in; errors are one line, hints name cgroup-lab."""
    (outside / "lab.toml").write_text('target = "xenial"\n')
    bad = installed(outside, "render")
    assert bad.returncode == 2 and bad.stderr.startswith("error: setting 'target' (from lab.toml)"), bad.stderr
    assert "Traceback" not in bad.stderr
    (outside / "lab.toml").unlink()
    nothing = installed(outside, "verify")
    assert nothing.returncode == 2
    assert "no lab has been brought up in this directory" in nothing.stderr
    assert "hint: run: cgroup-lab up" in nothing.stderr
    assert not (outside / ".lab").exists()


def test_the_data_lives_only_in_the_package() -> None:
    """Scenarios, templates, packer files and Vagrantfile.j2 live under lab/data/ (lab.core.resources),
    never again at the top of the checkout, where the installed command would not see them. A branch
    from before the move that adds a new folder there (scenarios/NEW/) merges it at the old place
    (git follows renamed folders only for files in folders that existed): git mv it into lab/data/."""
    stale = subprocess.run(["git", "ls-files", "--", "scenarios", "templates", "packer", "Vagrantfile.j2", "vendor"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert stale == [], f"move these into lab/data/ (git mv): {stale}"
    assert resources.SCENARIOS_DIR == ROOT / "lab" / "data" / "scenarios" and resources.SCENARIOS_DIR.is_dir()


def test_messages_name_the_tasks_as_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under cgroup-lab, `invoke lab.X ... lab.Y` and a bare lab.X read as the user types them; other
    text (lab.toml, .lab/, a path with lab. in it) is left alone; under invoke nothing changes."""
    from lab.core import console

    text = ("next: invoke lab.verify (or lab.reset for the baseline); start over: invoke lab.destroy lab.up; "
            "invoke lab.up --scenario /x/lab.up/y --target bookworm lab.verify\nsee lab.toml and .lab/x; lab.verifying")
    assert console.as_typed(text) == text
    monkeypatch.setattr(console, "_program", "cgroup-lab")
    assert console.as_typed(text) == (
        "next: cgroup-lab verify (or cgroup-lab reset for the baseline); start over: cgroup-lab destroy up; "
        "cgroup-lab up --scenario /x/lab.up/y --target bookworm verify\nsee lab.toml and .lab/x; lab.verifying")


# --- vm: labs brought up and verified by the installed command ---


def leftovers(name: str) -> list[str]:
    domain = f"lab-{name}"
    out = []
    for what in (("list", "--all", "--name"), ("net-list", "--all", "--name")):
        listed = subprocess.run(["virsh", "-c", "qemu:///system", *what], capture_output=True, text=True,
                                timeout=60, check=False).stdout.split()
        out += [n for n in listed if n == domain]
    return out


@pytest.mark.vm
def test_up_verify_list_with_the_installed_command(installed: Installed, outside: Path) -> None:
    """From a bug folder outside the checkout: the seed scenario, then a `cgroup-lab new` scenario,
    each brought up on bookworm-unified and verified. `list` shows the seed's lab running, then, after
    its destroy and the second lab's verify, both labs: the first not created (libvirt's answer) and
    absent, the second running; both verified with their verdict met. One VM at a time; every lab is
    destroyed in a finally."""
    tag = uuid.uuid4().hex[:6]
    seed, mine = f"pkg-seed-{tag}", f"pkg-bug-{tag}"

    def up_and_verify(name: str, scenario: str) -> None:
        up = installed(outside, "up", "--target", "bookworm-unified", "--scenario", scenario, "--name", name,
                       timeout=3000)
        assert up.returncode == 0, up.stderr
        assert "next: cgroup-lab verify" in up.stdout
        verified = installed(outside, "verify", "--name", name, timeout=1800)
        assert verified.returncode == 0, verified.stdout[-3000:] + verified.stderr
        assert (outside / ".lab" / name / "reports" / "latest" / "verify.json").is_file()

    def listed() -> dict[str, dict]:
        result = installed(outside, "list", "--json")
        assert result.returncode == 0, result.stderr
        return {row["name"]: row for row in json.loads(result.stdout)}

    try:
        assert installed(outside, "new", "my-bug").returncode == 0
        up_and_verify(seed, "sudo-lxc-cgroups")
        first = listed()
        assert list(first) == [seed]
        assert (first[seed]["domain"], first[seed]["verdict"]) == ("running", "met")
        destroyed = installed(outside, "destroy", "--name", seed, timeout=600)
        assert destroyed.returncode == 0, destroyed.stderr

        up_and_verify(mine, "./my-bug")
        rows = listed()
        assert sorted(rows) == sorted([seed, mine])
        assert rows[seed]["scenario"] == "sudo-lxc-cgroups" and rows[mine]["scenario"] == "my-bug"
        for row in rows.values():
            assert (row["target"], row["host"]) == ("bookworm-unified", "qemu:///system")
            assert row["verdict"] == "met" and row["verified_at"]
        assert rows[seed]["domain"] == "not created" and rows[seed]["phase"].startswith("absent (destroy ")
        assert rows[mine]["domain"] == "running" and rows[mine]["phase"].startswith("verified (verify ")
        table = installed(outside, "list")
        assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == sorted([seed, mine])
    finally:
        for name in (seed, mine):
            installed(outside, "destroy", "--name", name, timeout=600)
    assert leftovers(seed) == [] and leftovers(mine) == []


def test_setup_takes_tests_and_refuses_an_unknown_option() -> None:
    """setup.sh has one option, --tests (what only the suite needs: Chromium, sshd, pytest...); a
    typo is refused with one line and exit 2 before anything is installed."""
    import subprocess

    result = subprocess.run([str(ROOT / "setup.sh"), "--test"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == ("setup: unknown option --test (the one option is --tests: also what the "
                                     "test suite needs)")
    text = (ROOT / "setup.sh").read_text()
    assert '[ "$tests" = 1 ] && packages+=(chromium openssh-server)' in text
    assert (ROOT / ".ci" / "run").read_text().count("./setup.sh --tests") == 1
