"""
The suite says what it proves: each test module has a docstring, and so has
each test in it, read from the source.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

TESTS = Path(__file__).parent


def undocumented(source: str, where: str) -> list[str]:
    """
    C{where} if the module C{source} has no docstring, and each C{test_}
    method or function in it without one.
    """
    tree = ast.parse(source)
    found = [] if ast.get_docstring(tree) else [f"{where}: no module docstring"]
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    found.extend(
        f"{where}:{n.lineno}: {n.name}"
        for n in functions
        if n.name.startswith("test") and not ast.get_docstring(n)
    )
    return found


class DocstringTests(SynchronousTestCase):
    def test_suite(self) -> None:
        """Every tests/test_*.py has a module docstring, and every test in it a docstring."""
        modules = sorted(TESTS.glob("test_*.py"))
        self.assertIn(Path(__file__), modules)
        found = []
        for path in modules:
            found.extend(undocumented(path.read_text(), path.name))
        if found:
            self.fail("no docstring:\n" + "\n".join(found))

    def test_named(self) -> None:
        """A module or a test without a docstring is named; a helper needs none."""
        source = 'class T:\n    def test_a(self):\n        """A."""\n    def test_b(self):\n        pass\n    def helper(self):\n        pass\n'
        self.assertEqual(undocumented(source, "t.py"), ["t.py: no module docstring", "t.py:4: test_b"])
        self.assertEqual(undocumented('"""M."""\n' + source, "t.py"), ["t.py:5: test_b"])
