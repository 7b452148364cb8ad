"""Hand a VM that was restored from an image's saved state its own identity, through the QEMU guest
agent: the clock, the SSH key that may log in, its own SSH host key, the hostname and the address
in its own network (templates/images/identity.sh.j2).

The host key is made here (ed25519, never stored on this side) and sent through libvirt, not the
network: on virsh's stdin (no command line shows it), over libvirt's connection and the agent's
virtio channel. The tool pins its public half in the VM's known_hosts before the first SSH
connection, so no key is ever trusted on first use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lab.core.errors import TestbedError
from lab.host import agent
from lab.render.templates import environment


@dataclass(frozen=True)
class Identity:
    """What a VM becomes: hostname, the public key that may log in (one line), its IPv4 address
    and gateway in a /24, and whether its default route goes through the gateway (an image
    build's network forwards to the outside; a lab's is isolated)."""

    hostname: str
    public_key: str
    address: str
    gateway: str
    route: bool = False


def host_key() -> tuple[str, str]:
    """A new ed25519 SSH host key: (private key in OpenSSH's format, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


def script(identity: Identity, host_private: str = "", host_public: str = "", now: float | None = None) -> str:
    """The handover script for the guest (POSIX sh, run as root)."""
    at = now if now is not None else time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}"
    return environment().get_template("images/identity.sh.j2").render(
        now=stamp, public_key=identity.public_key, hostname=identity.hostname, address=identity.address,
        gateway=identity.gateway, route=identity.route, host_private=host_private, host_public=host_public)


def hand_over(domain: str, identity: Identity, timeout: float) -> str:
    """Run the handover in the restored VM `domain`; returns its new SSH host key's public line
    ("ssh-ed25519 AAAA..."), which the guest read back from its own file. Raises TestbedError with
    the guest's words when a step fails or the guest shows another key."""
    private, public = host_key()
    agent.wait_ready(domain, timeout=timeout, what="the restored VM's guest agent")
    result = agent.run(domain, script(identity, private, public), timeout=timeout, secret=True)
    keys = [line.removeprefix("host-key ").strip() for line in result.stdout.splitlines()
            if line.startswith("host-key ")]
    if result.failed or not keys:
        raise TestbedError(f"handing {domain} its identity failed (exit {result.exit_code}): "
                           f"{(result.stderr or result.stdout).strip()[-300:] or 'no output'}",
                           hint="the image may be damaged: invoke lab.build --force")
    if keys[-1].split()[:2] != public.split()[:2]:
        raise TestbedError(f"{domain} shows another SSH host key than the one it was handed",
                           hint="the image may be damaged: invoke lab.build --force")
    return public


def pin(known_hosts: Path, address: str, host_key: str) -> None:
    """Write known_hosts with exactly this address's key (from the agent's channel)."""
    fields = host_key.split()
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    known_hosts.write_text(f"{address} {fields[0]} {fields[1]}\n", encoding="utf-8")
    known_hosts.chmod(0o600)
