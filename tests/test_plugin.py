"""
The twistd plugin as users run it: found from outside the checkout after an
editable install (the Makefile's) and after a normal install of the wheel,
with one-line errors for bad options and a real proxy from makeService.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from twisted.application.service import IServiceCollection
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sora2proxy._tap import Options, build_service

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


def _with_site_packages(probe: str) -> str:
    # -S drops the .pth files (the editable install's); add Twisted's directory back by hand.
    import twisted

    site = str(Path(twisted.__file__).resolve().parent.parent)
    return f"import sys; sys.path.append({site!r})\n" + probe


class MakeServiceTests(SynchronousTestCase):
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
