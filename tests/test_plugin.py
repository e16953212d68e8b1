"""
The twistd plugin as users run it: found from outside the checkout after an
editable install (the Makefile's) and after a normal install of the wheel,
with one-line errors for bad options and a real proxy from makeService.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

from twisted.application.service import IServiceCollection
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sora2proxy._tap import Options, build_service

from .test_cli import Child, eventually, get

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(argv: list[str], cwd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    environ.update(env or {})
    return subprocess.run(argv, cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)


class PluginDiscoveryTests(SynchronousTestCase):
    def test_editable_install(self) -> None:
        """After the Makefile's editable install, twistd finds the plugin from any directory."""
        twistd = BIN / "twistd"
        if not twistd.exists():
            raise SkipTest("no twistd next to this Python")
        with tempfile.TemporaryDirectory() as elsewhere:
            result = run([str(twistd), "sora2proxy", "--help"], cwd=elsewhere)
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--listen", "--upstream", "--prefix", "--health-path", "--health-interval",
                       "--health-timeout", "--attempts", "--backoff", "--timeout", "--suggestion",
                       "--dev"):  # fmt: skip
            self.assertIn(option, result.stdout)

    def test_wheel_install(self) -> None:
        """A wheel built from the checkout carries the plugin, and twistd finds it once installed."""
        with tempfile.TemporaryDirectory() as tmp:
            built = run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                 "-w", tmp, str(ROOT)],
                cwd=tmp,
            )  # fmt: skip
            self.assertEqual(built.returncode, 0, built.stderr)
            [wheel] = Path(tmp).glob("sora2proxy-*.whl")
            target = Path(tmp) / "site"
            installed = run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                 str(wheel)],
                cwd=tmp,
            )  # fmt: skip
            self.assertEqual(installed.returncode, 0, installed.stderr)
            plugin = target / "twisted" / "plugins" / "sora2proxy_plugin.py"
            self.assertTrue(plugin.exists())
            self.assertFalse((target / "twisted" / "__init__.py").exists())
            self.assertFalse((target / "twisted" / "plugins" / "__init__.py").exists())
            # A Python that sees the installed wheel and Twisted, but not the checkout.
            probe = textwrap.dedent(
                f"""
                import sys
                sys.path[:] = [p for p in sys.path if "/src" not in p and p != {str(ROOT)!r}]
                sys.path.insert(0, {str(target)!r})
                from twisted.plugin import getPlugins
                from twisted.application.service import IServiceMaker
                import sora2proxy
                names = [p.tapname for p in getPlugins(IServiceMaker)]
                print("sora2proxy" in names, sora2proxy.__file__)
                """
            )
            result = run([sys.executable, "-S", "-c", _with_site_packages(probe)], cwd=tmp)
            self.assertEqual(result.returncode, 0, result.stderr)
            found, where = result.stdout.split()
            self.assertEqual(found, "True")
            self.assertTrue(where.startswith(str(target)), where)

    def test_plugin_does_not_import_reactor(self) -> None:
        """Loading the plugin installs no reactor, so twistd --reactor still works."""
        probe = (
            "import sys\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "[p for p in getPlugins(IServiceMaker) if p.tapname == 'sora2proxy'][0].options()\n"
            "print('twisted.internet.reactor' in sys.modules)\n"
        )
        result = run([sys.executable, "-c", probe], cwd=str(ROOT))
        self.assertEqual(result.stdout.strip(), "False", result.stderr)

    def test_bad_option_one_line(self) -> None:
        """twistd with a bad option exits with one line naming it, and no traceback."""
        twistd = BIN / "twistd"
        with tempfile.TemporaryDirectory() as elsewhere:
            result = run([str(twistd), "-n", "sora2proxy", "--attempts", "0"], cwd=elsewhere)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("--attempts", lines[0])


class FreshVenvTests(SynchronousTestCase):
    def test_wheel_in_fresh_venv(self) -> None:
        """pip install of the wheel in a new venv has every module, the demo, the plugin and a working proxy."""
        tmp = os.path.abspath(self.mktemp())
        # A copy of the sources: a build/ left in the checkout would hide a package missing from setup.py.
        checkout = Path(tmp) / "checkout"
        leftovers = shutil.ignore_patterns("__pycache__", "dropin.cache", "*.egg-info")
        for tree in ("src", "twisted"):
            shutil.copytree(ROOT / tree, checkout / tree, ignore=leftovers)
        for name in ("setup.py", "pyproject.toml", "README.rst"):
            shutil.copy(ROOT / name, checkout / name)
        built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp,
                     str(checkout)], cwd=tmp)  # fmt: skip
        self.assertEqual(built.returncode, 0, built.stderr)
        [wheel] = Path(tmp).glob("sora2proxy-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            packed = set(archive.namelist())
        source = ROOT / "src"
        expected = {str(p.relative_to(source)) for p in source.rglob("*") if p.suffix in (".py", ".typed")}
        self.assertEqual(expected - packed, set(), "files under src/ missing from the wheel")
        self.assertIn("twisted/plugins/sora2proxy_plugin.py", packed)
        self.assertNotIn("twisted/__init__.py", packed)
        self.assertNotIn("twisted/plugins/__init__.py", packed)
        # A venv of its own (no system site-packages, no checkout on its path), the
        # dependencies from pip's configured index; no pip inside it, no .pyc: faster.
        venv = Path(tmp) / "venv"
        made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
        self.assertEqual(made.returncode, 0, made.stderr)
        installed = run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                         "--no-compile", str(wheel)], cwd=tmp)  # fmt: skip
        self.assertEqual(installed.returncode, 0, installed.stderr)
        elsewhere = Path(tmp) / "elsewhere"
        elsewhere.mkdir()
        python, twistd = str(venv / "bin" / "python"), str(venv / "bin" / "twistd")
        where = run(
            [python, "-c", "import sora2proxy.demo; print(sora2proxy.demo.__file__)"], cwd=str(elsewhere)
        )
        self.assertTrue(where.stdout.startswith(str(venv)), where.stdout + where.stderr)
        helped = run([twistd, "sora2proxy", "--help"], cwd=str(elsewhere))
        self.assertEqual(helped.returncode, 0, helped.stderr)
        self.assertIn("--upstream", helped.stdout)
        clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        demo = Child(self, [python, "-m", "sora2proxy.demo", "--port", "0", "--interface", "127.0.0.1"],
                     cwd=str(elsewhere), env=clean)  # fmt: skip
        demo_port = demo.wait_for(r"demo backend listening on (\d+)").group(1)
        proxy = Child(self, [twistd, "-n", "--pidfile=", "sora2proxy", "--listen", "tcp:0:interface=127.0.0.1",
                             "--admin-listen", "none", "--health-interval", "0.5",
                             "--upstream", f"http://127.0.0.1:{demo_port}/api"], cwd=str(elsewhere), env=clean)  # fmt: skip
        port = proxy.wait_for(r"ProxySite starting on (\d+)").group(1)
        url = f"http://127.0.0.1:{port}/api/proxy/videos"
        self.assertTrue(eventually(lambda: get(url)[0] == 200, seconds=10), "".join(proxy.lines))
        status, _, body = get(url)
        self.assertEqual((status, json.loads(body)), (200, {"data": []}))
        self.assertEqual(list(elsewhere.iterdir()), [], "nothing written where it ran")


def _with_site_packages(probe: str) -> str:
    # -S drops the .pth files (the editable install's); add Twisted's directory back by hand.
    import twisted

    site = str(Path(twisted.__file__).resolve().parent.parent)
    return f"import sys; sys.path.append({site!r})\n" + probe


class MakeServiceTests(SynchronousTestCase):
    def test_twistd_freezes_startup_objects(self) -> None:
        """
        Under twistd the objects alive at start are frozen out of the garbage
        collector's full collections; a service built for embedding leaves the
        collector alone.
        """
        import gc

        from twisted.internet.testing import MemoryReactorClock

        from sora2proxy._tap import makeService
        from sora2proxy.ops._lifecycle import FrozenStartup

        options = Options(environ={})
        options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--admin-listen", "none"])
        service = makeService(options)
        ports = _ports(service)
        self.assertEqual(len(ports), 1)
        self.addCleanup(lambda: [port.stopListening() for port in ports])  # type: ignore[attr-defined]
        frozen = [child for child in service if isinstance(child, FrozenStartup)]  # type: ignore[attr-defined]
        self.assertEqual(len(frozen), 1)
        assert options.config is not None
        embedded = build_service(options.config, [], MemoryReactorClock())
        self.assertFalse(any(isinstance(child, FrozenStartup) for child in embedded))  # type: ignore[attr-defined]
        self.addCleanup(gc.unfreeze)
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        before = gc.get_freeze_count()
        kept = [object()]  # a container alive at start: frozen with the rest
        frozen[0].startService()
        self.assertGreater(gc.get_freeze_count(), before)
        self.assertTrue(kept)
        self.assertEqual(gc.get_threshold()[0], 10_000)  # young collections: 700 by default

    def test_listeners_and_monitor(self) -> None:
        """makeService's service has a listener per --listen and the health monitor."""
        from twisted.internet.testing import MemoryReactorClock

        options = Options(environ={})
        options.parseOptions(
            [
                "--listen",
                "tcp:0",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--admin-listen",
                "tcp:0:interface=localhost",
            ]
        )
        assert options.config is not None
        reactor = MemoryReactorClock()
        service = build_service(options.config, options.listen, reactor)
        assert IServiceCollection.providedBy(service)
        service.startService()
        self.assertEqual(len(reactor.tcpServers), 3, "admin and two public listeners")
        self.assertEqual(reactor.tcpServers[2][3], "127.0.0.1")
        self.assertEqual(len(reactor.tcpClients), 1, "the first health check connects at once")
        service.stopService()


def _ports(service: object) -> list[object]:
    """The listening ports of C{service}'s tree."""
    found: list[object] = []
    for child in getattr(service, "services", []):
        port = getattr(child, "_port", None) or getattr(child, "port", None)
        if port is not None and hasattr(port, "stopListening"):
            found.append(port)
        found += _ports(child)
    return found
