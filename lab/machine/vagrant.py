"""The only place that knows Vagrant: python-vagrant with our timeouts, progress and exit checks.

python-vagrant builds the command lines; we run them through lab.proc so that every call has a
timeout, streams progress, and a non-zero exit becomes a clear LabError (python-vagrant's
status()/ssh_config() would otherwise return output of a failed command).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import vagrant

from lab.core.errors import TestbedError
from lab.host import proc, tools


class LabVagrant(vagrant.Vagrant):
    """python-vagrant, with every call bounded in time and checked."""

    def __init__(self, root: Path, *, timeout: float, on_line: Callable[[str], None] | None = None,
                 step: str = "vagrant") -> None:
        env = {**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_NO_COLOR": "1",
               "VAGRANT_DEFAULT_PROVIDER": os.environ.get("VAGRANT_DEFAULT_PROVIDER", "libvirt")}
        super().__init__(root=str(root), env=env)
        tools.vagrant_exe()
        self.timeout = timeout
        self.on_line = on_line
        self.step = step

    def _call_vagrant_command(self, args: list[str | None]) -> None:  # type: ignore[override]
        command = self._make_vagrant_command(args)
        result = proc.run(command, step=f"vagrant {args[0]}", timeout=self.timeout, waiting_for=self.step,
                          env=self.env, cwd=Path(self.root), on_line=self.on_line, check=False)
        if result.returncode != 0:
            raise TestbedError(f"vagrant {args[0]} failed (exit {result.returncode}): {said(result.output)}",
                               hint=f"its whole output: run again with --verbose; the lab: {self.root}")

    def _run_vagrant_command(self, args: list[str | None]) -> str:  # type: ignore[override]
        command = self._make_vagrant_command(args)
        result = proc.run(command, step=f"vagrant {args[0]}", timeout=self.timeout, waiting_for=f"vagrant {args[0]}",
                          env=self.env, cwd=Path(self.root), check=False, split_stderr=True)
        if result.returncode != 0:
            raise TestbedError(f"vagrant {args[0]} failed (exit {result.returncode}): "
                               + said(result.stderr.strip() or result.stdout.strip()))
        return result.stdout

    def _stream_vagrant_command(self, args: list[str | None]):  # type: ignore[override]
        self._call_vagrant_command(args)
        return iter(())


RUBY_FRAME = re.compile(r"^\s*(from )?\S+:\d+:in [`'][^']*'(: )?")


def said(output: str) -> str:
    """What Vagrant said about a failure, on one line: its last three message lines, with Ruby's
    backtrace left out (`from /usr/.../x.rb:12:in 'm'`) and a crash's location cut off its message."""
    lines = []
    for line in output.splitlines():
        frame = RUBY_FRAME.match(line)
        if frame is None:
            lines.append(line.strip())
        elif frame.group(2):  # path.rb:12:in `m': the message (Error)
            lines.append(line[frame.end():].strip())
    return " / ".join([ln for ln in lines if ln][-3:]) or "no message"


def box_names(timeout: float = 120) -> set[str]:
    """Boxes Vagrant already has (name only)."""
    result = proc.run([tools.vagrant_exe(), "box", "list", "--machine-readable"], step="vagrant box list",
                      timeout=timeout)
    names = set()
    for line in result.output.splitlines():
        parts = line.split(",")
        if len(parts) >= 4 and parts[2] == "box-name":
            names.add(parts[3])
    return names


def box_add(name: str, box_file: Path, timeout: float, on_line: Callable[[str], None] | None = None) -> None:
    """`vagrant box add --force --name NAME BOX_FILE`: unpack a local .box into Vagrant's store (~/.vagrant.d),
    replacing a box of that name; its lines go to on_line. Raises ToolMissing without vagrant,
    TestbedError (exit 3) when it fails or takes longer than timeout seconds."""
    proc.run([tools.vagrant_exe(), "box", "add", "--force", "--name", name, str(box_file)], step="vagrant box add",
             timeout=timeout, waiting_for="the box to be unpacked into ~/.vagrant.d", on_line=on_line,
             env={**os.environ, "VAGRANT_CHECKPOINT_DISABLE": "1"})
