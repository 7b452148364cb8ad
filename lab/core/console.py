"""Terminal output: one rich Console, and a progress line for every long step.

Each long step says what it waits for; on a terminal a spinner shows the elapsed time and the
latest output line, elsewhere (CI, pipes) a heartbeat line is printed every 30 seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

HEARTBEAT_S = 30.0


def info(message: str) -> None:
    """One message to stdout; long lines (paths) are not wrapped, so they can be copied."""
    console.print(message, soft_wrap=True)


def error(message: str) -> None:
    """One red error line to stderr, never wrapped."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


@contextmanager
def step(title: str, waiting_for: str, verbose: bool = False) -> Iterator[Callable[[str], None]]:
    """Show progress for a long step; yields a callback that receives the step's output lines."""
    started = time.monotonic()
    latest = [""]
    console.print(f"[bold cyan]▶[/] {escape(title)} [dim](waiting for {escape(waiting_for)})[/]")

    def on_line(line: str) -> None:
        latest[0] = line.strip()[:100]
        if verbose:
            console.print(f"  [dim]{escape(line)}[/]")

    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT_S):
            elapsed = time.monotonic() - started
            console.print(f"  [dim]… {elapsed:.0f}s, still waiting for {escape(waiting_for)}: "
                          f"{escape(latest[0])}[/]")

    if console.is_terminal:
        with console.status(f"{title}…") as status:
            def tick() -> None:
                while not done.wait(1.0):
                    status.update(f"{escape(title)} {time.monotonic() - started:.0f}s "
                                  f"[dim]{escape(latest[0])}[/]")
            threading.Thread(target=tick, daemon=True).start()
            try:
                yield on_line
            finally:
                done.set()
    else:
        threading.Thread(target=heartbeat, daemon=True).start()
        try:
            yield on_line
        finally:
            done.set()
    console.print(f"[green]✓[/] {escape(title)} [dim]({time.monotonic() - started:.1f}s)[/]")
