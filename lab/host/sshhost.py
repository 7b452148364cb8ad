"""SSH to a remote libvirt host (a qemu+ssh:// URI) without touching ~/.ssh.

libvirt's qemu+ssh transport runs the `ssh` binary and ignores a `known_hosts` URI parameter (that
one is for the libssh/libssh2 transports only; checked with libvirt 9.0). So the tool writes a small
wrapper, `.lab/hosts/ssh-<hash>`, that runs ssh with the lab's host-key file and bounded waits, and
hands it to libvirt as the URI's `command` parameter (with `no_tty=1`: never a prompt). The same
wrapper is Vagrant's ProxyCommand to the guest (`-W %h:%p` through the host), lab.ssh's
ProxyCommand, and runs the few host commands the tool needs (the accelerator probe).

Host keys: with `known_hosts=FILE` in the URI, that file is used and checked strictly (the user
pinned the key). Without it, `.lab/hosts/known_hosts` is used and the first contact pins the key
(`StrictHostKeyChecking=accept-new`); a changed key is refused from then on.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from lab.config.libvirt_uri import LibvirtUri
from lab.core import paths
from lab.core.errors import TestbedError
from lab.host import proc

HOSTS_DIR = "hosts"
KNOWN_HOSTS = "known_hosts"


@dataclass(frozen=True)
class HostAccess:
    """How the tool reaches one remote libvirt host over SSH."""

    uri: LibvirtUri
    known_hosts: Path
    strict: bool
    wrapper: Path
    timeout: int

    @property
    def libvirt_uri(self) -> str:
        """The URI handed to virsh and vagrant-libvirt: the user's, with command= our wrapper."""
        return self.uri.with_params(command=str(self.wrapper), no_tty="1")

    def ssh_args(self) -> list[str]:
        """-p/-l/-i for the host, as libvirt passes them to the wrapper."""
        args = ["-p", str(self.uri.ssh_port)]
        args += ["-l", self.uri.user] if self.uri.user else []
        args += ["-i", self.uri.keyfile] if self.uri.keyfile else []
        return args

    @property
    def proxy_command(self) -> str:
        """A ProxyCommand reaching %h:%p through the libvirt host (ssh -W), for Vagrant and lab.ssh."""
        return shlex.join([str(self.wrapper), *self.ssh_args(), "-W", "%h:%p", self.uri.host])

    def run(self, script: str, timeout: float | None = None) -> proc.Result:
        """Run a shell script on the libvirt host (timeout in seconds, default twice libvirt_timeout);
        raises TestbedError naming the URI when SSH fails (exit 255) or the timeout passes. A non-zero
        exit of the script itself is returned."""
        wait = timeout or self.timeout * 2
        argv = [str(self.wrapper), *self.ssh_args(), "-T", self.uri.host, script]
        result = proc.run(argv, step=f"libvirt host {self.uri.text}", timeout=wait, check=False, split_stderr=True,
                          waiting_for="an answer over SSH",
                          timeout_hint="is the host up? raise libvirt_timeout if it is just slow")
        if result.returncode == 255:
            raise TestbedError(f"libvirt host {self.uri.text}: SSH failed: {last_line(result.stderr)}",
                               hint=ssh_hint(result.stderr, self))
        return result


def last_line(text: str) -> str:
    """The last non-empty line of text, or "(no output)"."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def ssh_hint(stderr: str, access: HostAccess | None) -> str:
    """What to do about an SSH failure to the libvirt host, from ssh's own words."""
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        where = access.known_hosts if access else "the known_hosts file"
        return f"the host's key is not the one pinned in {where}; check the host, then fix that file"
    if "Permission denied" in stderr:
        return "the host refused the key: put it in the host's authorized_keys, or set keyfile= in the URI"
    if "Connection refused" in stderr or "No route" in stderr or "timed out" in stderr:
        return "is sshd running on the host and the port right? see: invoke lab.doctor --libvirt-uri URI"
    return "see: invoke lab.doctor --libvirt-uri URI"


def hosts_dir() -> Path:
    """.lab/hosts/ of the checkout: the pinned host keys and the ssh wrappers."""
    return paths.state_root() / HOSTS_DIR


def access(uri: LibvirtUri, timeout: int) -> HostAccess:
    """The HostAccess for a remote URI, writing its wrapper (once per content) under .lab/hosts/."""
    root = hosts_dir().resolve()
    strict = bool(uri.known_hosts)
    known_hosts = Path(uri.known_hosts) if strict else root / KNOWN_HOSTS
    options = ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
               "-o", f"StrictHostKeyChecking={'yes' if strict else 'accept-new'}", "-o", "UpdateHostKeys=no",
               "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout}", "-o", "ServerAliveInterval=5",
               "-o", "ServerAliveCountMax=3"]
    if uri.keyfile:
        options += ["-o", "IdentitiesOnly=yes"]
    text = ("#!/bin/sh\n# written by cgroup-lab: ssh to a libvirt host with the lab's own host-key file\n"
            f"exec ssh {shlex.join(options)} \"$@\"\n")
    wrapper = root / f"ssh-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if not wrapper.is_file() or wrapper.read_text(encoding="utf-8") != text:
        root.mkdir(parents=True, exist_ok=True)
        tmp = wrapper.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o755)
        os.replace(tmp, wrapper)
    if not strict and not known_hosts.exists():
        known_hosts.touch(mode=0o600)
    return HostAccess(uri=uri, known_hosts=known_hosts, strict=strict, wrapper=wrapper, timeout=timeout)
