"""The project's own files, read at run time: the shipped scenarios, the engine's templates (users,
trusty kernel, Packer, the lab.new scaffold, the snippets scenarios import as lab/NAME), the Packer
templates and Vagrantfile.j2. The one place that knows where they are; every lookup goes through here.

They live in the package's own folder, so they travel inside the wheel and an installed
`cgroup-lab` reads nothing from a source tree (pip installs a wheel unpacked, so these are plain
files: jinja2's FileSystemLoader and `packer build FILE` need real paths). Lab state is elsewhere:
./.lab of the directory the command runs in (lab.core.paths).
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # lab/
DATA_DIR = PACKAGE_DIR / "data"  # scenarios/, templates/, packer/, Vagrantfile.j2, player/

SCENARIOS_DIR = DATA_DIR / "scenarios"  # one folder per shipped scenario
TEMPLATES_DIR = DATA_DIR / "templates"  # the engine's jinja2 templates
LIB_DIR = TEMPLATES_DIR / "lib"  # snippets a scenario's templates import as "lab/NAME"
SCAFFOLD_DIR = TEMPLATES_DIR / "scaffold"  # what lab.new copies
REPORT_TEMPLATES_DIR = TEMPLATES_DIR / "report"  # report.html.j2, matrix.html.j2, report.css (autoescaped)
PACKER_DIR = DATA_DIR / "packer"  # Packer templates (*.pkr.hcl) and the trusty preseed (http/)
VAGRANTFILE_TEMPLATE = DATA_DIR / "Vagrantfile.j2"
# The asciinema player inlined into report.html: an npm project whose node_modules `setup.sh`
# installs (npm ci); a wheel built after that carries the player's bundle and licence.
PLAYER_PACKAGE = DATA_DIR / "player"
PLAYER_BUNDLE = PLAYER_PACKAGE / "node_modules" / "asciinema-player" / "dist" / "bundle"


def packer_file(name: str) -> Path:
    """A file under packer/ by its name (e.g. "debian.pkr.hcl", "http")."""
    return PACKER_DIR / name
