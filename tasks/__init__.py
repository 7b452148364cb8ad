"""`invoke lab.*` in a checkout: the same task collection the installed `cgroup-lab` command runs
(lab/cli/tasks.py), with this checkout first on sys.path (before any installed copy of lab)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab.cli.tasks import ns

__all__ = ["ns"]
