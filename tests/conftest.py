"""Shared fixtures. Tiers: unmarked tests are fast unit tests; `integration` runs real local tools
(vagrant validate, packer validate, shellcheck, sshd); `vm` boots a real VM (deselect: -m 'not vm')."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


