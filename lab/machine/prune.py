"""lab.prune: the images this tool cached, each with the space it takes, removed when nothing uses
them. They are: the base images in the cache ($XDG_CACHE_HOME/cgroup-lab/images/<target>-<key>/),
and in the libvirt host's `default` pool the base images' volumes and saved states
(cgroup-lab-base-<target>-<key>.{qcow2,state,vmlinuz,initrd}) and the scenarios' layers
(cgroup-lab-layer-<key>.{qcow2,state}), with a build's console log left beside them. Nothing of
another name is touched: a lab's own disk (lab-<name>.qcow2), a Vagrant box, anyone else's volume;
nor the trusty boxes and the package indexes in the cache.

Kept, each with why:
- a volume a libvirt domain names (any domain, running or not: a lab, a build VM, someone else's);
- a volume another one rests on (a lab's disk on its layer, a layer on its base: qcow2 backing);
- what a kept saved state names in its header (the disk it was saved with, the kernel, the initrd);
- the rest of a kept image: a layer's disk and state go together, a base's disk and state, and an
  image's kernel, initrd and cache folder (a build that found one without the other would make it
  again under the images that rest on it);
- the layer each lab of this directory that is not destroyed was last built with (.lab/layers.json),
  so that its next lab.up starts at once;
- what a build holds its lock for now (lab.core.locks): a layer being built, a base being booted,
  an image whose kernel and initrd are being uploaded.

Removing takes the build lock of each layer and base it removes, so a build that starts meanwhile
waits, then builds it again. Not covered: a command of another directory in the moment between two
of its steps (a lab.up between its build and its start, a build between its base and its layer, or
between making the cache image and uploading it) fails (exit 3) when what it was about to use goes
then; the next lab.up builds it again.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from rich.markup import escape

from lab.core import console, locks, paths
from lab.core.errors import TestbedError
from lab.host import domain, libvirt, storage
from lab.images import base, layer, vm
from lab.machine import state

MIB = 1 << 20
KEY = r"[0-9a-f]{16}"
# a base's disk, state and console log (keyed by its state key), and its image's kernel and initrd
# (keyed by the image's key, as its cache folder is): lab.images.vm.HostBase
BASE_VOLUME = re.compile(rf"^{re.escape(vm.BASE_PREFIX)}(?P<target>[a-z0-9][a-z0-9-]*?)-(?P<key>{KEY})"
                         r"\.(?P<kind>qcow2|state|console\.log|vmlinuz|initrd)$")
LAYER_VOLUME = re.compile(rf"^{re.escape(layer.PREFIX)}(?P<key>{KEY})\.(?P<kind>qcow2|state|console\.log)$")
CACHE_IMAGE = re.compile(rf"^(?P<target>[a-z0-9][a-z0-9-]*?)-(?P<key>{KEY})$")  # lab.images.base.base_image


@dataclass
class Entry:
    """One thing lab.prune may remove: a volume of the pool (name) or a folder of the cache (its
    path); image: the image it belongs to ("layer KEY", "base TARGET-KEY", "image TARGET-KEY"),
    whose parts go or stay together; size in bytes; kept: why it stays ("" when it goes)."""

    name: str
    image: str
    size: int
    folder: bool = False
    kept: str = ""

    @property
    def what(self) -> str:
        """"volume NAME" or "cache PATH"."""
        return f"{'cache' if self.folder else 'volume'} {self.name}"


@dataclass
class Plan:
    """What lab.prune found on the libvirt host (uri, its pool's directory) and in the cache folder."""

    uri: str
    pool: str
    cache: Path
    entries: list[Entry] = field(default_factory=list)

    @property
    def going(self) -> list[Entry]:
        """The entries nothing keeps, in the order they are removed: layers, then bases, then images
        (what rests on a volume goes before it)."""
        order = {"layer": 0, "base": 1, "image": 2}
        return sorted((e for e in self.entries if not e.kept),
                      key=lambda e: (order[e.image.split()[0]], e.image, e.folder, not e.name.endswith(".state"),
                                     e.name))

    @property
    def staying(self) -> list[Entry]:
        """The entries kept, each with its reason."""
        return sorted((e for e in self.entries if e.kept), key=lambda e: (e.image, e.name))


def _image_of(name: str) -> str | None:
    """The image a volume of ours belongs to, or None for a volume that is not ours."""
    m = LAYER_VOLUME.match(name)
    if m:
        return f"layer {m['key']}"
    m = BASE_VOLUME.match(name)
    if m:
        kind = "image" if m["kind"] in ("vmlinuz", "initrd") else "base"
        return f"{kind} {m['target']}-{m['key']}"
    return None


def _lock(entry: Entry) -> str:
    """The build lock of the entry's image (lab.core.locks): layer-<key> (lab.images.layer.build),
    base-<state key> (lab.images.vm.ensure_host_base), image-<target>-<key> (vm.image_lock)."""
    kind, _, key = entry.image.partition(" ")
    return f"base-{key[-16:]}" if kind == "base" else f"{kind}-{key}"


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _paths_in(xml: ElementTree.Element) -> set[str]:
    """Every absolute path a domain's XML names (disks, kernel, initrd, logs, ...)."""
    found = set()
    for element in xml.iter():
        for value in (*element.attrib.values(), element.text or ""):
            if value.strip().startswith("/"):
                found.add(value.strip())
    return found


def _domains() -> Iterator[tuple[str, set[str]]]:
    """(domain, the paths its XML names) for every domain libvirt has, running or not."""
    for name in libvirt.virsh("list", "--all", "--name", check=True).stdout.split():
        xml = libvirt.domain_xml(name)
        if xml is not None:  # gone since the list
            yield name, _paths_in(xml)


def _state_paths(volume: str) -> set[str]:
    """The paths the domain XML in a saved state's header names; none when it cannot be read."""
    try:
        head = storage.read_head(volume, vm.HEAD_BYTES)
        return _paths_in(ElementTree.fromstring(domain.read_header(head, volume).xml))
    except (TestbedError, OSError, ElementTree.ParseError):
        return set()


def _labs_layers(uri: str, project_dir: Path | None = None) -> dict[str, str]:
    """{layer key: why} for the labs of this directory on libvirt host uri that are not destroyed:
    the layer .lab/layers.json names for the lab's host, scenario and target."""
    root = paths.state_root(project_dir)
    try:
        known = json.loads((root / layer.REGISTRY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(known, dict) or not root.is_dir():
        return {}
    found: dict[str, str] = {}
    for folder in sorted(root.iterdir()):
        lab = paths.lab_dir(folder.name, project_dir)
        if not folder.is_dir() or not paths.LAB_NAME.match(folder.name) or not lab.settings_file.is_file():
            continue
        try:
            raw = json.loads(lab.settings_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        st, _ = state.peek(lab)
        if not isinstance(raw, dict) or (st is not None and st.phase == state.Phase.ABSENT):
            continue
        key = known.get(f"{raw.get('libvirt_uri')} {raw.get('scenario')} {raw.get('target')}")
        if isinstance(key, str) and raw.get("libvirt_uri") == uri:
            phase = "its state file damaged" if st is None else str(st.phase)
            found.setdefault(key, f"the layer lab {folder.name} of this directory was built with ({phase})")
    return found


def plan(project_dir: Path | None = None) -> Plan:
    """What this tool cached on the current libvirt host and in the cache, each entry with why it is
    kept or "" when nothing uses it. Reads only (libvirt is started here when it does not answer).
    Raises TestbedError when libvirt cannot tell, ToolMissing without virsh."""
    libvirt.ensure_daemons()
    libvirt.ensure_pool()
    storage.refresh()
    pool = storage.pool_path()
    found = Plan(uri=libvirt.current().uri, pool=pool, cache=base.images_dir())
    names = storage.volumes()
    for name in names:
        image = _image_of(name)
        if image:
            found.entries.append(Entry(name=name, image=image, size=storage.allocation(name)))
    if found.cache.is_dir():
        for folder in sorted(found.cache.iterdir()):
            m = CACHE_IMAGE.match(folder.name)
            if m and folder.is_dir() and not folder.is_symlink():
                found.entries.append(Entry(name=str(folder), image=f"image {folder.name}", size=_folder_size(folder),
                                           folder=True))
    ours = {e.name: e for e in found.entries}
    by_image: dict[str, list[Entry]] = {}
    for e in found.entries:
        by_image.setdefault(e.image, []).append(e)
    by_path = {f"{pool}/{e.name}": e for e in found.entries if not e.folder}
    todo: list[Entry] = []

    def keep(entry: Entry | None, why: str) -> None:
        if entry is not None and not entry.kept:
            entry.kept = why
            todo.append(entry)

    for dom, named in _domains():
        used = [by_path[path] for path in sorted(named) if path in by_path]
        if used:
            why = f"used by domain {dom} ({libvirt.domain_state(dom)})"
            for e in used:
                keep(e, why)
    for name in names:
        if name not in ours:
            keep(by_path.get(storage.backing_of(name, pool)), f"volume {name} rests on it")
    for key, why in _labs_layers(found.uri, project_dir).items():
        for kind in ("qcow2", "state"):
            keep(ours.get(f"{layer.PREFIX}{key}.{kind}"), why)
    building = {lock for kind in ("layer-", "base-", "image-") for lock in locks.held_elsewhere(kind)}
    for e in found.entries:
        if _lock(e) in building:
            keep(e, f"being built now (another command holds lock {_lock(e)})")
    while todo:
        e = todo.pop()
        for other in by_image[e.image]:
            keep(other, f"goes with {e.name.rsplit('/', 1)[-1]} (kept)")
        if e.name.endswith(".qcow2"):
            keep(by_path.get(storage.backing_of(e.name, pool)), f"{e.name} (kept) rests on it")
        if e.name.endswith(".state"):
            for path in sorted(_state_paths(e.name)):
                keep(by_path.get(path), f"the saved state {e.name} (kept) names it")
    return found


def _size(size: int) -> str:
    return f"{size / MIB:,.0f} MiB"


def show(found: Plan, going: bool = True) -> None:
    """Print the entries: what would go with its size (unless not going), what stays and why."""
    console.info(escape(f"cgroup-lab's cached images on {found.uri} (pool {storage.POOL}: {found.pool}) "
                        f"and in {found.cache}:"))
    for e in found.going if going else ():
        console.info(f"  remove  {_size(e.size):>9}  {escape(e.what)}")
    for e in found.staying:
        console.info(f"  [dim]keep    {_size(e.size):>9}  {escape(e.what)}: {escape(e.kept)}[/]")


def remove(found: Plan) -> list[Entry]:
    """Remove what nothing keeps, holding the build lock of each layer and base it removes (one that
    a build took since the plan stays, said); returns what was removed, each said as it goes."""
    removed: list[Entry] = []
    with ExitStack() as held:
        free: dict[str, bool] = {}
        for e in found.going:
            lock = _lock(e)
            if lock not in free:
                free[lock] = held.enter_context(locks.taken_if_free(lock))
            if not free[lock]:
                e.kept = "a build took it since it was listed"
                console.info(f"  [dim]kept    {_size(e.size):>9}  {escape(e.what)}: {e.kept}[/]")
                continue
            if e.folder:
                shutil.rmtree(e.name)
            elif not storage.delete(e.name):
                continue  # gone meanwhile
            removed.append(e)
            console.info(f"  removed {_size(e.size):>9}  {escape(e.what)}")
    return removed


def run(yes: bool, flags: str = "", project_dir: Path | None = None) -> None:
    """lab.prune: show what this tool cached, what would go and what stays (and why); with yes,
    remove what goes. flags: the task's other flags as typed, for the command it suggests. Raises
    TestbedError when libvirt cannot tell or refuses."""
    found = plan(project_dir)
    if not found.entries:
        console.info(escape(f"no cached images of cgroup-lab on {found.uri} nor in {found.cache}: nothing to remove"))
        return
    show(found, going=not yes)
    going = found.going
    if not going:
        console.info(f"nothing to remove: all {len(found.entries)} are in use (see why above)")
        return
    freed = sum(e.size for e in going)
    if not yes:
        console.info(f"would free {_size(freed)} ({len(going)} to remove, {len(found.staying)} kept); "
                     f"to remove them: invoke lab.prune{escape(flags)} --yes")
        return
    done = remove(found)
    console.info(f"[green]✓[/] removed {len(done)}, freed {_size(sum(e.size for e in done))}; "
                 f"kept {len(found.entries) - len(done)}")

