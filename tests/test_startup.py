"""
Start-up failures stop the process: a --listen or --admin-listen that cannot
be bound (taken, not permitted, not an address of this host), directly or in
--workers, makes twistd exit 78 within seconds with one line in nginx's words,
no traceback, and nothing left running; so does an --upstream-ca file that
cannot be read; a port out of range is a bad option (one line, status 1).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from twisted.internet.error import CannotListenError
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sora2proxy.ops._listening import bind_failure

from .helpers import refused_port
from .test_cli import BIN

#: EX_CONFIG of sysexits.h, the README's exit status for a start-up failure.
EX_CONFIG = 78


def taken_port(test: SynchronousTestCase) -> int:
    """A loopback port another socket listens on (closed by the test's cleanup)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    test.addCleanup(holder.close)
    port: int = holder.getsockname()[1]
    return port


def pids_with(token: str) -> list[int]:
    """Live (not zombie) processes whose command line contains C{token}."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def is_free(port: int) -> bool:
    """Whether nothing listens on loopback C{port}."""
    probe = socket.socket()
    try:
        return probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        probe.close()


class StartupFailureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.marker = f"marker-{uuid.uuid4().hex}"

    def start(self, *options: str, prefix: tuple[str, ...] = ()) -> tuple[int, list[str], str, float]:
        """
        Run twistd with C{options} (a unique marker among them) from outside the checkout.

        @return: its exit status, its stderr lines, its stdout and how long it ran.
        """
        argv = [*prefix, str(BIN / "twistd"), "-n", "--pidfile=", "sora2proxy", "--suggestion", self.marker,
                "--upstream", f"http://127.0.0.1:{refused_port()}/api", *options]  # fmt: skip
        started = time.monotonic()
        # Under coverage, a process run as another user could not write its data file.
        env = (
            os.environ
            if not prefix
            else {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
        )
        result = subprocess.run(argv, cwd="/", capture_output=True, text=True, timeout=60, env=env)
        took = time.monotonic() - started
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        for output in (result.stdout, result.stderr):
            self.assertNotIn("Traceback", output)
            self.assertNotIn("Unhandled", output)
        time.sleep(0.2)  # children signalled on the way out exit
        self.assertEqual(pids_with(self.marker), [], "a process was left running")
        return result.returncode, lines, result.stdout, took

    def test_listen_taken(self) -> None:
        """A --listen port another process holds: exit 78 with nginx's one line, nothing printed before it."""
        port = taken_port(self)
        status, lines, stdout, took = self.start("--listen", f"tcp:{port}:interface=127.0.0.1",
                                                 "--admin-listen", "none")  # fmt: skip
        self.assertEqual(status, EX_CONFIG)
        self.assertEqual(
            lines,
            [f"sora2proxy: error: --listen: bind() to 127.0.0.1:{port} failed (98: Address already in use)"],
        )
        self.assertEqual(stdout, "")
        self.assertLess(took, 20)

    def test_admin_listen_taken(self) -> None:
        """An --admin-listen port that is taken stops start-up too, and the public port is let go."""
        port = taken_port(self)
        public = refused_port()
        status, lines, _, _ = self.start("--listen", f"tcp:{public}:interface=127.0.0.1",
                                         "--admin-listen", f"tcp:{port}:interface=127.0.0.1")  # fmt: skip
        self.assertEqual(status, EX_CONFIG)
        self.assertEqual(
            lines,
            [
                f"sora2proxy: error: --admin-listen: bind() to 127.0.0.1:{port} failed (98: Address already in use)"
            ],
        )
        self.assertTrue(is_free(public))

    def test_port_out_of_range(self) -> None:
        """--admin-listen tcp:99999 is a bad option: refused before anything starts, naming it and the range."""
        public = refused_port()
        status, lines, stdout, _ = self.start("--listen", f"tcp:{public}:interface=127.0.0.1",
                                              "--admin-listen", "tcp:99999")  # fmt: skip
        self.assertEqual(status, 1)
        self.assertEqual(
            lines, ["sora2proxy: error: --admin-listen: port 99999 in 'tcp:99999' is out of range (0-65535)"]
        )
        self.assertEqual(stdout, "")
        self.assertTrue(is_free(public))
        status, lines, _, _ = self.start("--listen", "tcp:port=65536:interface=127.0.0.1")
        self.assertEqual(status, 1)
        self.assertEqual(len(lines), 1)
        self.assertIn("--listen: port 65536", lines[0])

    def test_address_not_on_this_host(self) -> None:
        """An interface this host does not have: exit 78 with errno 99 and its reason."""
        status, lines, _, _ = self.start("--listen", "tcp:0:interface=192.0.2.1", "--admin-listen", "none")
        self.assertEqual(status, EX_CONFIG)
        reason = f"{errno.EADDRNOTAVAIL}: {os.strerror(errno.EADDRNOTAVAIL)}"
        self.assertEqual(lines, [f"sora2proxy: error: --listen: bind() to 192.0.2.1:0 failed ({reason})"])

    def test_permission_denied(self) -> None:
        """A user who may not bind port 80 gets errno 13, Permission denied, in the one line."""
        if os.getuid() != 0 or shutil.which("setpriv") is None:
            raise SkipTest("needs root and setpriv to run twistd as nobody")
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            if int(f.read()) <= 80:
                raise SkipTest("port 80 is not privileged on this host")
        nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
        status, lines, _, _ = self.start("--listen", "tcp:80:interface=127.0.0.1", "--admin-listen", "none",
                                         prefix=nobody)  # fmt: skip
        self.assertEqual(status, EX_CONFIG)
        self.assertEqual(
            lines, ["sora2proxy: error: --listen: bind() to 127.0.0.1:80 failed (13: Permission denied)"]
        )

    def test_unreadable_upstream_ca(self) -> None:
        """--upstream-ca naming a file that cannot be read: exit 78 with one line naming the option and file."""
        public = refused_port()
        status, lines, stdout, _ = self.start("--listen", f"tcp:{public}:interface=127.0.0.1",
                                              "--admin-listen", "none", "--upstream-ca", "/nonexistent.pem")  # fmt: skip
        self.assertEqual(status, EX_CONFIG)
        self.assertEqual(
            lines,
            ["sora2proxy: error: --upstream-ca: cannot read '/nonexistent.pem' (No such file or directory)"],
        )
        self.assertEqual(stdout, "")
        self.assertTrue(is_free(public))
        status, lines, _, _ = self.start("--admin-listen", "none", "--upstream-ca", "/")
        self.assertEqual(
            (status, lines),
            (EX_CONFIG, ["sora2proxy: error: --upstream-ca: cannot read '/' (Is a directory)"]),
        )
        not_pem = os.path.abspath(self.mktemp())
        Path(not_pem).write_text("not a certificate\n")
        status, lines, _, _ = self.start("--admin-listen", "none", "--upstream-ca", not_pem)
        self.assertEqual(status, 1, "a file that holds no certificate is a bad value")
        self.assertEqual(lines, [f"sora2proxy: error: --upstream-ca: {not_pem!r} holds no PEM certificate"])

    def test_unwritable_access_log(self) -> None:
        """--access-log naming a file that cannot be opened: exit 78 with one line naming the option and file."""
        public = refused_port()
        status, lines, stdout, _ = self.start("--listen", f"tcp:{public}:interface=127.0.0.1",
                                              "--admin-listen", "none", "--access-log", "/proc/nope.log")  # fmt: skip
        self.assertEqual(status, EX_CONFIG)
        self.assertEqual(
            lines,
            [
                "sora2proxy: error: --access-log: cannot open '/proc/nope.log' for appending (No such file or directory)"
            ],
        )
        self.assertEqual(stdout, "")
        self.assertTrue(is_free(public))

    def test_workers_cannot_bind(self) -> None:
        """--workers whose port is taken: the parent stops its workers and children and exits 78 with one line."""
        port = taken_port(self)
        status, lines, stdout, took = self.start(
            "--workers", "2", "--listen", f"tcp:{port}:interface=127.0.0.1", "--admin-listen", "none",
            "--spawn", f"sleeper={sys.executable} -c 'import time; time.sleep(300)' {self.marker}",
        )  # fmt: skip
        self.assertEqual(status, EX_CONFIG)
        self.assertEqual(len(lines), 1, lines)
        expected = (
            f"sora2proxy: error: --listen: bind() to 127.0.0.1:{port} failed (98: Address already in use)"
        )
        self.assertRegex(
            lines[0], r"^" + expected.replace("(", r"\(").replace(")", r"\)") + r" \(worker-[01]\)$"
        )
        self.assertIn("[sleeper] started", stdout)
        self.assertIn("could not start (status 78); not restarted", stdout)
        self.assertNotIn("restarting in", stdout)
        self.assertLess(took, 30)


class BindLineTests(SynchronousTestCase):
    def test_addresses_as_nginx_writes_them(self) -> None:
        """An IPv6 address is bracketed and a missing interface is the wildcard, as in nginx's bind() line."""
        in_use = OSError(errno.EADDRINUSE, "Address already in use")
        self.assertEqual(
            str(bind_failure("--listen", "tcp6:3200", CannotListenError("", 3200, in_use))),
            "--listen: bind() to [::]:3200 failed (98: Address already in use)",
        )
        self.assertEqual(
            str(bind_failure("--listen", "tcp:3200", CannotListenError("", 3200, in_use))),
            "--listen: bind() to 0.0.0.0:3200 failed (98: Address already in use)",
        )
        self.assertEqual(
            str(
                bind_failure(
                    "--admin-listen", "tcp6:9901:interface=\\:\\:1", CannotListenError("::1", 9901, in_use)
                )
            ),
            "--admin-listen: bind() to [::1]:9901 failed (98: Address already in use)",
        )
