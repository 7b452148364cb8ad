"""lab.check: a scenario checked before any VM exists. The loader's schema and cross checks, then
every template rendered under StrictUndefined for every supported target, and every rendered
script and command passed through shellcheck. Each problem is one line naming the file."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from lab.config import scenario as sc
from lab.config.settings import Settings
from lab.core.errors import LabError
from lab.host import proc
from lab.render.lab import box_provisioned, facts_for_render, render_all
from lab.render.plan import plan

SHELLCHECK_TIMEOUT = 120  # seconds for one shellcheck run over every script of a target


def check(ref: str, targets: tuple[str, ...] = (), shellcheck: bool = True) -> tuple[sc.Scenario | None,
                                                                                   list[str]]:
    """(the scenario or None, every problem as one line). targets: only these (default: all of the
    scenario's). Raises LabError only when ref names no scenario at all."""
    folder = sc.resolve(ref)
    scenario, problems = sc.check_data(folder)
    if scenario is None:
        return None, [str(p) for p in problems]
    lines: list[str] = []
    for target in targets or scenario.target_names:
        if target not in scenario.target_names:
            lines.append(f"{scenario.file}: target {target!r} is not one of the scenario's: "
                         f"{', '.join(scenario.target_names)}")
            continue
        settings = Settings(target=target, scenario=str(folder), name=f"check-{target}"[:48])
        facts = facts_for_render(settings.name, box_provisioned(settings))
        try:
            files = render_all(settings, facts)
            rendered = plan(settings, facts)
        except LabError as exc:
            lines.append(f"[{target}] {exc.message}")
            continue
        scripts = {name: text for name, text in files.items() if name.endswith(".sh")}
        scripts.update(rendered.scripts)
        commands = {f"{t.id}.start": t.start.run for t in (rendered.baseline, *rendered.fixes)}
        commands.update({f"evidence[{i}].commands[{j}]": c.run for i, ev in enumerate(rendered.evidence)
                         for j, c in enumerate(ev.commands)})
        if shellcheck:
            lines += [f"[{target}] {line}" for line in _shellcheck(scenario, scripts, commands)]
    return scenario, lines


def _shellcheck(scenario: sc.Scenario, scripts: dict[str, str], commands: dict[str, str]) -> list[str]:
    """shellcheck's findings (gcc format, errors and warnings) as 'file:line: message' lines."""
    if not shutil.which("shellcheck"):
        return ["shellcheck is not installed, scripts were not checked (apt-get install shellcheck)"]
    with tempfile.TemporaryDirectory(prefix="lab-check-") as tmp:
        where: dict[str, str] = {}
        for name, text in scripts.items():
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text if text.startswith("#!") else "#!/bin/bash\n" + text, encoding="utf-8")
            where[str(path)] = f"{name} (as rendered for the lab)"
        for key, command in commands.items():
            path = Path(tmp) / "commands" / f"{key}.sh"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/bin/bash\n" + command + "\n", encoding="utf-8")
            where[str(path)] = f"{scenario.file}: {key}.command (as rendered, line +1)"
        result = proc.run(["shellcheck", "--format=gcc", "--severity=warning", *where], step="shellcheck",
                          timeout=SHELLCHECK_TIMEOUT, check=False, split_stderr=True)
    out = []
    for line in result.stdout.splitlines():
        path, _, rest = line.partition(":")
        out.append(f"{where.get(path, path)}:{rest}")
    return out

