"""The libvirt URI a lab runs on: parsed and checked before anything starts (pure, no host access).

Allowed, and why:

- ``qemu:///system`` (the default): the local system daemon.
- ``qemu+ssh://[user@]host[:port]/system[?keyfile=PATH&known_hosts=PATH]``: a libvirt host reached
  over SSH, the transport libvirt, virsh and vagrant-libvirt all speak, with the user's own SSH
  keys and nothing else to set up on the host but libvirtd and sshd.

Refused: ``/session`` (the lab's isolated network needs the system daemon), ``qemu+tcp`` (no
encryption, no authentication), ``qemu+tls`` (needs a certificate authority the tool does not set
up), ``qemu+libssh``/``qemu+libssh2``/``qemu+ext``/``qemu+unix``, and any query parameter other
than ``keyfile`` and ``known_hosts``: the tool passes ``command``, ``no_tty`` itself (see
lab.host.sshhost), so that host-key checking never falls back to the user's ``~/.ssh``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import parse_qsl, quote, urlsplit

LOCAL_URI = "qemu:///system"
SCHEMES = ("qemu", "qemu+ssh")
QUERY_KEYS = ("keyfile", "known_hosts")
USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]+$")
ALLOWED = ("qemu:///system, or qemu+ssh://[user@]host[:port]/system with optional "
           "?keyfile=/abs/key&known_hosts=/abs/file")


class BadUri(ValueError):
    """What is wrong with a URI, in words for one line (the caller names the setting)."""


@dataclass(frozen=True)
class LibvirtUri:
    """A checked libvirt URI. `text` is the URI as the user wrote it."""

    text: str
    scheme: str
    user: str = ""
    host: str = ""
    port: int | None = None
    keyfile: str = ""
    known_hosts: str = ""

    @property
    def remote(self) -> bool:
        """True for a libvirt host reached over SSH; False for this machine's daemon."""
        return self.scheme == "qemu+ssh"

    @property
    def ssh_port(self) -> int:
        """The SSH port of a qemu+ssh host: the URI's port, 22 when it gives none (also 22 for a local URI)."""
        return self.port or 22

    @property
    def host_label(self) -> str:
        """user@host:port (for messages, file names and reports); "local" for this machine."""
        if not self.remote:
            return "local"
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.ssh_port}"

    def with_params(self, **params: str) -> str:
        """The URI for libvirt: scheme, authority and /system, keyfile kept, and the given params
        added (values percent-encoded); known_hosts is the tool's business, not libvirt's."""
        if not self.remote:
            return LOCAL_URI
        auth = f"{quote(self.user, safe='') + '@' if self.user else ''}{self.host}"
        auth += f":{self.port}" if self.port else ""
        query = ({"keyfile": self.keyfile} if self.keyfile else {}) | params
        tail = "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items())
        return f"qemu+ssh://{auth}/system" + (f"?{tail}" if tail else "")


def parse(text: str) -> LibvirtUri:
    """Check a libvirt URI; return its parts. Raises BadUri saying what is wrong and what to do."""
    if not isinstance(text, str) or not text or any(c.isspace() or c in "'\"`$\\;|<>" for c in text):
        raise BadUri("a URI without spaces or shell characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise BadUri(f"it does not parse as a URI ({exc})") from None
    scheme = parts.scheme
    if scheme not in SCHEMES:
        why = {"qemu+tcp": "qemu+tcp is unencrypted and unauthenticated; use qemu+ssh",
               "qemu+tls": "qemu+tls needs a certificate setup the tool does not make; use qemu+ssh",
               "qemu+libssh": "use qemu+ssh (the ssh binary, with the tool's host-key handling)",
               "qemu+libssh2": "use qemu+ssh (the ssh binary, with the tool's host-key handling)"}
        raise BadUri(why.get(scheme, f"scheme {scheme or '(none)'!r} is not supported; use qemu:// or qemu+ssh://"))
    if parts.fragment:
        raise BadUri("no #fragment")
    if parts.path != "/system":
        if parts.path == "/session":
            raise BadUri("/session cannot create the lab's isolated network; use /system")
        raise BadUri(f"path {parts.path or '(none)'!r}: the path must be /system")
    if scheme == "qemu":
        if parts.netloc:
            raise BadUri("qemu:// with a host is the TLS transport; for another machine use qemu+ssh://host/system")
        if parts.query:
            raise BadUri("qemu:///system takes no parameters")
        return LibvirtUri(text=text, scheme=scheme)
    host, user = parts.hostname or "", parts.username or ""
    if parts.password is not None:
        raise BadUri("no password in the URI; use an SSH key (keyfile=...)")
    if not host or not HOSTNAME.match(host):
        raise BadUri(f"host {host or '(none)'!r} is not a host name or IPv4 address")
    if user and not USER.match(user):
        raise BadUri(f"user {user!r} is not a valid login name")
    if port is not None and not 1 <= port <= 65535:
        raise BadUri(f"port {port} is outside 1-65535")
    params: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if key not in QUERY_KEYS:
            raise BadUri(f"query parameter {key!r} is not allowed (allowed: {', '.join(QUERY_KEYS)}; "
                         "the tool sets command and no_tty itself)")
        if key in params:
            raise BadUri(f"query parameter {key!r} is given twice")
        if not SAFE_PATH.match(value) or ".." in PurePosixPath(value).parts:
            raise BadUri(f"{key}={value!r} must be an absolute path without spaces or shell characters")
        params[key] = value
    if parts.query and not params:
        raise BadUri(f"query {parts.query!r} does not parse (key=value&key=value)")
    return LibvirtUri(text=text, scheme=scheme, user=user, host=host, port=port,
                      keyfile=params.get("keyfile", ""), known_hosts=params.get("known_hosts", ""))
