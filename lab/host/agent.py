"""The QEMU guest agent of an image VM, through libvirt (`virsh qemu-agent-command`), on the lab's
libvirt host (local or remote alike).

The agent is the trusted channel between the tool and a VM that was restored from a saved state:
it needs no network, no key and no address, so it is how a restored VM learns its lab's identity
(lab.images.identity) and how an image VM is waited for and settled. Commands are QEMU's
qemu-ga protocol (qga/qapi-schema.json): guest-ping, guest-exec with input-data and captured
output, guest-exec-status.

Under TCG every process the guest starts costs about 0.1 s (more when the host is busy), so the
scripts sent here keep to shell builtins where they can.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from lab.core.errors import AgentError
from lab.host import libvirt


@dataclass(frozen=True)
class AgentResult:
    """What a guest-exec did: exit code (-1 when it was killed by a signal), stdout and stderr as
    text, and seconds from the request to the last status poll."""

    exit_code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def failed(self) -> bool:
        """The command exited non-zero or was killed by a signal (exit_code -1)."""
        return self.exit_code != 0


def command(domain: str, payload: dict, timeout: float = 10, secret: bool = False) -> dict:
    """Send one agent command; its "return" value. secret: the command goes to virsh on its stdin
    (virsh's own command shell), never on a command line another user of the host could read.
    Raises AgentError with libvirt's words when the agent is not connected, does not answer within
    timeout (seconds), or reports an error."""
    text = json.dumps(payload)
    wait = str(max(1, int(timeout)))
    if secret:
        if "'" in text:
            raise AgentError("internal: an agent command for virsh's shell must not contain a single quote")
        result = libvirt.virsh("-q", input_text=f"qemu-agent-command {domain} '{text}' --timeout {wait}\n",
                               timeout=timeout + 30)
        answers = [line for line in result.stdout.splitlines() if line.startswith('{"return"')]
        failed = result.returncode != 0 or "error:" in result.stderr or not answers
        out = answers[-1] if answers else ""
    else:
        result = libvirt.virsh("qemu-agent-command", domain, text, "--timeout", wait, timeout=timeout + 30)
        failed, out = result.returncode != 0, result.stdout
    if failed:
        words = result.stderr.strip().removeprefix("error: ").replace("\n", " / ") or "no answer"
        raise AgentError(f"the guest agent of {domain} did not run {payload['execute']}: {words}",
                         hint="is the VM running and the qemu-guest-agent package installed in it?")
    try:
        return json.loads(out)["return"]
    except (ValueError, KeyError, TypeError):
        raise AgentError(f"the guest agent of {domain} answered {payload['execute']} with "
                         f"{out.strip()[:200]!r}") from None


def ping(domain: str, timeout: float = 2) -> bool:
    """The agent answers guest-ping within timeout (seconds)."""
    try:
        command(domain, {"execute": "guest-ping"}, timeout=timeout)
        return True
    except AgentError:
        return False


def wait_ready(domain: str, timeout: float, watch: Callable[[], None] | None = None,
               what: str = "the VM's boot") -> float:
    """Poll guest-ping until it answers; returns the seconds it took. `watch` is called between
    tries and may raise (a stalled boot). Raises AgentError after timeout (seconds)."""
    started = time.monotonic()
    delay = 0.1
    while True:
        if ping(domain, timeout=2):
            return time.monotonic() - started
        if watch is not None:
            watch()
        if time.monotonic() - started > timeout:
            raise AgentError(f"the guest agent of {domain} did not answer within {timeout:.0f}s ({what})",
                             hint="raise boot_timeout if the machine is just slow")
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


def run(domain: str, script: str, timeout: float, shell: str = "/bin/sh", secret: bool = False) -> AgentResult:
    """Run `script` with `shell -s` as root in the guest (the script on its stdin, so nothing of it
    is on a command line in the guest; secret: nor on one on the host) and wait for it; stdout and
    stderr captured (qemu-ga keeps up to 16 MiB of each). Raises AgentError when the agent fails
    or the script runs past timeout (seconds; the guest process is then left to the guest)."""
    started = time.monotonic()
    request = {"execute": "guest-exec", "arguments": {
        "path": shell, "arg": ["-s"], "capture-output": True,
        "input-data": base64.b64encode(script.encode()).decode()}}
    pid = command(domain, request, timeout=min(timeout, 30), secret=secret)["pid"]
    delay = 0.03
    while True:
        status = command(domain, {"execute": "guest-exec-status", "arguments": {"pid": pid}},
                         timeout=min(timeout, 30))
        if status.get("exited"):
            break
        if time.monotonic() - started > timeout:
            raise AgentError(f"a script run through the guest agent of {domain} did not finish within "
                             f"{timeout:.0f}s", hint="raise command_timeout if the machine is just slow")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    code = status.get("exitcode", -1 if "signal" in status else 0)
    return AgentResult(exit_code=int(code), stdout=_decoded(status.get("out-data")),
                       stderr=_decoded(status.get("err-data")), seconds=time.monotonic() - started)


def _decoded(data: str | None) -> str:
    return base64.b64decode(data).decode(errors="replace") if data else ""
