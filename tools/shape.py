"""How data travels through the code (issue 21's figures), measured, not estimated.

    python3 tools/shape.py static            # signatures taking Settings, call sites of the resolvers
    python3 tools/shape.py trace -- ARGS...  # run a task in this process (invoke ARGS) and follow `settings`

static: every function whose parameters are annotated with Settings (by package), and the call
sites of the names issue 21 counts (resolve_provider, libvirt.use, domain_name).
trace: runs the task under sys.setprofile; counts calls of the functions issue 21 counts
(plan, build_inputs, context, provision_plan, render_script, scenario.load), and follows the
Settings object: the modules ("rooms") of the frames that hold it, in call order. A climb back up is
a step from a room of a lower layer (core < config < host < render < images < remote < machine < run
< report < cli) to one of a higher layer that is followed by a step down again; a return is entering
a room that was entered before and left since.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["core", "config", "host", "render", "images", "remote", "machine", "run", "report", "cli"]
COUNTED = {"plan": "lab.render.plan", "build_inputs": "lab.images", "context": "lab.render.lab",
           "provision_plan": "lab.render.lab", "render_script": "lab.render.lab", "load": "lab.config.scenario"}
NAMES = ("resolve_provider", "use", "domain_name")


def static() -> None:
    takes: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    total = 0
    for path in sorted((ROOT / "lab").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        package = path.relative_to(ROOT / "lab").parts[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args.args + node.args.kwonlyargs
                if any(a.annotation is not None and "Settings" in ast.unparse(a.annotation) for a in args):
                    takes[package] += 1
                    total += 1
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in NAMES:
                    calls[name] += 1
    print(f"functions taking Settings: {total}  by package: {dict(sorted(takes.items()))}")
    print(f"call sites: {dict(calls)}")


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def trace(argv: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    from lab.cli import tasks as collection_module  # noqa: F401
    from lab.config.settings import Settings

    counts: Counter[str] = Counter()
    rooms: list[str] = []

    def profile(frame, event, arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("lab."):
            return
        name = frame.f_code.co_name
        if name in COUNTED and module.startswith(COUNTED[name]):
            counts[f"{module}.{name}"] += 1
        if any(isinstance(v, Settings) for v in frame.f_locals.values()) and (not rooms or rooms[-1] != module):
            rooms.append(module)

    from lab.cli.main import program

    sys.setprofile(profile)
    try:
        program().run(["cgroup-lab", *argv], exit=False)
    finally:
        sys.setprofile(None)
    climbs = sum(1 for a, b, c in zip(rooms, rooms[1:], rooms[2:], strict=False)
                 if layer(b) > layer(a) and layer(c) < layer(b))
    seen: set[str] = set()
    returns = 0
    for i, room in enumerate(rooms):
        if room in seen and rooms[i - 1] != room:
            returns += 1
        seen.add(room)
    print(f"calls: {dict(sorted(counts.items()))}")
    print(f"settings: {len(set(rooms))} rooms, {len(rooms)} steps, {climbs} climbs back up, {returns} returns")
    print("path: " + " > ".join(r.removeprefix("lab.") for r in rooms[:60]) + (" ..." if len(rooms) > 60 else ""))


if __name__ == "__main__":
    if sys.argv[1:2] == ["static"]:
        static()
    elif sys.argv[1:2] == ["trace"]:
        trace(sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:])
    else:
        sys.exit(__doc__)
