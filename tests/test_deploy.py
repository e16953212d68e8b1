"""
The deployment files parse and use only options that exist, with values the
proxy accepts.
"""

from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy._tap import Options

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def parse(args: list[str]) -> Options:
    options = Options(environ={})
    options.parseOptions(args)
    return options


class KubernetesTests(SynchronousTestCase):
    def test_manifests(self) -> None:
        """The Deployment's args parse; its probes use the admin port's /ready and /health."""
        documents = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
        kinds = {d["kind"]: d for d in documents}
        self.assertEqual(set(kinds), {"Deployment", "Service"})
        container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(container["command"][-1], "sora2proxy")
        options = parse(container["args"])
        assert options.config is not None
        self.assertEqual(options.config.admin_listen, "tcp:9901")
        self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/ready")
        self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/health")
        self.assertIn("preStop", container["lifecycle"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        self.assertEqual(ports, {"http": 3200, "admin": 9901})
        self.assertEqual(kinds["Service"]["spec"]["ports"][0]["targetPort"], "http")


class SystemdTests(SynchronousTestCase):
    def test_units(self) -> None:
        """The service's ExecStart parses, with the socket systemd passes (LISTEN_FDS) as its listener; exit 78 is not restarted."""
        service = configparser.ConfigParser(interpolation=None, strict=False)
        service.read(DEPLOY / "sora2proxy.service")
        socket_unit = configparser.ConfigParser(interpolation=None)
        socket_unit.read(DEPLOY / "sora2proxy.socket")
        self.assertEqual(socket_unit["Socket"]["ListenStream"], "3200")
        self.assertEqual(service["Unit"]["Requires"], "sora2proxy.socket")
        # A configuration error (exit 78) is not restarted in a loop.
        self.assertEqual(service["Service"]["RestartPreventExitStatus"], "78")
        argv = shlex.split(service["Service"]["ExecStart"])
        args = argv[argv.index("sora2proxy") + 1 :]
        self.assertIn("systemd:domain=INET:index=0", args)
        probe = (
            "import sys\n"
            "from sora2proxy._tap import Options\n"
            "options = Options(environ={})\n"
            "options.parseOptions(sys.argv[1:])\n"
            "print(options.listen)\n"
        )
        result = subprocess.run(
            ["sh", "-c", 'p="$1"; shift; LISTEN_FDS=1 LISTEN_FDNAMES=sora2proxy.socket LISTEN_PID=$$ exec "$0" -c "$p" "$@"',
             sys.executable,
             probe, *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("systemd:domain=INET:index=0", result.stdout)

    def test_systemd_endpoint_without_systemd(self) -> None:
        """Outside systemd, a systemd: endpoint is refused with one line, not a traceback."""
        with self.assertRaises(SystemExit) as caught:
            parse(["--listen", "systemd:domain=INET:index=0"])
        self.assertIn("--listen", str(caught.exception.code))
