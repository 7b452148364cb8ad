"""Exits that say the right thing (issue 19, items 4 and 5; issue 21, item 4).

- One way to run a process: no subprocess, os.system or os.exec call outside lab/host/proc.py (the
  walk over the code is itself tested, so it can fail).
- Every `raise` of the tool is checked against the README's exit-code table, and the machinery
  (host, images, remote, the Vagrant wrapper) never raises the bad-input error.
- proc.run: a timeout or a failure is a TestbedError, never a CalledProcessError or TimeoutExpired;
  verbose mode shows `+ argv`.
- An OSError: a path the user gave is exit 2; a full disk under the lab's own state is exit 3
  (a real tmpfs filled up).
- wait_until says what it waited for and what it last saw.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.core import errors
from lab.core.errors import LabError, ToolMissing, user_path
from lab.core.wait import NotYet, Stopped, wait_until
from lab.host import proc

ROOT = Path(__file__).resolve().parent.parent
PROC = ROOT / "lab" / "host" / "proc.py"


def sources() -> list[Path]:
    return sorted([*(ROOT / "lab").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")])


# --- one way to run a process ---------------------------------------------------------------------

RUNNERS = {"subprocess": {"run", "Popen", "call", "check_call", "check_output", "getoutput", "getstatusoutput"},
           "os": {"system", "popen", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
                  "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
                  "posix_spawn", "posix_spawnp", "fork", "forkpty"},
           "asyncio": {"create_subprocess_exec", "create_subprocess_shell"}, "pty": {"spawn", "fork"}}


def process_calls(text: str) -> list[str]:
    """Every call in the code that starts a process, as `module.function` with its line, however
    the module or function was imported (import x, import x as y, from x import f [as g])."""
    tree = ast.parse(text)
    modules: dict[str, str] = {}  # local name -> module
    functions: dict[str, str] = {}  # local name -> module.function
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in RUNNERS:
                    modules[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module in RUNNERS:
            for alias in node.names:
                if alias.name in RUNNERS[node.module]:
                    functions[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in modules:
            module = modules[func.value.id]
            if func.attr in RUNNERS[module]:
                found.append(f"{module}.{func.attr} (line {node.lineno})")
        elif isinstance(func, ast.Name) and func.id in functions:
            found.append(f"{functions[func.id]} (line {node.lineno})")
    return found


def test_the_walk_finds_every_way_to_start_a_process() -> None:
    sample = ("import subprocess\nimport subprocess as sp\nimport os\nfrom os import system as sh, execvp\n"
              "from subprocess import check_output\nimport asyncio\n"
              "subprocess.run(['x'])\nsp.Popen(['x'])\nos.system('x')\nsh('x')\nexecvp('x', [])\n"
              "check_output(['x'])\nasyncio.create_subprocess_exec('x')\nos.path.join('a')\nprint('run')\n")
    assert [c.split(" ")[0] for c in process_calls(sample)] == [
        "subprocess.run", "subprocess.Popen", "os.system", "os.system", "os.execvp", "subprocess.check_output",
        "asyncio.create_subprocess_exec"]


@pytest.mark.parametrize("path", [p for p in sources() if p != PROC], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_process_is_started_outside_proc(path: Path) -> None:
    assert process_calls(path.read_text(encoding="utf-8")) == [], f"{path}: use lab.host.proc.run (or exec_)"


def test_nothing_outside_proc_even_imports_subprocess() -> None:
    """So no CalledProcessError or TimeoutExpired can be raised or caught anywhere else."""
    importing = []
    for path in sources():
        if path == PROC:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if "subprocess" in names:
                importing.append(str(path.relative_to(ROOT)))
    assert importing == []


# --- every raise against the README's exit-code table ------------------------------------------------

# Exceptions raised that are not errors for the user: each is caught where named (checked by reading).
INTERNAL = {
    "ValueError": "pydantic validators in lab/config/scenario.py (pydantic turns it into a ScenarioError); "
                  "plan's via table (a programming error)",
    "BadUri": "lab/config/libvirt_uri.py; settings turns it into a SettingError",
    "RecordError": "lab/run/record.py; lab.report.load_record turns it into a LabError, lab.matrix leaves the "
                   "record out of the cell",
    "TimeoutError": "lab/remote: command_failed() turns it into a TestbedError",
    "EOFError": "lab/remote/shell.py: command_failed() turns it into a TestbedError",
    "paramiko.SSHException": "lab/remote/ssh.py: command_failed() turns it into a TestbedError",
    "NotYet": "lab/core/wait.py: wait_until's 'not yet'",
    "Stopped": "lab/core/wait.py: the early login's cancel (lifecycle._EarlyLogin)",
    "Stop": "lab/run/live.py: the presenter's q, caught by the engine",
    "KeptFailing": "lab/run/engine.py: --keep-failing, caught by the engine",
    "_ScriptFailed": "lab/images/layer.py: a provisioning script that failed, caught by the layer's build "
                     "(it becomes ProvisionFailed)",
    "KeyboardInterrupt": "lab/cli/tasks.py: SIGTERM as Ctrl-C, exit 130",
    "IndexUnavailable": "lab/render/debindex.py: lab.render.check turns it into a note (what was not checked)",
    "TtyError": "lab/run/vias.py: run_tty turns it into a TestbedError (command_failed)",
    "TtyEnded": "lab/run/vias.py: run_tty records the ended login as the command's result (exit 1)",
}
# Raises whose error is built elsewhere (a function returning the error, or one already caught).
PASSED_ON = {"failed", "command_failed", "failures[0]", "self.broken", "error or TestbedError", "exc", "gone",
             "stop", "kept"}
# The machinery may refuse bad input only here: (file, the message's start), with why.
MACHINERY_INPUT = {
    ("lab/host/libvirt.py", "f\"domain {domain} belongs to someone else"): "a name another checkout took: --name",
}
MACHINERY = ("lab/host/", "lab/images/", "lab/remote/", "lab/machine/vagrant.py")


def exit_table() -> dict[int, set[str]]:
    """The README's exit-code table: code -> the error classes its row names."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        m = re.match(r"^\| (\d+) \| .*\|\s*(.*?)\s*\|$", line)
        if m:
            table[int(m.group(1))] = set(re.findall(r"`(\w+)`", m.group(2)))
    return table


def raises() -> list[tuple[str, int, str, str]]:
    """(file, line, what is raised, the first argument's source) for every raise in lab/ and tasks.py."""
    found = []
    for path in sources():
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                call = node.exc if isinstance(node.exc, ast.Call) else None
                name = ast.unparse(call.func if call else node.exc)
                first = ast.unparse(call.args[0]) if call and call.args else ""
                found.append((rel, node.lineno, name, first))
    return found


def test_the_table_names_every_code_and_class() -> None:
    table = exit_table()
    assert set(table) == {0, 1, 2, 3, 4, 130}
    classes = {name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, LabError)}
    from lab.config.scenario import ScenarioError

    classes["ScenarioError"] = ScenarioError
    for code, names in table.items():
        for name in names - {"KeyboardInterrupt", "OSError"}:
            assert classes[name].exit_code == code, f"README says {name} exits {code}"
    assert set(classes) <= set().union(*table.values()), "every error class has its row"


def test_every_raise_is_in_the_table() -> None:
    table = exit_table()
    known = set().union(*table.values())
    unknown = []
    for rel, line, name, _ in raises():
        if name in known or name in INTERNAL or name in PASSED_ON or name == "Exit":  # Exit: the next test
            continue
        unknown.append(f"{rel}:{line}: raise {name}")
    assert unknown == [], "a new kind of raise: add it to the README's table (or INTERNAL, saying where it is caught)"


def test_every_exit_code_given_to_invoke_is_in_the_table() -> None:
    text = (ROOT / "lab" / "cli" / "tasks.py").read_text(encoding="utf-8")
    codes = {int(c) for c in re.findall(r"raise Exit\(code=(\d+)\)", text)}
    assert codes and codes <= set(exit_table())
    assert "raise Exit(code=exc.exit_code)" in text and "raise Exit(code=error.exit_code)" in text


def test_the_machinery_never_raises_the_bad_input_error() -> None:
    """Failures of vagrant, virsh, packer, SSH and the builds are the testbed's (exit 3), not the input's."""
    bad_input = {"LabError", "SettingError", "ScenarioError", "FrozenSetting"}
    found = [(rel, first) for rel, _, name, first in raises()
             if rel.startswith(MACHINERY) and name in bad_input and
             not any(rel == f and first.startswith(m) for f, m in MACHINERY_INPUT)]
    assert found == []


def test_the_check_above_can_fail() -> None:
    """The same filter, on a made-up raise of LabError in lab/host/: found."""
    made_up = [("lab/host/libvirt.py", 1, "LabError", 'f"virsh failed"')]
    assert [r for r in made_up if r[0].startswith(MACHINERY) and r[2] == "LabError"] == made_up


# --- proc.run: no subprocess exception escapes ------------------------------------------------------

def test_a_timeout_is_a_testbed_error_naming_what_it_waited_for() -> None:
    started = time.monotonic()
    with pytest.raises(errors.TestbedError, match=r"sleeping: gave up after 1s waiting for the sleep to end"):
        proc.run(["sleep", "30"], step="sleeping", timeout=1, waiting_for="the sleep to end")
    assert time.monotonic() - started < 10


def test_a_failure_is_a_testbed_error_with_the_command_and_its_last_lines() -> None:
    with pytest.raises(errors.TestbedError) as info:
        proc.run(["sh", "-c", "echo one; echo two >&2; exit 7"], step="failing", timeout=30)
    assert info.value.exit_code == 3
    assert "failing failed (exit 7): sh -c 'echo one; echo two >&2; exit 7'" in info.value.message
    assert "one" in info.value.message and "two" in info.value.message


def test_stderr_kept_apart_and_a_missing_tool() -> None:
    result = proc.run(["sh", "-c", "echo out; echo err >&2; exit 3"], step="x", timeout=30, check=False,
                      split_stderr=True)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out", "err")
    with pytest.raises(ToolMissing, match="no-such-tool-here is not installed"):
        proc.run(["no-such-tool-here"], step="x", timeout=5)


def test_verbose_shows_each_command_line() -> None:
    code = ("from lab.host import proc; proc.set_verbose(True); "
            "proc.run(['echo', 'a b'], step='x', timeout=30)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         check=True, env={**os.environ, "COLUMNS": "200"})
    assert "+ echo 'a b'" in out.stderr
    quiet = subprocess.run([sys.executable, "-c", code.replace("True", "False")], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, check=True)
    assert "+ echo" not in quiet.stderr


# --- wait_until -----------------------------------------------------------------------------------

def test_wait_until_returns_the_answer() -> None:
    answers = iter([None, False, "there"])
    assert wait_until("the thing", lambda: next(answers), 5, interval=0.01) == "there"


def test_wait_until_says_what_it_waited_for_and_last_saw() -> None:
    seen = iter(range(100))

    def check() -> None:
        raise NotYet(f"state {next(seen)}")

    with pytest.raises(errors.TestbedError) as info:
        wait_until("the door to open", check, 0.3, interval=0.05)
    message = info.value.message
    assert message.startswith("gave up after 0s waiting for the door to open (")
    last = int(re.search(r"last seen: state (\d+)", message).group(1))  # type: ignore[union-attr]
    assert last >= 2 and f"({last + 1} tries;" in message


def test_wait_until_retries_on_named_errors_and_lets_others_through() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("refused")
        return "up"

    assert wait_until("flaky", flaky, 5, interval=0.01, retry_on=(OSError,)) == "up"
    with pytest.raises(ZeroDivisionError):
        wait_until("broken", lambda: 1 / 0, 5, interval=0.01, retry_on=(OSError,))
    with pytest.raises(errors.LabBusy, match="last seen: OSError: held"):
        wait_until("the lock", lambda: (_ for _ in ()).throw(OSError("held")), 0.1, interval=0.02,
                   retry_on=(OSError,), error=errors.LabBusy)


def test_wait_until_stops_when_told() -> None:
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        wait_until("never", lambda: None, 30, interval=1.0, stop=stop)
    assert time.monotonic() - started < 2


# --- OSError: the user's path (2) or the machine (3) ------------------------------------------------

def test_a_path_the_user_gave_is_bad_input() -> None:
    with pytest.raises(LabError) as info, user_path("--out", Path("/proc/cgroup-lab-x")):
        Path("/proc/cgroup-lab-x").mkdir()
    assert info.value.exit_code == 2 and info.value.message.startswith("--out /proc/cgroup-lab-x: ")


def test_a_full_disk_is_not_blamed_on_the_path() -> None:
    import errno

    with pytest.raises(OSError) as info, user_path("--out", Path("/tmp/x")):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/x/file")
    assert not isinstance(info.value, LabError)


def invoke(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    clean.update(env or {}, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "invoke", "-r", str(ROOT), *args], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root)")
def test_a_full_disk_under_the_lab_state_is_a_testbed_failure(tmp_path: Path) -> None:
    """lab.render into .lab/ on a real 32 KiB tmpfs: the disk fills, exit 3 naming the file, the
    full disk and where in the tool; no traceback. (main said exit 2, "check the path you gave".)"""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(small)], check=True)
    try:
        result = invoke(small, "lab.render", "--target", "bookworm", "--name", "full")
    finally:
        subprocess.run(["umount", "--lazy", str(small)], check=False)
    print(result.stdout[-2000:], result.stderr[-2000:])
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: No space left on device: ") and str(small) in first and "(in " in first
    assert "the disk is full: free space on the file system of" in result.stderr
    assert "check the path you gave" not in result.stderr


def test_an_unwritable_out_is_bad_input(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    result = invoke(tmp_path, "lab.render", "--target", "bookworm", "--out", str(a_file / "sub"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: --out {a_file / 'sub'}: Not a directory")


def test_vagrants_ruby_backtrace_is_left_out() -> None:
    """A Ruby crash of Vagrant (vagrant status ended with three such frames when the lab's network had
    been removed, measured in tests/test_vm_exits.py; the message line here is of that shape): the
    message, not Ruby's frames."""
    from lab.machine.vagrant import said

    crash = ("/usr/share/rubygems-integration/all/gems/vagrant-libvirt-0.11.2/lib/vagrant-libvirt/driver.rb:194:"
             "in `list_all_networks': Call to virConnectListAllNetworks failed: Network not found "
             "(Libvirt::RetrieveError)\n"
             "\tfrom /usr/share/rubygems-integration/all/gems/vagrant-2.3.4/bin/vagrant:243:in `<top (required)>'\n"
             "\tfrom /usr/bin/vagrant:25:in `load'\n\tfrom /usr/bin/vagrant:25:in `<main>'\n")
    assert said(crash) == "Call to virConnectListAllNetworks failed: Network not found (Libvirt::RetrieveError)"
    assert said("==> lab-x: Creating image\nError while activating network: gone.\n") == \
        "==> lab-x: Creating image / Error while activating network: gone."
