"""
The package's imports point one way, down the layers each subpackage's
C{__init__} names: read from the source (every C{import}, relative or
absolute, at the top of a module or inside a function), not from what
happens to be loaded.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import sora2proxy

#: The package's source, and the layer of each top-level name in it.
SOURCE = Path(sora2proxy.__file__).parent
KERNEL = "kernel"
TOP = "top"
UNKNOWN = "in no layer"
LAYER_OF = {
    "_config": KERNEL,
    "_errors": KERNEL,
    "_identity": KERNEL,
    "_rules": KERNEL,
    "_redis": KERNEL,
    "_tap": TOP,
    "_proxy": TOP,
    "_service": TOP,
    "__init__": TOP,
    "http": "http",
    "resilience": "resilience",
    "idempotency": "idempotency",
    "limits": "limits",
    "forward": "forward",
    "ops": "ops",
    "demo": "demo",
}

#: What each layer may import of the package, besides itself.  Nothing but
#: the top imports ops; the kernel is the few modules every layer may use.
MAY_IMPORT = {
    KERNEL: {KERNEL},
    "http": {KERNEL},
    "resilience": {"http", KERNEL},
    "idempotency": {"http", KERNEL},
    "limits": {"http", KERNEL},
    "forward": {"resilience", "idempotency", "limits", "http", KERNEL},
    "ops": {"forward", "resilience", "idempotency", "limits", "http", KERNEL},
    "demo": {"http", KERNEL},
    TOP: set(LAYER_OF.values()),
}


def module_name(path: Path) -> str:
    """
    The dotted name of the module at C{path} under L{SOURCE}.
    """
    parts = ["sora2proxy", *path.relative_to(SOURCE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """
    Every name of the package that C{source} (the text of C{module}) imports,
    with the line of its import, relative imports made absolute.
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                if node.module:
                    base.append(node.module)
                origin = ".".join(base)
            else:
                origin = node.module or ""
            # "from . import _x" imports a module; "from .x import Y" a name of one.
            found.extend((node.lineno, f"{origin}.{alias.name}") for alias in node.names)
    return [(line, name) for line, name in found if name.split(".")[0] == "sora2proxy"]


def layer_of(name: str) -> str:
    """
    The layer of the imported module or name C{name}: C{sora2proxy.http._site.X}
    is C{http}; C{sora2proxy.X}, a name of the public C{__init__}, is the top.
    """
    parts = name.split(".")
    if len(parts) == 1 or (parts[1] not in LAYER_OF and len(parts) == 2):
        return TOP
    return LAYER_OF.get(parts[1], UNKNOWN)


def layer_of_module(module: str) -> str:
    """
    The layer of the module named C{module}, L{UNKNOWN} for one in none.
    """
    parts = module.split(".")
    return TOP if len(parts) == 1 else LAYER_OF.get(parts[1], UNKNOWN)


def offending_imports() -> list[str]:
    """
    Each import of the package that breaks L{MAY_IMPORT}, as
    C{file:line: layer imports name (layer)}.
    """
    offences = []
    for path in sorted(SOURCE.rglob("*.py")):
        module = module_name(path)
        layer = layer_of_module(module)
        relative = path.relative_to(SOURCE.parent)
        if layer == UNKNOWN:
            offences.append(f"{relative}: in no layer: add it to LAYER_OF and MAY_IMPORT")
            continue
        for line, name in imported_names(path.read_text(), module, path.name == "__init__.py"):
            target = layer_of(name)
            if target != layer and target not in MAY_IMPORT[layer]:
                offences.append(f"{relative}:{line}: {layer} imports {name} ({target})")
    return offences


class ImportDirectionTests(SynchronousTestCase):
    def test_imports_point_down(self) -> None:
        """No module imports a layer above its own: http knows no forwarding, nothing below the top imports ops."""
        offences = offending_imports()
        if offences:
            self.fail("imports against the layers:\n" + "\n".join(offences))

    def test_every_module_mapped(self) -> None:
        """ARCHITECTURE.rst's module map names every module of the package, and every layer."""
        text = (SOURCE.parent.parent / "ARCHITECTURE.rst").read_text()
        missing = [
            str(path.relative_to(SOURCE))
            for path in sorted(SOURCE.rglob("*.py"))
            if path.stem not in ("__init__", "__main__") and f"``{path.stem}``" not in text
        ]
        missing += [f"{layer}/" for layer in LAYER_OF if layer.isalpha() and f"``{layer}/``" not in text]
        self.assertEqual(missing, [], "not in ARCHITECTURE.rst")

    def test_every_module_is_read(self) -> None:
        """The walk reads the modules of every layer, the top and the kernel included."""
        layers = {layer_of_module(module_name(path)) for path in SOURCE.rglob("*.py")}
        self.assertEqual(layers, set(LAYER_OF.values()))


class ImportReadingTests(SynchronousTestCase):
    """
    The reading of imports, on made-up modules: an import the walk missed
    would be an offence the test above never reports.
    """

    def test_relative_forms(self) -> None:
        """Relative imports, of a name or of a module, inside a function too, are made absolute."""
        source = (
            "from ..ops._metrics import Telemetry\n"
            "from .. import _config\n"
            "from . import _site\n"
            "def f():\n"
            "    from ..forward._resource import ProxyResource\n"
        )
        self.assertEqual(
            imported_names(source, "sora2proxy.http._wire"),
            [
                (1, "sora2proxy.ops._metrics.Telemetry"),
                (2, "sora2proxy._config"),
                (3, "sora2proxy.http._site"),
                (5, "sora2proxy.forward._resource.ProxyResource"),
            ],
        )

    def test_absolute_forms(self) -> None:
        """Absolute imports of the package are read; other packages are not."""
        source = (
            "import sora2proxy.ops._metrics\n"
            "from sora2proxy.forward import _resource\n"
            "from sora2proxy import build_proxy\n"
            "import twisted.web.http\n"
            "class C:\n"
            "    def m(self):\n"
            "        import sora2proxy._tap as tap\n"
        )
        names = [name for _, name in imported_names(source, "sora2proxy.http._wire")]
        self.assertEqual(
            names,
            [
                "sora2proxy.ops._metrics",
                "sora2proxy.forward._resource",
                "sora2proxy.build_proxy",
                "sora2proxy._tap",
            ],
        )
        self.assertEqual([layer_of(name) for name in names], ["ops", "forward", TOP, TOP])

    def test_package_init(self) -> None:
        """In a subpackage's __init__, a single dot is the subpackage itself."""
        self.assertEqual(
            imported_names("from ._app import DemoBackend\n", "sora2proxy.demo", is_package=True),
            [(1, "sora2proxy.demo._app.DemoBackend")],
        )
        self.assertEqual(module_name(SOURCE / "demo" / "__init__.py"), "sora2proxy.demo")
        self.assertEqual(module_name(SOURCE / "http" / "_wire.py"), "sora2proxy.http._wire")

    def test_layers_named(self) -> None:
        """A name's layer is its subpackage, the kernel or the top."""
        self.assertEqual(layer_of("sora2proxy.http._site.QuietSite"), "http")
        self.assertEqual(layer_of("sora2proxy._errors.ErrorKind"), KERNEL)
        self.assertEqual(layer_of("sora2proxy._proxy"), TOP)
        self.assertEqual(layer_of("sora2proxy.ProxyConfig"), TOP)
        self.assertEqual(layer_of("sora2proxy"), TOP)
        self.assertEqual(layer_of_module("sora2proxy"), TOP)
        self.assertEqual(layer_of_module("sora2proxy.ops._admin"), "ops")
        self.assertEqual(layer_of_module("sora2proxy._new"), UNKNOWN)
