"""The invoke tasks as users run them: subprocesses, exit codes, one-line errors, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def invoke(tmp_path: Path, *args: str, env: dict | None = None,
           columns: str | None = "200") -> subprocess.CompletedProcess[str]:
    """The task run as a user runs it, its output into pipes (no terminal, stdin neither); COLUMNS
    set unless columns is None (then rich sees no width at all, as in a CI log)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAB_") and k != "COLUMNS"}
    clean.update(env or {})
    if columns is not None:
        clean["COLUMNS"] = columns
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args], cwd=tmp_path, env=clean,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)


def assert_clean_refusal(result: subprocess.CompletedProcess[str], tmp_path: Path, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    first = result.stderr.strip().splitlines()[0]
    assert first.startswith("error:")
    for fragment in fragments:
        assert fragment in result.stderr, (fragment, result.stderr)
    assert not (tmp_path / ".lab").exists(), "a refused command must not write state"


def test_list_shows_every_task(tmp_path: Path) -> None:
    result = invoke(tmp_path, "--list")
    assert result.returncode == 0
    for name in ("render", "doctor", "build", "up", "verify", "status", "ssh", "destroy", "report"):
        assert f"lab.{name}" in result.stdout


def test_help_explains_flags(tmp_path: Path) -> None:
    result = invoke(tmp_path, "--help", "lab.up")
    assert result.returncode == 0
    assert "--target" in result.stdout and "trusty, bookworm" in result.stdout


def test_help_shows_the_value_of_a_repeatable_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--fix takes a value and may be repeated; invoke showed it as `-f, --fix`, like a switch (a new
    user's trip). Both ways: invoke's help and the installed command's."""
    from lab.cli.main import program

    result = invoke(tmp_path, "--help", "lab.verify")
    assert result.returncode == 0, result.stderr
    line = next((ln for ln in result.stdout.splitlines() if "--fix" in ln), "")
    assert line.strip().startswith("-f ID, --fix=ID ") and "repeat it" in line, result.stdout
    assert "-n STRING, --name=STRING" in result.stdout  # a flag with one value, as invoke shows it
    with pytest.raises(SystemExit):
        program().run(["cgroup-lab", "--help", "verify"])
    assert "-f ID, --fix=ID " in capsys.readouterr().out
    from invoke.parser import Parser

    from lab.cli.tasks import ns

    parsed = Parser(contexts=ns.to_contexts()).parse_argv(["lab.verify", "--fix", "a", "-f", "b", "lab.status"])
    assert parsed[0].args["fix"].value == ["a", "b"] and parsed[1].name == "lab.status"


@pytest.mark.parametrize(("args", "env", "fragments"), [
    (["lab.render"], {"LAB_TARGET": "xenial"}, ["'target'", "LAB_TARGET", "xenial"]),
    (["lab.render", "--target", "xenial"], {}, ["'target'", "--target"]),
    (["lab.render", "--provider", "docker"], {}, ["'provider'", "docker"]),
    (["lab.render", "--name", "bad name"], {}, ["'name'"]),
    (["lab.render"], {"LAB_CPUS": "lots"}, ["'cpus'", "whole number"]),
    (["lab.render"], {"LAB_MEMORY": "64"}, ["'memory'"]),
    (["lab.render"], {"LAB_SCENARIO": "x$(id)"}, ["'scenario'", "unknown scenario"]),
    (["lab.render", "--scenario", "./nowhere"], {}, ["'scenario'", "--scenario", "no scenario.toml"]),
    (["lab.render"], {"LAB_ADMIN_USER": "labadmin"}, ["unknown environment variable LAB_ADMIN_USER"]),
    (["lab.render"], {"LAB_DEBIAN_MIRROR": "file:///etc"}, ["'debian_mirror'"]),
    (["lab.render"], {"LAB_BOX": "/nope/x.box"}, ["'box'", "no such file"]),
    (["lab.render"], {"LAB_FIXES": "cgm,nope"}, ["'fixes'", "nope"]),
    (["lab.up", "--target", "bookworm", "--provider", "virtualbox"], {}, ["'provider'", "libvirt"]),
    (["lab.build"], {"LAB_TARGT": "bookworm"}, ["LAB_TARGT", "LAB_TARGET"]),
    (["lab.verify"], {}, ["no lab has been brought up"]),
    (["lab.status", "--name", "ghost"], {}, ["ghost", "has not been brought up"]),
    (["lab.prune", "--libvirt-uri", "qemu+tcp://h/system"], {}, ["'libvirt_uri'", "qemu+tcp is unencrypted"]),
])
def test_bad_input_is_refused_cleanly(tmp_path: Path, args: list[str], env: dict, fragments: list[str]) -> None:
    assert_clean_refusal(invoke(tmp_path, *args, env=env), tmp_path, *fragments)


def test_a_shell_character_in_the_admins_name_is_refused(tmp_path: Path) -> None:
    """The admin is the scenario's ([users] admin); a name that would reach a script unquoted is
    refused with the file and the key, before anything is rendered."""
    from labtest import copy_scenario

    folder = copy_scenario(tmp_path, {'admin = "labadmin"': 'admin = "adm;reboot"'})
    result = invoke(tmp_path, "lab.render", "--target", "bookworm", "--scenario", str(folder))
    assert_clean_refusal(result, tmp_path, "scenario.toml:21: users.admin", "should match pattern")


def test_bad_lab_toml(tmp_path: Path) -> None:
    (tmp_path / "lab.toml").write_text("targte = 'bookworm'\n")
    assert_clean_refusal(invoke(tmp_path, "lab.render"), tmp_path, "unknown key 'targte'", "did you mean 'target'")
    (tmp_path / "lab.toml").write_text("target = [\n")
    assert_clean_refusal(invoke(tmp_path, "lab.render"), tmp_path, "not valid TOML")


def test_render_writes_the_lab_and_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(tmp_path, "lab.render", "--target", "trusty", "--out", str(out))
    assert result.returncode == 0, result.stderr
    vf = (out / "Vagrantfile").read_text()
    assert "'lab-sudo-lxc-cgroups-trusty'" in vf
    scripts = "\n".join(p.read_text() for p in (out / "provision").glob("*.sh"))
    for package in ("lxc", "lxc-templates", "uidmap", "libpam-cgm", "linux-generic-lts-vivid"):
        assert package in scripts
    assert not (tmp_path / ".lab").exists()


def test_render_default_goes_to_dot_lab(tmp_path: Path) -> None:
    result = invoke(tmp_path, "lab.render", "--target", "bookworm", "--name", "demo")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / ".lab/demo/Vagrantfile").is_file()
    assert (tmp_path / ".lab/demo/ssh/id_ed25519").stat().st_mode & 0o077 == 0


def test_destroy_without_a_lab_is_fine(tmp_path: Path) -> None:
    result = invoke(tmp_path, "lab.destroy")
    assert result.returncode == 0
    assert "no lab to destroy" in result.stdout


def bare_path(tmp_path: Path) -> str:
    """A PATH with python and the basic commands, but none of the lab's tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("env", "sh", "bash", "uname", "id"):
        src = shutil.which(tool)
        if src:
            (bin_dir / tool).symlink_to(src)
    return str(bin_dir)


def test_doctor_names_every_missing_tool_with_a_hint(tmp_path: Path) -> None:
    result = invoke(tmp_path, "lab.doctor", "--target", "bookworm", env={"PATH": bare_path(tmp_path)})
    assert result.returncode == 1
    for tool, hint in (("vagrant", "apt-get install vagrant"), ("mmdebstrap", "apt-get install mmdebstrap"),
                       ("qemu-img", "apt-get install qemu-utils"), ("virsh", "apt-get install libvirt-clients")):
        line = next((ln for ln in result.stdout.splitlines() if f" {tool} " in ln), "")
        assert "not found" in line and hint in line, (tool, result.stdout)
    assert "cannot be brought up" in result.stdout


def test_a_long_line_into_a_pipe_arrives_as_one_line(tmp_path: Path) -> None:
    """Output piped to a file or a CI log (no terminal, no COLUMNS) was wrapped at rich's 80 columns
    (found by a new user): each of lab.doctor's lines, hint included, arrives whole."""
    result = invoke(tmp_path, "lab.doctor", "--target", "bookworm", env={"PATH": bare_path(tmp_path)}, columns=None)
    lines = result.stdout.splitlines()
    kvm = next(ln for ln in lines if " kvm " in ln)
    assert len(kvm) > 80 and kvm.endswith("check /dev/kvm and the CPU's virtualisation flags"), result.stdout
    virsh = next(ln for ln in lines if " virsh " in ln)
    assert virsh.endswith("apt-get install libvirt-clients libvirt-daemon-system"), result.stdout
    assert all(ln.startswith((" ", "lab.doctor", "target")) for ln in lines), result.stdout  # no piece of a line


def test_without_a_terminal_text_and_a_rules_title_are_whole_and_boxes_keep_their_width() -> None:
    """The console behind every task, writing into a file: a long string and a rule's long title
    (verify's opening: the scenario's and the target's titles, which rich cut with an ellipsis) stay
    one whole line; a panel is still laid out in rich's 80 columns."""
    import io

    from rich.panel import Panel

    from lab.core.console import _AsTyped

    out = _AsTyped(file=io.StringIO(), highlight=False)
    title = "sudo -u keeps the admin's cgroups: an unprivileged lxc container cannot start"
    out.rule(f"[bold]{title}[/] [dim]on Debian 12 (bookworm), hybrid cgroups[/]")
    out.print("word " * 40 + "end")
    out.print(Panel("x " * 60))
    lines = out.file.getvalue().splitlines()
    assert lines[0] == f"── {title} on Debian 12 (bookworm), hybrid cgroups ──"
    assert lines[1] == "word " * 40 + "end"
    assert len(lines) > 4 and {len(ln) for ln in lines[2:]} == {80}


@pytest.mark.integration
def test_doctor_passes_on_this_host(tmp_path: Path) -> None:
    result = invoke(tmp_path, "lab.doctor", "--target", "bookworm")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ready to bring the lab up" in result.stdout
    assert "kvm" in result.stdout and "accelerator" in result.stdout


def test_build_without_tools_says_which_before_any_work(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = invoke(tmp_path, "lab.build", "--target", "bookworm",
                    env={"PATH": bare_path(tmp_path), "XDG_CACHE_HOME": str(cache)})
    assert_clean_refusal(result, tmp_path, "mmdebstrap is not installed", "apt-get install mmdebstrap")
    assert not cache.exists(), "nothing may be created before the tools are there"


def test_up_without_its_tools_says_so_before_any_work(tmp_path: Path) -> None:
    """A Debian lab starts from its image with virsh alone; a trusty lab needs Vagrant."""
    path = bare_path(tmp_path)
    result = invoke(tmp_path, "lab.up", "--target", "bookworm", env={"PATH": path})
    assert_clean_refusal(result, tmp_path, "virsh is not installed", "apt-get install libvirt-clients")
    result = invoke(tmp_path, "lab.up", "--target", "trusty", "--provider", "libvirt", env={"PATH": path})
    assert_clean_refusal(result, tmp_path, "vagrant is not installed", "apt-get install vagrant")


def test_trusty_build_refuses_when_the_iso_does_not_answer(tmp_path: Path) -> None:
    """The ISO URL points at a closed port on loopback (no traffic leaves the machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = invoke(tmp_path, "lab.build", "--target", "trusty",
                    env={"LAB_ISO_URL": f"http://127.0.0.1:{port}/ubuntu-14.04.6-server-amd64.iso",
                         "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 3, result.stderr  # the testbed's reach, not a bad setting
    assert "Traceback" not in result.stderr
    assert "cannot be built here: the Ubuntu 14.04 ISO cannot be reached from this host" in result.stderr
    assert "local box" in result.stderr


def test_an_unwritable_path_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """--out naming a file, lab.new under /proc: one line with the path, exit 2 (found by a fresh user)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    result = invoke(tmp_path, "lab.render", "--target", "bookworm", "--out", str(a_file))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert str(a_file) in result.stderr and "check the path" in result.stderr
    result = invoke(tmp_path, "lab.new", "/proc/cgroup-lab-test")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_new_into_folders_that_do_not_exist_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """lab.new PATH whose folders above do not exist made them without a word (a new user's trip): a
    mistyped folder is refused, naming it, with mkdir -p as the hint; nothing is created."""
    result = invoke(tmp_path, "lab.new", "bgus/2026/my-bug")
    assert_clean_refusal(result, tmp_path, f"{tmp_path / 'bgus/2026'} does not exist", "never the folders above it",
                         f"mkdir -p {tmp_path / 'bgus/2026'}")
    assert not (tmp_path / "bgus").exists()
    (tmp_path / "a-file").write_text("x")
    assert_clean_refusal(invoke(tmp_path, "lab.new", "a-file/my-bug"), tmp_path, "a-file is not a folder")
    made = invoke(tmp_path, "lab.new", "my-bug")  # in the folder it runs in, as README shows
    assert made.returncode == 0 and (tmp_path / "my-bug/scenario.toml").is_file(), made.stderr


@pytest.mark.parametrize("text", ["[]", '{"fixes": 5}', "{}"])
def test_a_damaged_record_is_refused_by_lab_report(tmp_path: Path, text: str) -> None:
    from labtest import make_settings

    run = tmp_path / ".lab" / "demo" / "reports" / "20261129-000000"
    run.mkdir(parents=True)
    (tmp_path / ".lab" / "demo" / "settings.json").write_text(make_settings(tmp_path, target="bookworm",
                                                                           name="demo").to_json())
    (run / "verify.json").write_text(text)
    result = invoke(tmp_path, "lab.report", "--name", "demo", "--run", run.name)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "is not a verify record" in result.stderr
