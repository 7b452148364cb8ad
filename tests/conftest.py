"""Shared fixtures. Tiers: unmarked tests are fast unit tests; `integration` runs real local tools
(vagrant validate, packer validate, shellcheck, sshd); `vm` boots a real VM (deselect: -m 'not vm')."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# A suite started in the background by a non-interactive shell (`nohup ... &`, some CI runners)
# inherits SIGINT ignored, and an ignored signal stays ignored across exec: proc.run's first,
# graceful SIGINT then never reaches the processes the in-process tests start, and a timeout waits
# out its 30 s grace. The tasks install their own handler (lab.cli.tasks.guarded), so the commands
# the suite runs are not affected; this gives the in-process tests the same footing.
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
