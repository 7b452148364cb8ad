"""The code's shape: packages in pipeline order, each importing only what lies below it, and no
import circles (every import counts, including those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["core", "config", "host", "render", "images", "remote", "machine", "run", "report", "cli"]


def modules() -> dict[str, Path]:
    found = {}
    for path in (ROOT / "lab").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """Modules of lab that this file imports (absolute imports, anywhere in the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out.update(n for n in names if n in known)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return ORDER.index(parts[1]) if len(parts) > 1 and parts[1] in ORDER else None


def test_every_module_sits_in_a_pipeline_package() -> None:
    loose = [m for m in modules() if m != "lab" and layer(m) is None]
    assert loose == [], f"modules outside the pipeline packages: {loose}"


@pytest.mark.parametrize("module", sorted(m for m in graph() if layer(m) is not None))
def test_imports_go_only_downward(module: str) -> None:
    here = layer(module)
    assert here is not None
    upward = [m for m in graph()[module] if (layer(m) or 0) > here]
    assert upward == [], f"{module} ({ORDER[here]}) imports higher layers: {upward}"


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle found by a depth-first walk, each as the path that closes it."""
    state: dict[str, int] = {}
    found: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    return found


def test_the_top_package_imports_no_stage() -> None:
    """lab/__init__.py, the one module outside the stages, pulls none of them in."""
    assert graph()["lab"] == set()


def test_no_import_circles() -> None:
    assert cycles(graph()) == []


def test_the_checker_sees_a_circle() -> None:
    """The walk itself: a made-up circle a -> b -> c -> a is found (the test above can fail)."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_read_anywhere_in_a_file(tmp_path: Path) -> None:
    """Function-level imports count too (a lazy import is still a dependency)."""
    (tmp_path / "a.py").write_text("from lab.core import errors\ndef f():\n    import lab.run.engine\n")
    assert imports(tmp_path / "a.py", {"lab.core.errors", "lab.run.engine", "lab.core"}) == {
        "lab.core", "lab.core.errors", "lab.run.engine"}
