"""The one place that runs host processes: timeouts, progress lines, and a clear error on failure.

Every process the tool starts goes through run() (or exec_() for lab.ssh, which becomes ssh);
tests/test_exits.py walks the code for any other subprocess, os.system or os.exec call. A failed
command becomes a TestbedError (exit 3) naming the step, the command line, the exit code and the
last lines it printed; a timeout names what it waited for; never a traceback. Processes run in
their own process group so that a timeout or Ctrl-C ends exactly the processes we started. In
verbose mode (set_verbose) each command line is shown as `+ argv` before it runs.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from rich.markup import escape

from lab.core import console
from lab.core.errors import TestbedError, ToolMissing

_verbose = threading.Event()


def set_verbose(on: bool) -> None:
    """Show every command line (`+ argv`, on stderr) before it runs, for the rest of this process."""
    if on:
        _verbose.set()
    else:
        _verbose.clear()


def _show(argv: Sequence[str]) -> None:
    if _verbose.is_set():
        console.err_console.print(f"[dim]+ {escape(shlex.join(argv))}[/]", soft_wrap=True)


@dataclass(frozen=True)
class Result:
    """What a process did: its command line, exit code, output (stdout, with stderr merged in
    unless run(split_stderr=True) kept it apart in stderr) and wall time in seconds."""

    argv: tuple[str, ...]
    exit_code: int
    output: str
    seconds: float
    stderr: str = ""

    @property
    def returncode(self) -> int:
        """The exit code (subprocess's name for it)."""
        return self.exit_code

    @property
    def stdout(self) -> str:
        """The output (subprocess's name for it)."""
        return self.output

    @property
    def ok(self) -> bool:
        """The process exited 0."""
        return self.exit_code == 0


STOP_SEQUENCE = ((signal.SIGINT, 30.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0))


def _end_group(proc: subprocess.Popen[str]) -> None:
    """Stop the process group we created for this process (and only that): SIGINT first, so that
    Vagrant and Packer run their own cleanup, then SIGTERM, then SIGKILL."""
    for sig, grace in STOP_SEQUENCE:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run(
    argv: Sequence[str],
    *,
    step: str,
    timeout: float,
    waiting_for: str = "",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
    input_text: str | None = None,
    split_stderr: bool = False,
    timeout_hint: str = "",
) -> Result:
    """Run argv, stream its output lines to on_line, enforce timeout (seconds).

    input_text goes to its stdin (else stdin is /dev/null). split_stderr: keep stderr apart in
    Result.stderr (on_line then sees stdout only); else it is merged into Result.output.

    Raises ToolMissing when argv[0] is not installed, TestbedError when it cannot be started, on a
    timeout (naming waiting_for, with timeout_hint or the default advice) or, with check=True, on a
    non-zero exit, naming the step, the command line and its last output lines."""
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=15)
    lines: list[str] = []
    errors: list[str] = []
    _show(argv)
    try:
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT,
            text=True, errors="replace", env=dict(env) if env is not None else None, cwd=cwd,
            start_new_session=True, stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        if exc.filename in (None, argv[0]):
            raise ToolMissing(f"{step}: {argv[0]} is not installed", hint="run: invoke lab.doctor") from None
        raise TestbedError(f"{step}: could not start {argv[0]}: {exc.strerror}: {exc.filename}") from None
    except OSError as exc:
        raise TestbedError(f"{step}: could not start {shlex.join(argv)}: {exc.strerror or exc}") from None
    timed_out = threading.Event()

    def watchdog() -> None:
        timed_out.set()
        _end_group(proc)

    def read_stderr() -> None:
        assert proc.stderr is not None
        errors.extend(line.rstrip("\n") for line in proc.stderr)

    timer = threading.Timer(timeout, watchdog)
    timer.daemon = True
    timer.start()
    reader = threading.Thread(target=read_stderr, daemon=True) if split_stderr else None
    if reader:
        reader.start()
    try:
        if input_text is not None and proc.stdin:
            try:
                proc.stdin.write(input_text)
                proc.stdin.close()
            except BrokenPipeError:  # it exited without reading: its exit code says why
                pass
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            tail.append(line)
            if on_line:
                on_line(line)
        proc.wait()
        if reader:
            reader.join()
    except BaseException:
        _end_group(proc)
        raise
    finally:
        timer.cancel()
    seconds = time.monotonic() - started
    result = Result(tuple(argv), proc.returncode, "\n".join(lines), seconds, "\n".join(errors))
    if timed_out.is_set():
        raise TestbedError(
            f"{step}: gave up after {timeout:.0f}s waiting for {waiting_for or 'the command'}",
            hint=timeout_hint or f"command: {shlex.join(argv)}; raise the timeout setting if the machine is just slow",
        )
    if check and proc.returncode != 0:
        last = "\n    ".join([*tail, *errors[-15:]]) or "(no output)"
        raise TestbedError(f"{step} failed (exit {proc.returncode}): {shlex.join(argv)}\n    {last}")
    return result


def exec_(argv: Sequence[str]) -> NoReturn:
    """Become argv (os.execvp): for lab.ssh, whose ssh takes over the terminal. Raises ToolMissing
    when argv[0] is not installed, TestbedError when it cannot be started."""
    _show(argv)
    try:
        os.execvp(argv[0], list(argv))
    except FileNotFoundError:
        raise ToolMissing(f"{argv[0]} is not installed", hint="run: invoke lab.doctor") from None
    except OSError as exc:
        raise TestbedError(f"could not start {shlex.join(argv)}: {exc.strerror or exc}") from None
