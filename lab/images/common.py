"""What both box builders use: Vagrant's well-known key pair and a free local port."""

from __future__ import annotations

import socket
from pathlib import Path

from lab.core.errors import ToolMissing
from lab.host import tools

VAGRANT_KEYS = Path("/usr/share/rubygems-integration/all/gems")


def vagrant_insecure_keys() -> tuple[Path, Path]:
    """Vagrant's well-known key pair, shipped with vagrant itself (no download)."""
    for gem in sorted(VAGRANT_KEYS.glob("vagrant-[0-9]*"), reverse=True):
        private, public = gem / "keys" / "vagrant", gem / "keys" / "vagrant.pub"
        if private.is_file() and public.is_file():
            return private, public
    raise ToolMissing("Vagrant's insecure key pair was not found (is vagrant installed?)",
                      hint=tools.hint("vagrant"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for Packer's SSH forward)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
