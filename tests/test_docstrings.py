"""Every public definition of lab/ has a docstring (issue 21.5: each says its inputs, outputs, units and
errors). Public: a name not starting with "_"; module-level functions and classes, and the methods and
properties of public classes (nested classes of a public class too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def undocumented(source: str) -> list[tuple[int, str]]:
    """(line, dotted name) of each public definition in source without a docstring."""
    found: list[tuple[int, str]] = []

    def walk(nodes: list[ast.stmt], prefix: str) -> None:
        for node in nodes:
            if isinstance(node, DEFINITIONS) and not node.name.startswith("_"):
                if not ast.get_docstring(node):
                    found.append((node.lineno, prefix + node.name))
                if isinstance(node, ast.ClassDef):
                    walk(node.body, f"{prefix}{node.name}.")

    walk(ast.parse(source).body, "")
    return found


def test_the_walk_finds_what_lacks_a_docstring() -> None:
    source = '''
def public(): pass
def _private(): pass
def documented():
    """Yes."""
class Thing:
    """A thing."""
    @property
    def size(self): return 1
    def _hidden(self): pass
    class Inner:
        def method(self): pass
class _Private:
    def method(self): pass
async def fetch(): pass
'''
    assert undocumented(source) == [(2, "public"), (9, "Thing.size"), (11, "Thing.Inner"),
                                    (12, "Thing.Inner.method"), (15, "fetch")]


def test_every_public_definition_of_lab_has_a_docstring() -> None:
    missing = [f"{path.relative_to(ROOT)}:{line} {name}"
               for path in sorted((ROOT / "lab").rglob("*.py"))
               for line, name in undocumented(path.read_text(encoding="utf-8"))]
    assert missing == [], (f"{len(missing)} public definitions without a docstring (say what each takes and "
                           "returns, units, errors):\n" + "\n".join(missing))
