"""Host-wide locks (flock on files in the cache directory): one lab at a time picks its network's
/24, and one build at a time makes a given image, however many labs (lab.matrix --jobs, two
checkouts) want them at once."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lab.core.errors import TestbedError
from lab.core.paths import cache_dir


@contextmanager
def held(name: str, timeout: float, what: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the lock `name` (a file under $XDG_CACHE_HOME/cgroup-lab/locks/) for the block; waits
    at most timeout seconds for another holder (on_wait is called once when it has to wait), then
    raises TestbedError naming `what`."""
    path = lock_path(name)
    with path.open("a") as fh:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                if time.monotonic() > deadline:
                    raise TestbedError(f"{what}: another command held {path} for {timeout:.0f}s",
                                       hint="is another lab.up or lab.build hung? see: ps") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def taken_if_free(name: str) -> Iterator[bool]:
    """Within: True while this process holds the lock `name`, taken without waiting; False when another
    command holds it (a build of that image is running), and then nothing is held."""
    with lock_path(name).open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def held_elsewhere(prefix: str) -> list[str]:
    """The locks named prefix* that another command holds now (e.g. "base-": a base image is being
    booted); only lock files that exist are tried, none is created."""
    folder = cache_dir() / "locks"
    found = []
    for path in sorted(folder.glob(f"{prefix}*.lock")) if folder.is_dir() else ():
        with taken_if_free(path.name.removesuffix(".lock")) as free:
            if not free:
                found.append(path.name.removesuffix(".lock"))
    return found


def lock_path(name: str) -> Path:
    """The file of lock `name`; "network" is the one lab.up's network lock has always used
    ($XDG_CACHE_HOME/cgroup-lab/network.lock), so image VMs and labs pick their /24 one at a time."""
    path = cache_dir() / "network.lock" if name == "network" else cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
