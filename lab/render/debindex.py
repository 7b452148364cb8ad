"""A Debian release's package index, for lab.check: which packages exist, what they depend on, and
which package ships which command.

Read from the same mirror the box builder uses (the `debian_mirror` setting; mmdebstrap builds from
the release's `main` component), downloaded once and kept in the XDG cache
($XDG_CACHE_HOME/cgroup-lab/debindex/<mirror hash>/<release>/). Only what lab.check needs is kept:
each package's dependencies (Depends and Pre-Depends, every alternative), what virtual packages
resolve to, the Priority: required set (mmdebstrap's minbase installs it), and from the Contents
indexes the programs under bin/ and sbin/ with the packages that ship them.

What a base image has is what `mmdebstrap --variant=minbase --include=...` installs: mmdebstrap(1),
VARIANTS: "required, minbase: The essential set plus all packages with Priority:required and apt",
each with its hard dependencies (not Recommends), so the Essential:yes packages, every Priority:
required one (Essential or not: trixie's login, mawk, tzdata) and the included packages, with their
Depends and Pre-Depends. Seen in a bookworm base image built here: every required package of the
release is in it, tzdata too, which no package of the image depends on.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from lab.core import paths
from lab.core.files import write_files

ARCH = "amd64"
TIMEOUT = 60  # seconds for one download to answer (and for each read)
BIN_DIRS = ("bin/", "sbin/", "usr/bin/", "usr/sbin/", "usr/games/")


class IndexUnavailable(Exception):
    """The index could not be read from the mirror (and is not in the cache): why, in words."""


@dataclass(frozen=True)
class PackageIndex:
    """One release's packages. depends: package -> packages it needs (alternatives all listed);
    provides: virtual package -> real packages; required: Priority required and Essential packages;
    commands: program name -> packages that ship it under a bin/ or sbin/ directory."""

    release: str
    mirror: str
    depends: dict[str, list[str]]
    provides: dict[str, list[str]]
    required: list[str]
    commands: dict[str, list[str]]
    versions: dict[str, str]

    def exists(self, name: str) -> bool:
        """A real or virtual package of the release."""
        return name in self.depends or name in self.provides

    def closure(self, names: Iterable[str]) -> set[str]:
        """names, the required set and everything they depend on (a virtual package: all providers;
        every alternative counts: over-including can only hide a missing command, never invent one)."""
        seen: set[str] = set()
        todo = [*names, *self.required]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo.extend(self.depends.get(name, []))
            todo.extend(self.provides.get(name, []))
        return seen

    def providers(self, command: str) -> list[str]:
        """The packages whose Contents entries ship a program named command in one of BIN_DIRS; [] for
        none (a program only update-alternatives makes is not listed: lab.render.check's ALTERNATIVES)."""
        return self.commands.get(command, [])


def _cache_dir(mirror: str, release: str) -> Path:
    digest = hashlib.sha256(mirror.encode()).hexdigest()[:12]
    return paths.cache_dir() / "debindex" / digest / release


def _open(url: str) -> Iterator[bytes]:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            while chunk := response.read(1 << 20):
                yield chunk
    except urllib.error.HTTPError as exc:
        raise IndexUnavailable(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise IndexUnavailable(f"{url}: {getattr(exc, 'reason', exc)}") from None


def _lines(url: str, decompress: str) -> Iterator[str]:
    """The decompressed lines of an index file, streamed."""
    dec = lzma.LZMADecompressor() if decompress == "xz" else None
    gz = None
    if decompress == "gz":
        import zlib
        gz = zlib.decompressobj(16 + zlib.MAX_WBITS)
    rest = b""
    for chunk in _open(url):
        data = dec.decompress(chunk) if dec else gz.decompress(chunk) if gz else chunk
        rest += data
        *lines, rest = rest.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace")
    if rest:
        yield rest.decode("utf-8", errors="replace")


def _names(field: str) -> list[str]:
    """Package names of a Depends-style field: every alternative, no versions or architectures."""
    return [m.group(1) for m in re.finditer(r"(?:^|[,|])\s*([a-z0-9][a-z0-9+.-]+)", field)]


def parse_packages(lines: Iterable[str]) -> tuple[dict, dict, list, dict]:
    """(depends, provides, required, versions) from the lines of a Packages file."""
    depends: dict[str, list[str]] = {}
    provides: dict[str, list[str]] = {}
    versions: dict[str, str] = {}
    required: list[str] = []
    stanza: dict[str, str] = {}
    key = ""

    def flush() -> None:
        name = stanza.get("Package")
        if not name:
            return
        deps = _names(stanza.get("Depends", "")) + _names(stanza.get("Pre-Depends", ""))
        depends.setdefault(name, [])
        depends[name] = sorted({*depends[name], *deps})
        versions.setdefault(name, stanza.get("Version", ""))
        for virtual in _names(stanza.get("Provides", "")):
            provides.setdefault(virtual, []).append(name)
        if stanza.get("Priority") == "required" or stanza.get("Essential") == "yes":
            required.append(name)

    for line in [*lines, ""]:
        if not line.strip():
            flush()
            stanza, key = {}, ""
        elif line[0] in " \t":
            if key:
                stanza[key] += " " + line.strip()
        else:
            key, _, value = line.partition(":")
            stanza[key] = value.strip()
    return depends, provides, sorted(set(required)), versions


def parse_contents(lines: Iterable[str], into: dict[str, list[str]]) -> None:
    """Programs under bin/ and sbin/ from a Contents file ("path   section/pkg,section/pkg")."""
    for line in lines:
        if not line.startswith(BIN_DIRS):
            continue
        path, _, where = line.rpartition(" ")
        path = path.strip()
        name = path.rsplit("/", 1)[-1]
        for entry in where.split(","):
            pkg = entry.rsplit("/", 1)[-1]
            found = into.setdefault(name, [])
            if pkg not in found:
                found.append(pkg)


@cache
def load(mirror: str, release: str, contents: bool = True) -> PackageIndex:
    """The release's index from the cache, or downloaded from mirror and cached. Raises
    IndexUnavailable when neither works. contents: also the program -> package map (~45 MiB to
    download once per release)."""
    folder = _cache_dir(mirror, release)
    file = folder / "index.json"
    data: dict = {}
    if file.is_file():
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
    base = f"{mirror.rstrip('/')}/dists/{release}/main"
    if "depends" not in data:
        depends, provides, required, versions = parse_packages(_lines(f"{base}/binary-{ARCH}/Packages.xz", "xz"))
        data = {"release": release, "mirror": mirror, "depends": depends, "provides": provides,
                "required": required, "versions": versions}
        write_files(folder, {"index.json": json.dumps(data)})
    if contents and "commands" not in data:
        commands: dict[str, list[str]] = {}
        for name in (f"Contents-{ARCH}.gz", "Contents-all.gz"):
            parse_contents(_lines(f"{base}/{name}", "gz"), commands)
        data["commands"] = commands
        write_files(folder, {"index.json": json.dumps(data)})
    return PackageIndex(release=release, mirror=mirror, depends=data["depends"], provides=data["provides"],
                        required=data["required"], commands=data.get("commands", {}),
                        versions=data.get("versions", {}))
