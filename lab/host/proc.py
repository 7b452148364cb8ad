"""The one place that runs host processes: timeouts, progress lines, and a clear error on failure.

A failed command becomes a LabError naming the step, the command line, the exit code and the last
lines it printed, never a traceback. Processes run in their own process group so that a timeout
or Ctrl-C ends exactly the processes we started.
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

from lab.core.errors import TestbedError, ToolMissing


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    exit_code: int
    output: str
    seconds: float


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
) -> Result:
    """Run argv, stream its output lines to on_line, enforce timeout (seconds).

    Raises ToolMissing when argv[0] is not installed, TestbedError on a timeout or (check=True) a
    non-zero exit, naming the step, the command line and its last output lines."""
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=15)
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise ToolMissing(f"{step}: {argv[0]} is not installed", hint="run: invoke lab.doctor") from None
    timed_out = threading.Event()

    def watchdog() -> None:
        timed_out.set()
        _end_group(proc)

    timer = threading.Timer(timeout, watchdog)
    timer.daemon = True
    timer.start()
    try:
        if input_text is not None and proc.stdin:
            proc.stdin.write(input_text)
            proc.stdin.close()
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            tail.append(line)
            if on_line:
                on_line(line)
        proc.wait()
    except BaseException:
        _end_group(proc)
        raise
    finally:
        timer.cancel()
    seconds = time.monotonic() - started
    result = Result(tuple(argv), proc.returncode, "\n".join(lines), seconds)
    if timed_out.is_set():
        raise TestbedError(
            f"{step}: gave up after {timeout:.0f}s waiting for {waiting_for or 'the command'}",
            hint=f"command: {shlex.join(argv)}; raise the timeout setting if the machine is just slow",
        )
    if check and proc.returncode != 0:
        last = "\n    ".join(tail) or "(no output)"
        raise TestbedError(f"{step} failed (exit {proc.returncode}): {shlex.join(argv)}\n    {last}")
    return result
