"""lab.check: a scenario checked before any VM exists. The loader's schema and cross checks, then
for every supported target: every template rendered under StrictUndefined, the packages against the
release's package index, the commands every script and command runs against what the box will
have, paths that do not exist on the target's cgroup layout, evidence that cannot hold, rules that
can never match, `bash -n` and shellcheck. Each problem is one line naming the file (and line);
the same problem on several targets is one line naming them all."""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lab.config import scenario as sc
from lab.config.resolved import Lab
from lab.config.settings import Settings
from lab.config.targets import Target
from lab.core.errors import LabError, did_you_mean
from lab.host import proc
from lab.render import debindex
from lab.render.lab import box_provisioned, facts_for_render, provision_plan, render_all
from lab.render.plan import Plan, plan
from lab.render.templates import LIB_DIR, TEMPLATES_DIR

SHELLCHECK_TIMEOUT = 120  # seconds for one shellcheck run over every script of a target
BASH_N_TIMEOUT = 30  # seconds for one `bash -n`

# bash's builtins and keywords, and what any Debian box has without a package to name
SHELL_WORDS = {
    'alias', 'bg', 'bind', 'break', 'builtin', 'caller', 'cd', 'command', 'compgen', 'complete', 'compopt',
    'continue', 'declare', 'dirs', 'disown', 'echo', 'enable', 'eval', 'exec', 'exit', 'export', 'false', 'fc',
    'fg', 'getopts', 'hash', 'help', 'history', 'jobs', 'kill', 'let', 'local', 'logout', 'mapfile', 'popd',
    'printf', 'pushd', 'pwd', 'read', 'readarray', 'readonly', 'return', 'set', 'shift', 'shopt', 'source',
    'suspend', 'test', 'times', 'trap', 'true', 'type', 'typeset', 'ulimit', 'umask', 'unalias', 'unset', 'wait',
    '.', ':', '[', '[[', ']]', 'if', 'then', 'else', 'elif', 'fi', 'case', 'esac', 'for', 'while', 'until', 'do',
    'done', 'in', 'function', 'select', 'time', 'coproc', '{', '}', '!',
}

# paths that exist on one cgroup layout only (kernel's cgroup-v1 and cgroup-v2 docs; systemd's
# hybrid layout mounts the v2 tree at /sys/fs/cgroup/unified)
V1_ONLY = re.compile(r"/sys/fs/cgroup/(memory|cpu|cpuacct|cpu,cpuacct|cpuset|blkio|pids|devices|freezer|net_cls|"
                     r"net_prio|perf_event|hugetlb|rdma|misc|systemd|unified)(?=[/\s'\"]|$)")
V2_ROOT_ONLY = re.compile(r"/sys/fs/cgroup/(cgroup\.(controllers|subtree_control|procs|threads|stat|max\.\w+)|"
                          r"(memory|pids|cpu|io|cpuset)\.\w+)(?=[\s'\"]|$)")
# programs that exist only as update-alternatives links (not in the Contents index), and who gives them
ALTERNATIVES = {"awk": ("mawk", "gawk", "original-awk", "busybox"), "nawk": ("mawk", "gawk", "original-awk"),
                "editor": ("nano", "vim-tiny", "vim", "ed"), "pager": ("less", "more", "most"),
                "vi": ("vim-tiny", "vim", "nvi"), "sh": ("dash", "bash"), "which": ("debianutils",),
                "rmt": ("tar", "cpio"), "iptables": ("iptables",), "nc": ("netcat-openbsd", "netcat-traditional")}


@dataclass
class Findings:
    """Problems, each said once with the targets it was seen on, in the order first seen."""

    order: list[str] = field(default_factory=list)
    targets: dict[str, list[str]] = field(default_factory=dict)

    def add(self, target: str, line: str) -> None:
        """Record problem line as seen on target ("" for a problem of no one target); a line already
        recorded only gains the target."""
        if line not in self.targets:
            self.order.append(line)
            self.targets[line] = []
        if target and target not in self.targets[line]:
            self.targets[line].append(target)

    def lines(self) -> list[str]:
        """Every problem once, in the order first seen: "[target, ...] line", or the line alone when no
        target was named."""
        return [f"[{', '.join(self.targets[line])}] {line}" if self.targets[line] else line for line in self.order]


def check(ref: str, targets: tuple[str, ...] = (), shellcheck: bool = True, index: bool = True,
          mirror: str = "", notes: list[str] | None = None) -> tuple[sc.Scenario | None, list[str]]:
    """(the scenario or None, every problem as one line). targets: only these (default: all of the
    scenario's); index: check packages and commands against the release's package index from
    mirror (default: the debian_mirror setting's default); notes: gets what could not be checked
    (an index that could not be read), which is no problem of the scenario. Raises LabError only
    when ref names no scenario at all."""
    folder = sc.resolve(ref)
    scenario, problems = sc.check_data(folder)
    if scenario is None:
        return None, [str(p) for p in problems]
    found = Findings()
    notes = notes if notes is not None else []
    for target in targets or scenario.target_names:
        if target not in scenario.target_names:
            found.add("", f"{scenario.file}: target {target!r} is not one of the scenario's: "
                          f"{', '.join(scenario.target_names)}{did_you_mean(target, scenario.target_names)}")
            continue
        settings = Settings(target=target, scenario=str(folder), name=f"check-{target}"[:48],
                            **({"debian_mirror": mirror} if mirror else {}))
        lab = Lab.of(settings, provider="libvirt", scenario=scenario)
        facts = facts_for_render(lab.name, box_provisioned(lab))
        try:
            files = render_all(lab, facts)
            rendered = plan(lab, facts)
        except LabError as exc:
            found.add(target, exc.message + (f" ({exc.hint})" if exc.hint else ""))
            continue
        scripts = {name: text for name, text in files.items() if name.endswith(".sh")}
        sources = _script_sources(lab)
        for rel, text in rendered.scripts.items():
            scripts[rel] = text
        for t in (rendered.baseline, *rendered.fixes):
            for phase, s in (("apply", t.apply), ("revert", t.revert)):
                if s:
                    sources[f"fixes/{t.id}-{phase}.sh"] = folder / s.rel
        for s in (rendered.teardown, rendered.observe):
            if s:
                sources[s.rel] = folder / s.rel
        commands = _commands(rendered)
        for line in _rules(scenario, rendered):
            found.add(target, line)
        for line in _evidence(scenario, rendered, lab.target):
            found.add(target, line)
        for line in _layout(scenario, lab.target, scripts, sources, commands):
            found.add(target, line)
        if index and lab.target.box_builder == "mmdebstrap":
            try:
                idx = debindex.load(lab.debian_mirror, lab.target.release)
            except debindex.IndexUnavailable as exc:
                notes.append(f"[{target}] packages and commands not checked: the package index could not be read "
                             f"({exc})")
            else:
                for line in _packages(scenario, lab.target, idx):
                    found.add(target, line)
                for line in _missing_commands(scenario, lab.target, idx, scripts, sources, commands):
                    found.add(target, line)
        for line in _bash_n(scripts, sources):
            found.add(target, line)
        if shellcheck:
            for line in _shellcheck(scenario, scripts, sources, commands):
                found.add(target, line)
    return scenario, found.lines()


# --- where a rendered text came from -----------------------------------------------------------


@dataclass(frozen=True)
class Typed:
    """A command as the user wrote it in scenario.toml (rendered), and where."""

    key: str  # fixes[cgm].start.command
    text: str
    via: str


def _commands(rendered: Plan) -> list[Typed]:
    """Every distinct command of the plan (a start that fixes inherit is listed once)."""
    out: dict[tuple[str, str], Typed] = {}
    for t in (rendered.baseline, *rendered.fixes):
        out.setdefault((t.start.source, t.start.typed), Typed(t.start.source, t.start.typed, t.start.via))
    for ev in rendered.evidence:
        for c in ev.commands:
            out.setdefault((c.source, c.typed), Typed(c.source, c.typed, c.via))
    return list(out.values())


def _script_sources(lab: Lab) -> dict[str, Path]:
    """Provisioning script name in the lab -> its template file (engine or scenario)."""
    out = {}
    folder = lab.scenario.folder
    for _, _, scripts in provision_plan(lab):
        for s in scripts:
            if s.source == "engine":
                out[s.name] = TEMPLATES_DIR / s.template
            elif s.template.startswith(sc.SHARED + "/"):
                out[s.name] = sc.shared_folder(folder) / s.template.removeprefix(sc.SHARED + "/")
            else:
                out[s.name] = folder / s.template
    return out


def _source_line(source: Path | None, rendered: str, line: int) -> tuple[str, int | None]:
    """(file, line) in the template for a line of its rendered text: the template line that reads
    the same when there is exactly one, in the template itself or else in a snippet it may import
    (templates/lib, the scenario's shared folder); else the rendered line, said as such."""
    lines = rendered.splitlines()
    if source is None or not source.is_file() or not 0 < line <= len(lines):
        return str(source or "?"), None
    want = lines[line - 1].strip()
    if want:
        snippets = sorted(LIB_DIR.glob("*.j2"))
        shared = sc.shared_folder(source.parent if source.parent.name != "provision" else source.parent.parent)
        if shared.is_dir():
            snippets += sorted(p for p in shared.rglob("*") if p.is_file())
        for candidate in (source, *snippets):
            hits = [n for n, text in enumerate(candidate.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
                    if text.strip() == want]
            if len(hits) == 1:
                return str(candidate), hits[0]
    return str(source), None


def _where(source: Path | None, name: str, rendered: str, line: int) -> str:
    file, at = _source_line(source, rendered, line)
    return f"{file}:{at}" if at else f"{file} ({name} as rendered, line {line})"


def _command_where(scenario: sc.Scenario, key: str, line: int) -> str:
    """scenario.toml:LINE for line `line` of a command given at key path key (best effort: the
    key's line, plus the line within a text that starts on the next line)."""
    text = scenario.file.read_text(encoding="utf-8")
    at = sc.locate(text, _loc(scenario, key))
    if at is None:
        return f"{scenario.file}: {key}"
    first = text.splitlines()[at - 1]
    extra = line - 1 + (1 if first.rstrip().endswith(("'''", '"""')) else 0)
    return f"{scenario.file}:{at + extra}: {key}"


def _loc(scenario: sc.Scenario, key: str) -> list[str | int]:
    """A key path as written by the plan (fixes[cgm].start.command) as parts to locate: a try's id
    becomes its index in its list."""
    out: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[[^\]]*\]", key):
        if part.startswith("["):
            inner = part[1:-1]
            if inner.isdigit():
                out.append(int(inner))
            else:
                group = getattr(scenario.model, str(out[-1]), []) if out else []
                out.append(next((i for i, f in enumerate(group) if getattr(f, "id", None) == inner), 0))
        else:
            out.append(part)
    return out


# --- the checks ---------------------------------------------------------------------------------


def _rules(scenario: sc.Scenario, rendered: Plan) -> list[str]:
    """Rules whose fields no observe script prints; rendered regexes still holding template text."""
    out = []
    script = rendered.observe.text if rendered.observe else ""
    for i, rule in enumerate(rendered.rules):
        for part in ("when", "unless"):
            for name, regex in rule[part].items():
                if sc.TEMPLATE_MARK.search(regex):
                    out.append(f"{scenario.file}: observe.rules[{i}].{part}.{name}: {regex!r} still holds template "
                               "text after rendering, so it can only match that text itself")
                if name in sc.RULE_BUILTIN_FIELDS or not script:
                    continue
                if not re.search(rf"(^|[^A-Za-z0-9_.-]){re.escape(name)}=", script):
                    out.append(f"{scenario.file}: observe.rules[{i}].{part}: field {name!r} is never printed by "
                               f"{rendered.observe.rel if rendered.observe else 'the observe script'} (no "
                               f"'{name}=' in it), so this rule can never match")
    return out


def _evidence(scenario: sc.Scenario, rendered: Plan, target: Target) -> list[str]:
    """Evidence that cannot hold: expect = differ over commands that are one and the same."""
    out = []
    for i, ev in enumerate(rendered.evidence):
        same = {(c.run, c.channel, c.user) for c in ev.commands}
        if ev.expect == "differ" and len(same) == 1:
            out.append(f"{scenario.file}: evidence[{i}] ({ev.title}): expect = \"differ\", but its commands run the "
                       "same text as the same user the same way, so their outputs differ only by chance")
    return out


def _layout(scenario: sc.Scenario, target: Target, scripts: dict[str, str], sources: dict[str, Path],
            commands: list[Typed]) -> list[str]:
    """Paths that do not exist on the target's cgroup layout."""
    wrong = V1_ONLY if target.cgroup_layout == "unified" else V2_ROOT_ONLY if target.cgroup_layout == "hybrid" \
        else None
    if wrong is None:
        return []
    layout = {"unified": "cgroup v2 (unified): there is no v1 hierarchy",
              "hybrid": "the hybrid layout: the v2 tree is at /sys/fs/cgroup/unified"}[target.cgroup_layout]
    out = []
    # commands run as written (scripts often test the layout first, so they are left alone)
    for c in commands:
        for n, line in enumerate(c.text.splitlines(), 1):
            m = wrong.search(line)
            if m:
                out.append(f"{_command_where(scenario, c.key, n)}: {m.group(0)} does not exist on {target.name}, "
                           f"{layout}; this command will fail there (give this target its own command)")
    return out


def _packages(scenario: sc.Scenario, target: Target, idx: debindex.PackageIndex) -> list[str]:
    text = scenario.file.read_text(encoding="utf-8")
    out = []
    for pkg in scenario.packages(target.name):
        if not idx.exists(pkg):
            line = next((n for n, t in enumerate(text.splitlines(), 1) if f'"{pkg}"' in t), None)
            at = f"{scenario.file}:{line}" if line else str(scenario.file)
            near = did_you_mean(pkg, [p for p in idx.depends if p[:2] == pkg[:2]])
            out.append(f"{at}: targets.{target.name}.packages: {pkg!r} is not a package of Debian {target.release} "
                       f"(main, {debindex.ARCH}, from {idx.mirror}){near}")
    return out


def first_words(text: str) -> list[tuple[str, int]]:
    """(program, line) of every simple command in a shell text: its first word after assignments
    and redirections (bashlex's parse; a text bashlex cannot parse gives nothing)."""
    import bashlex  # builds its parser tables on import (~0.5 s): only when a check needs it

    try:
        trees = bashlex.parse(text)
    except Exception:  # bashlex raises its own errors and plain ones on what it does not know
        return []
    found: list[tuple[str, int]] = []

    class Visitor(bashlex.ast.nodevisitor):  # type: ignore[misc,name-defined]
        def visitcommand(self, node: object, parts: list) -> None:
            for part in parts:
                if part.kind in ("assignment", "redirect"):
                    continue
                if part.kind == "word":
                    found.append((part.word, text.count("\n", 0, part.pos[0]) + 1))
                break

    for tree in trees:
        Visitor().visit(tree)
    return found


def _defined_functions(text: str) -> set[str]:
    return set(re.findall(r"^\s*(?:function\s+)?([A-Za-z_][\w-]*)\s*\(\)", text, re.MULTILINE))


def _missing_commands(scenario: sc.Scenario, target: Target, idx: debindex.PackageIndex, scripts: dict[str, str],
                      sources: dict[str, Path], commands: list[Typed]) -> list[str]:
    """Programs that scripts and commands run but that no package of the box ships (the target's and
    the scenario's packages, what they depend on, the required set)."""
    have = idx.closure([*target.packages, *scenario.packages(target.name)])
    # programs the scenario installs itself (a script written to /usr/local/bin/NAME)
    made = set()
    for text in scripts.values():
        made.update(re.findall(r"/usr/local/s?bin/([\w.-]+)", text))
    out = []

    def judge(word: str, where: str, functions: set[str]) -> None:
        if word in SHELL_WORDS or word in functions or word in made or not re.fullmatch(r"[\w.+-]+", word):
            return
        ships = idx.providers(word) or [p for p in ALTERNATIVES.get(word, ()) if idx.exists(p)]
        if not ships or set(ships) & have:
            if not ships:
                out.append(f"{where}: {word!r}: no package of Debian {target.release} ships a program of that name "
                           "(a typo, or a program the scenario must make itself)")
            return
        out.append(f"{where}: {word!r} is not in the box on {target.name}: it comes with {', '.join(sorted(ships)[:4])}"
                   f"; add it to targets.{target.name}.packages")

    for name, text in scripts.items():
        functions = _defined_functions(text)
        for word, line in first_words(text):
            judge(word, _where(sources.get(name), name, text, line), functions)
    for c in commands:
        for word, line in first_words(c.text):
            where = _command_where(scenario, c.key, line)
            if c.via == "cron" and word in made:
                # Debian's cron runs jobs with PATH=/usr/bin:/bin (cron(8)), not the login's PATH
                out.append(f"{where}: {word!r} is made in /usr/local/bin, which is not on cron's PATH "
                           f"(/usr/bin:/bin): the job would say 'not found'; write its full path")
            judge(word, where, set())
    return out


def _bash_n(scripts: dict[str, str], sources: dict[str, Path]) -> list[str]:
    """bash's own syntax check of every script, its error pointed at the template's line."""
    out = []
    with tempfile.TemporaryDirectory(prefix="lab-check-") as tmp:
        for name, text in scripts.items():
            path = Path(tmp) / "script.sh"
            path.write_text(text, encoding="utf-8")
            result = proc.run(["bash", "-n", str(path)], step="bash -n", timeout=BASH_N_TIMEOUT, check=False,
                              split_stderr=True)
            for line in result.stderr.splitlines():
                m = re.match(rf"{re.escape(str(path))}: line (\d+): (.*)", line)
                if m:
                    out.append(f"{_where(sources.get(name), name, text, int(m.group(1)))}: bash -n: {m.group(2)}")
    return out


def _shellcheck(scenario: sc.Scenario, scripts: dict[str, str], sources: dict[str, Path],
                commands: list[Typed]) -> list[str]:
    """shellcheck's findings (errors and warnings), each at the template's file and line."""
    if not shutil.which("shellcheck"):
        return ["shellcheck is not installed, scripts were not checked (apt-get install shellcheck)"]
    with tempfile.TemporaryDirectory(prefix="lab-check-") as tmp:
        where: dict[str, tuple[str, str]] = {}  # temp file -> (kind, name)
        for n, (name, text) in enumerate(scripts.items()):
            path = Path(tmp) / f"s{n}.sh"
            path.write_text(text if text.startswith("#!") else "#!/bin/bash\n" + text, encoding="utf-8")
            where[str(path)] = ("script", name)
        for n, c in enumerate(commands):
            path = Path(tmp) / f"c{n}.sh"
            path.write_text("#!/bin/bash\n" + c.text + "\n", encoding="utf-8")
            where[str(path)] = ("command", str(n))
        result = proc.run(["shellcheck", "--format=gcc", "--severity=warning", *where], step="shellcheck",
                          timeout=SHELLCHECK_TIMEOUT, check=False, split_stderr=True)
    out = []
    for line in result.stdout.splitlines():
        m = re.match(r"(.*?):(\d+):(\d+): (.*)", line)
        if not m or m.group(1) not in where:
            out.append(line)
            continue
        kind, name = where[m.group(1)]
        number = int(m.group(2))
        if kind == "script":
            text = scripts[name]
            offset = 0 if text.startswith("#!") else 1
            out.append(f"{_where(sources.get(name), name, text, number - offset)}: {m.group(4)}")
        else:
            c = commands[int(name)]
            out.append(f"{_command_where(scenario, c.key, number - 1)}: {m.group(4)}")
    return out
