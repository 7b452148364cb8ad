"""The one way to wait: `wait_until(what, check, timeout)` polls check until it gives an answer, and
when it gives up says what it waited for and what it last saw (the NixOS test driver's `retry` is
the model: a timeout that only says "timed out" costs the reader a rerun).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from lab.core.errors import LabError, TestbedError

T = TypeVar("T")


class NotYet(Exception):
    """Raised by a check to say "not yet", with what it saw (shown when the wait gives up)."""


class Stopped(Exception):
    """The wait's stop event was set before the check answered."""


def wait_until(what: str, check: Callable[[], T | None], timeout: float, *, interval: float = 0.5,
               max_interval: float | None = None, retry_on: tuple[type[BaseException], ...] = (),
               hint: str = "", error: Callable[[str, str], LabError] | None = None,
               stop: threading.Event | None = None) -> T:
    """Call check() until it returns something other than None or False, and return that.

    what: what is waited for, as the end of "waiting for ..." (e.g. "libvirtd to answer").
    check: returns the answer, or None/False for "not yet"; it may raise NotYet("what I saw") or one
    of retry_on (also "not yet", the exception's text is what was seen); anything else propagates.
    timeout: seconds from the first call; interval: seconds between calls, doubled after each
    miss up to max_interval (default: interval, no back-off). stop: an event that ends the wait
    early with Stopped.

    Raises the error built by error(message, hint) (default TestbedError, exit 3) when timeout
    passes: "gave up after Ns waiting for WHAT (K tries; last seen: ...)"."""
    started = time.monotonic()
    deadline = started + timeout
    delay = interval
    last = "no answer yet"
    tries = 0
    while True:
        tries += 1
        try:
            answer = check()
            if answer is not None and answer is not False:
                return answer
        except NotYet as exc:
            last = str(exc) or last
        except retry_on as exc:
            last = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now >= deadline:
            message = (f"gave up after {now - started:.0f}s waiting for {what} ({tries} "
                       f"{'try' if tries == 1 else 'tries'}; last seen: {last})")
            raise (error or TestbedError)(message, hint)
        pause = min(delay, deadline - now)
        if stop is not None:
            if stop.wait(pause):
                raise Stopped(what)
        else:
            time.sleep(pause)
        delay = min(delay * 2, max_interval if max_interval is not None else interval)
