"""The libvirt hosts a matrix spreads its labs over (`lab.matrix --hosts URI1,URI2`).

Each host runs as many labs at once as it has room for: its CPUs divided by the lab's, and its free
memory divided by the lab's plus a margin, at least one. A lab goes to the free host that has run
the fewest so far, so two hosts share the work even one lab at a time. A lab already up stays on
the host it is up on. A host that does not answer at the start is left out (said, and recorded);
one that stops answering after a lab failed there takes no more labs, and the others go on.
"""

from __future__ import annotations

import contextvars
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TypeVar

from lab.config import settings as settings_mod
from lab.config.libvirt_uri import parse as parse_uri
from lab.config.settings import Settings
from lab.core import console
from lab.core.errors import LabError, SettingError, TestbedError
from lab.host import libvirt
from lab.machine.resolve import use_libvirt

T = TypeVar("T")
MEMORY_MARGIN_MIB = 256
WAIT_S = 5.0  # how often a lab waiting for a free host looks again (wakes at once when one is freed)


def parse(text: str) -> tuple[str, ...]:
    """--hosts: comma-separated libvirt URIs, each checked like libvirt_uri; duplicates dropped.
    Raises SettingError (exit 2) naming --hosts."""
    uris = tuple(dict.fromkeys(u.strip() for u in text.split(",") if u.strip()))
    if not uris:
        raise SettingError("hosts", text, "one or more libvirt URIs, comma-separated", "--hosts")
    for uri in uris:
        settings_mod.CHECKS["libvirt_uri"]("libvirt_uri", uri, "--hosts")
    return uris


@dataclass
class PoolHost:
    """One libvirt host as the matrix pool sees it: its room for labs and what it is doing (the
    connection itself is lab.host.libvirt.Host)."""

    uri: str
    label: str
    room: int = 1
    busy: int = 0
    ran: list[str] = field(default_factory=list)
    down: str = ""  # why it takes no more labs

    def summary(self) -> dict:
        """What matrix.json records of the host: URI, label, room, the targets it ran, why it is out."""
        return {"uri": self.uri, "host": self.label, "room": self.room, "ran": list(self.ran), "down": self.down}


def _label(uri: str) -> str:
    return parse_uri(uri).host_label


def _in_context(settings: Settings, uri: str, fn: Callable[[], T]) -> T:
    """fn() with its libvirt calls going to uri (in a copy of the context: the caller's is left alone)."""
    def call() -> T:
        use_libvirt(replace(settings, libvirt_uri=uri))
        return fn()
    return contextvars.copy_context().run(call)


def room_on(settings: Settings) -> int:
    """How many labs of these settings fit on the current libvirt host at once (at least 1)."""
    cpus = re.search(r"^CPU\(s\):\s*(\d+)", libvirt.virsh("nodeinfo").stdout, re.M)
    free = re.search(r"^free\s*:\s*(\d+) KiB", libvirt.virsh("nodememstats").stdout, re.M)
    by_cpu = int(cpus.group(1)) // settings.cpus if cpus else 1
    by_memory = int(free.group(1)) // 1024 // (settings.memory + MEMORY_MARGIN_MIB) if free else 1
    return max(1, min(by_cpu, by_memory))


class HostPool:
    """Hands out libvirt hosts to labs, one slot per lab, thread-safe."""

    def __init__(self, hosts: list[PoolHost]) -> None:
        self.hosts = hosts
        self._cond = threading.Condition()

    @classmethod
    def single(cls, uri: str, room: int) -> HostPool:
        """The matrix without --hosts: its one host, as many labs at once as --jobs says."""
        return cls([PoolHost(uri=uri, label=_label(uri), room=room)])

    @classmethod
    def probe(cls, settings: Settings, uris: tuple[str, ...]) -> HostPool:
        """Check each host (libvirtd answers; this machine's daemons are started) and how much room
        it has. Raises TestbedError when no host answers."""
        hosts = []
        for uri in uris:
            host = PoolHost(uri=uri, label=_label(uri))
            def answers_and_room() -> int:
                libvirt.ensure_daemons()
                return room_on(settings)

            try:
                host.room = _in_context(settings, uri, answers_and_room)
                console.info(f"host {host.label}: answers, room for {host.room} lab(s) at once")
            except LabError as exc:
                host.down = exc.message
                console.info(f"[yellow]host {host.label} is left out: {exc.message}[/]")
            hosts.append(host)
        if all(h.down for h in hosts):
            raise TestbedError("no libvirt host of --hosts answers: " + "; ".join(h.down for h in hosts),
                               hint="see: invoke lab.doctor --libvirt-uri URI")
        return cls(hosts)

    @contextmanager
    def slot(self, target: str, pinned: str = "") -> Iterator[PoolHost]:
        """A host with room for one more lab (pinned: that host only), held while inside.
        Raises TestbedError when no host (or not the pinned one) is left."""
        with self._cond:
            while True:
                live = [h for h in self.hosts if not h.down and (not pinned or h.uri == pinned)]
                if not live:
                    why = f"host {_label(pinned)}, where its lab is up, is not usable" if pinned else \
                        "no libvirt host is left: " + "; ".join(f"{h.label}: {h.down}" for h in self.hosts)
                    raise TestbedError(why)
                free = [h for h in live if h.busy < h.room]
                if free:
                    host = min(free, key=lambda h: (len(h.ran), self.hosts.index(h)))
                    host.busy += 1
                    host.ran.append(target)
                    break
                self._cond.wait(WAIT_S)
        try:
            yield host
        finally:
            with self._cond:
                host.busy -= 1
                self._cond.notify_all()

    def check(self, settings: Settings, host: PoolHost) -> None:
        """After a lab failed on host: if the host no longer answers, it takes no more labs."""
        ok, why = _in_context(settings, host.uri, libvirt.reach)
        if not ok:
            with self._cond:
                host.down = f"stopped answering ({why})"
                self._cond.notify_all()
            console.error(f"host {host.label} stopped answering ({why}); its remaining labs go to the other hosts")

    def room(self) -> int:
        """How many labs the hosts that answer can run at once, together."""
        return max(1, sum(h.room for h in self.hosts if not h.down))

    def summary(self) -> list[dict]:
        """Every host's summary, in the order given."""
        return [h.summary() for h in self.hosts]
