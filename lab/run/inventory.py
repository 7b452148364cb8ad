"""lab.list: every lab of this directory, as Test Kitchen's `kitchen list` shows its instances: the
lab's scenario, target and libvirt host, its state as libvirt sees it next to the phase its state
file records, and the verdict and time of its last verify run.

Reading only: nothing is started (not even a local libvirtd) and nothing is locked, so it answers
while another command works on a lab. What cannot be read is said in the row, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.config.settings import Settings
from lab.core import paths
from lab.core.errors import LabError
from lab.host import libvirt
from lab.machine import lifecycle, state
from lab.machine.resolve import use_libvirt
from lab.machine.vagrant import LabVagrant
from lab.run import record


@dataclass(frozen=True)
class LabRow:
    """One lab as lab.list shows it.

    domain: the libvirt domain's state (running, shut off, not created, ...), or why it is not
    known; phase: the lifecycle phase of .lab/<name>/state.json; verdict: the last verify run's
    (met, not met, stopped, kept failing, broken off: <error>) or "" when none ran; verified_at:
    that run's start, UTC (ISO 8601), or ""."""

    name: str
    scenario: str
    target: str
    host: str
    domain: str
    phase: str
    verdict: str
    verified_at: str

    def as_dict(self) -> dict[str, str]:
        """The row as {field name: text}, every field (lab.list --json)."""
        return asdict(self)


def lab_names(project_dir: Path | None = None) -> list[str]:
    """The labs under .lab/ (folders named like a lab holding settings.json or state.json), sorted."""
    root = paths.state_root(project_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and paths.LAB_NAME.match(p.name)
                  and ((p / "settings.json").is_file() or (p / "state.json").is_file()))


def last_run(lab: paths.LabDir) -> tuple[str, str]:
    """(verdict, started_at) of the newest run directory holding a verify.json (completed or not);
    ("", "") when none ran."""
    if not lab.reports.is_dir():
        return "", ""
    runs = sorted((p for p in lab.reports.iterdir()
                   if p.is_dir() and not p.is_symlink() and (p / record.RECORD).is_file()), key=lambda p: p.name)
    if not runs:
        return "", ""
    try:  # the JSON's top-level keys (ok, started_at, stopped, kept_failing, error) of every schema so far
        rec = json.loads((runs[-1] / record.RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable record ({type(exc).__name__})", ""
    if not isinstance(rec, dict):
        return "unreadable record (not an object)", ""
    when = str(rec.get("started_at", ""))
    if rec.get("error"):
        return f"broken off: {str(rec['error']).splitlines()[0][:80]}", when
    if rec.get("stopped"):
        return "stopped" + (" (met so far)" if rec.get("ok") else ""), when
    if rec.get("kept_failing"):
        return "kept failing", when
    return ("met" if rec.get("ok") else "not met"), when


def _phase(lab: paths.LabDir) -> str:
    try:
        st = state.read(lab)
    except LabError:
        return "state file damaged"
    return f"{st.phase}" + (f" ({st.task} {st.since})" if st.since else "")


def _provider(settings: Settings, lab: paths.LabDir) -> str:
    """The provider lab.up used (facts.json), else the setting (auto counts as libvirt here)."""
    try:
        return lifecycle.load_facts(lab).provider
    except LabError:
        return "virtualbox" if settings.provider == "virtualbox" else "libvirt"


def _domain(settings: Settings, lab: paths.LabDir, hosts: dict[str, tuple[bool, str]]) -> str:
    """The domain's state from libvirt (or Vagrant's view for VirtualBox)."""
    if _provider(settings, lab) != "libvirt":
        if not (lab.root / ".vagrant").exists():
            return "not created"
        try:
            return ", ".join(s.state or "unknown" for s in LabVagrant(lab.root, timeout=60).status()) or "not created"
        except LabError as exc:
            return f"vagrant status failed: {exc.message[:80]}"
    try:
        use_libvirt(settings)
        if settings.libvirt_uri not in hosts:
            hosts[settings.libvirt_uri] = libvirt.reach()
        answers, why = hosts[settings.libvirt_uri]
        if not answers:
            return f"libvirt does not answer ({why})"
        domain = lifecycle.domain_name(settings)
        mark = libvirt.domain_owner(domain)
        if mark is None:
            return "not created"
        if mark != libvirt.owner_mark(lab.root):
            return "not this lab's (another checkout's domain of that name)"
        return libvirt.domain_state(domain)
    except LabError as exc:  # a remote host lost mid-way, virsh missing
        return f"unknown: {exc.message[:80]}"


def rows(project_dir: Path | None = None) -> list[LabRow]:
    """Every lab of this directory (see lab_names), each with its live domain state."""
    hosts: dict[str, tuple[bool, str]] = {}  # each libvirt host is asked once whether it answers
    out = []
    for name in lab_names(project_dir):
        lab = paths.lab_dir(name, project_dir)
        verdict, when = last_run(lab)
        try:
            settings = lifecycle.load_lab(name, project_dir)
        except LabError as exc:
            raw = _raw_settings(lab)
            out.append(LabRow(name=name, scenario=str(raw.get("scenario", "?")), target=str(raw.get("target", "?")),
                              host=str(raw.get("libvirt_uri", "?")), domain=f"unknown: {exc.message[:80]}",
                              phase=_phase(lab), verdict=verdict, verified_at=when))
            continue
        try:
            scenario = settings.scenario_data.id
        except LabError:
            scenario = f"{settings.scenario} (cannot be loaded)"
        out.append(LabRow(name=name, scenario=scenario, target=settings.target, host=settings.libvirt_uri,
                          domain=_domain(settings, lab, hosts), phase=_phase(lab), verdict=verdict, verified_at=when))
    return out


def _raw_settings(lab: paths.LabDir) -> dict:
    try:
        raw = json.loads(lab.settings_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}
