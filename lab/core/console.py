"""Terminal output: one rich Console, and a progress line for every long step.

Each long step says what it waits for; on a terminal a spinner shows the elapsed time and the
latest output line, elsewhere (CI, pipes) a heartbeat line is printed every 30 seconds. A thread
that works for one of several labs at once (lab.matrix --jobs) writes into its own log file and
shows only its steps, labelled, on the terminal (redirected()).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from rich.console import Console
from rich.markup import escape
from rich.text import Text

# The tasks, as messages and hints name them: `invoke lab.up` in a checkout. An installed command
# (lab.cli: `cgroup-lab up`) calls speak_as() first, and every line printed names its tasks its way.
TASKS = ("render", "doctor", "build", "up", "verify", "reset", "bench", "status", "ssh", "destroy", "report",
         "scenarios", "check", "new", "matrix", "list", "prune")
_TASK = "(?:" + "|".join(TASKS) + ")"
_TASK_NAME = re.compile(rf"(?<![\w./-])lab\.({_TASK})\b(?![\w.-])")  # lab.verify, not lab.toml or .lab/x
_INVOKE_LINE = re.compile(r"\binvoke ([^\n;,()]*)")  # one command line: invoke lab.up --target T lab.verify
_program = "invoke"


def speak_as(program: str) -> None:
    """From now on, messages name tasks as `program TASK` (e.g. cgroup-lab up) instead of invoke lab.TASK."""
    global _program
    _program = program


def as_typed(text: str) -> str:
    """text with `invoke lab.X lab.Y` and `lab.X` as the user types them with the program in use
    (unchanged under invoke)."""
    if _program == "invoke":
        return text
    text = _INVOKE_LINE.sub(lambda m: _program + " " + _TASK_NAME.sub(r"\1", m.group(1)), text)
    return _TASK_NAME.sub(lambda m: f"{_program} {m.group(1)}", text)


class _AsTyped(Console):
    """A Console whose printed strings name the tasks as typed (as_typed). Where its output is not a
    terminal (a pipe, a file, a CI log, a lab's log) no line of text is wrapped or cut: rich would
    wrap it at 80 columns there (its width without a terminal), so a long line (a path, a hint, a
    command to copy) would arrive in pieces. Tables and panels keep rich's layout."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Console.print, with each string's task names as typed; without a terminal, strings alone
        are printed with soft wrap (as they are, never wrapped or cut) unless soft_wrap is given."""
        objects = tuple(as_typed(o) if isinstance(o, str) else o for o in objects)
        if objects and not self.is_terminal and all(isinstance(o, str) for o in objects):
            kwargs.setdefault("soft_wrap", True)
        super().print(*objects, **kwargs)

    def rule(self, title: Any = "", **kwargs: Any) -> None:
        """Console.rule; without a terminal a title too wide for a rule (rich cuts it with an ellipsis)
        is printed whole, as one line between two short rules."""
        if self.is_terminal or not isinstance(title, str) or \
                Text.from_markup(title).cell_len + 8 <= self.width:
            super().rule(title, **kwargs)
            return
        self.print(f"[rule.line]──[/] {title} [rule.line]──[/]")


_main = _AsTyped(highlight=False)
err_console = _AsTyped(stderr=True, highlight=False)
_local = threading.local()


class _ThreadConsole:
    """The Console of the current thread: the terminal's, or a lab's log file inside redirected()."""

    def __getattr__(self, name: str) -> Any:
        return getattr(getattr(_local, "console", None) or _main, name)


console = cast(Console, _ThreadConsole())


def _label() -> str:
    return getattr(_local, "label", "")


@contextmanager
def redirected(log: Path, label: str) -> Iterator[None]:
    """Within: this thread's output goes to log (appended, plain text) and its steps' start, end
    and heartbeat lines go to the terminal prefixed with [label]; errors go to both."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as fh:
        _local.console = _AsTyped(file=fh, highlight=False, width=120, force_terminal=False, no_color=True)
        _local.label = label
        try:
            yield
        finally:
            _local.console = None
            _local.label = ""

HEARTBEAT_S = 30.0


def info(message: str) -> None:
    """One message to stdout; long lines (paths) are not wrapped, so they can be copied."""
    console.print(message, soft_wrap=True)


def error(message: str) -> None:
    """One red error line to stderr, never wrapped (also into the thread's log when redirected)."""
    label = _label()
    if label:
        console.print(f"error: {escape(message)}", soft_wrap=True)
        message = f"[{label}] {message}"
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def past_usual(elapsed: float, usual_s: float) -> str:
    """A heartbeat's note when a step runs far past its usual time (three times it), else ""."""
    if usual_s > 0 and elapsed > 3 * usual_s:
        return f" [yellow](far past its usual ~{usual_s:.0f}s)[/]"
    return ""


@contextmanager
def _ticking(every: float, started: float, say: Callable[[float], None]) -> Iterator[None]:
    """While the block runs, a thread calls say(seconds since started) every `every` seconds."""
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every):
            say(time.monotonic() - started)

    threading.Thread(target=loop, daemon=True).start()
    try:
        yield
    finally:
        done.set()


@contextmanager
def step(title: str, waiting_for: str, verbose: bool = False, usual_s: float = 0) -> Iterator[Callable[[str], None]]:
    """Show progress for a long step; yields a callback that receives the step's output lines.
    usual_s: the step's usual seconds on this kind of host; the heartbeat says when it is far past."""
    started = time.monotonic()
    latest = [""]
    label = _label()
    if label:
        yield from _labelled_step(label, title, waiting_for, started, usual_s)
        return
    console.print(f"[bold cyan]▶[/] {escape(title)} [dim](waiting for {escape(waiting_for)})[/]")

    def on_line(line: str) -> None:
        latest[0] = line.strip()[:100]
        if verbose:
            console.print(f"  [dim]{escape(line)}[/]")

    def beat(elapsed: float) -> None:
        console.print(f"  [dim]… {elapsed:.0f}s, still waiting for {escape(waiting_for)}: "
                      f"{escape(latest[0])}[/]{past_usual(elapsed, usual_s)}")

    if console.is_terminal:
        with console.status(f"{title}…") as status:
            def tick(elapsed: float) -> None:
                status.update(f"{escape(title)} {elapsed:.0f}s{past_usual(elapsed, usual_s)} "
                              f"[dim]{escape(latest[0])}[/]")
            with _ticking(1.0, started, tick):
                yield on_line
    else:
        with _ticking(HEARTBEAT_S, started, beat):
            yield on_line
    console.print(f"[green]✓[/] {escape(title)} [dim]({time.monotonic() - started:.1f}s)[/]")


def _labelled_step(label: str, title: str, waiting_for: str, started: float,
                   usual_s: float = 0) -> Iterator[Callable[[str], None]]:
    """step() for a redirected thread: output lines into its log; start, heartbeat and end lines,
    labelled, on the terminal too."""
    log = console
    tag = f"[bold magenta]\\[{escape(label)}][/] "
    _main.print(f"{tag}[bold cyan]▶[/] {escape(title)} [dim](waiting for {escape(waiting_for)})[/]")
    log.print(f"▶ {escape(title)} (waiting for {escape(waiting_for)})")

    def beat(elapsed: float) -> None:
        _main.print(f"{tag}[dim]… {elapsed:.0f}s, still waiting for {escape(waiting_for)}[/]"
                    f"{past_usual(elapsed, usual_s)}")

    with _ticking(HEARTBEAT_S, started, beat):
        yield lambda line: log.print(f"  {escape(line)}")
    _main.print(f"{tag}[green]✓[/] {escape(title)} [dim]({time.monotonic() - started:.1f}s)[/]")
    log.print(f"✓ {escape(title)} ({time.monotonic() - started:.1f}s)")
