"""
Small rooms: no module of the package is over 400 lines and no function or
method over 50, read from the source; each one over is named with its file.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import sora2proxy

SOURCE = Path(sora2proxy.__file__).parent
MODULE_LINES = 400
FUNCTION_LINES = 50


def too_long(source: str, where: str) -> list[str]:
    """
    The module C{source} (named C{where}) if it is over L{MODULE_LINES} lines,
    and each function in it over L{FUNCTION_LINES} (from its C{def} line to
    its last, docstring included), by qualified name.
    """
    found = []
    lines = len(source.splitlines())
    if lines > MODULE_LINES:
        found.append(f"{where}: {lines} lines")

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    length = (child.end_lineno or child.lineno) - child.lineno + 1
                    if length > FUNCTION_LINES:
                        found.append(f"{where}:{child.lineno}: {name} is {length} lines")
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


class SizeTests(SynchronousTestCase):
    def test_package(self) -> None:
        """No module of sora2proxy is over 400 lines, no function over 50."""
        found = []
        for path in sorted(SOURCE.rglob("*.py")):
            found.extend(too_long(path.read_text(), str(path.relative_to(SOURCE.parent))))
        if found:
            self.fail("too long:\n" + "\n".join(found))

    def test_named(self) -> None:
        """A long method is named with its class, a long module with its length; 50 lines pass."""
        body = "".join(f"        x = {i}\n" for i in range(49))
        source = f"class C:\n    def short(self):\n{body}\n    def long(self):\n{body}        x = 49\n"
        self.assertEqual(too_long(source, "m.py"), ["m.py:53: C.long is 51 lines"])
        self.assertEqual(too_long("x = 1\n" * 401, "big.py"), ["big.py: 401 lines"])
        self.assertEqual(too_long("x = 1\n" * 400, "fits.py"), [])

    def test_nested(self) -> None:
        """A long function inside a function is named inside its parent."""
        body = "".join(f"        x = {i}\n" for i in range(50))
        source = f"def outer():\n    def inner():\n{body}\n    return inner\n"
        self.assertEqual(
            too_long(source, "m.py"),
            ["m.py:1: outer is 54 lines", "m.py:2: outer.inner is 51 lines"],
        )
