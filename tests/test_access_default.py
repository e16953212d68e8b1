"""
The default access log: on standard output under C{twistd -n}, in
C{access.log} beside twistd's C{--logfile} when daemonised, reopened on
C{SIGUSR1} (logrotate without copytruncate), never a line lost at stop.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from types import FrameType

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sora2proxy import ProxyConfig
from sora2proxy.ops._access_log import FileSink, LoggerSink, access_sink, default_access_log
from sora2proxy.ops._logs import JSONLinesObserver
from sora2proxy.ops._reopen import ReopenOnSignal

from .helpers import eventually
from .test_cli import BIN, ROOT, get, start_backend, start_proxy_process
from .test_cli import eventually as blocking_eventually

FIELDS = {"method": "GET", "path": "/api/proxy/a", "status": 200, "request_id": "r1"}


def twistd_config(*argv: str) -> ProxyConfig:
    """
    The proxy's configuration as twistd parses C{argv} (twistd's options,
    C{sora2proxy}, the proxy's options).
    """
    options = ServerOptions()
    options.parseOptions(list(argv))
    config = options.subOptions.config
    assert isinstance(config, ProxyConfig)
    return config


class DefaultTests(SynchronousTestCase):
    def test_foreground_writes_to_stdout(self) -> None:
        """twistd -n sora2proxy with no --access-log writes access lines to standard output."""
        self.assertEqual(twistd_config("-n", "sora2proxy").access_log, "-")
        # twistd --debug implies -n (parsed by hand: twistd's --debug turns on Deferred debugging for the process).
        self.assertEqual(default_access_log({"debug": True}), "-")
        self.assertEqual(twistd_config("-n", "--logfile", "-", "sora2proxy").access_log, "-")

    def test_daemon_writes_beside_its_logfile(self) -> None:
        """Daemonised, access lines go to access.log in the folder of twistd's --logfile."""
        folder = Path(self.mktemp()).absolute()
        folder.mkdir()
        logfile = str(folder / "twistd.log")
        self.assertEqual(
            twistd_config("--logfile", logfile, "sora2proxy").access_log, str(folder / "access.log")
        )
        self.assertEqual(
            twistd_config("-n", "--logfile", logfile, "sora2proxy").access_log, str(folder / "access.log")
        )

    def test_daemon_without_logfile(self) -> None:
        """Daemonised with no --logfile (twistd.log in the current folder), access.log sits beside it."""
        self.assertEqual(twistd_config("sora2proxy").access_log, os.path.abspath("access.log"))

    def test_logfile_thrown_away(self) -> None:
        """twistd --logfile /dev/null throws the access lines away too (no /dev/access.log)."""
        self.assertEqual(twistd_config("-n", "--logfile", "/dev/null", "sora2proxy").access_log, "off")

    def test_syslog_keeps_log_events(self) -> None:
        """With twistd --syslog, access lines are log events, so they reach syslog too."""
        self.assertEqual(default_access_log({"syslog": True, "nodaemon": True}), "log")

    def test_given_wins(self) -> None:
        """An explicit --access-log is kept whatever twistd's own options."""
        for where in ("off", "log", "-"):
            self.assertEqual(twistd_config("sora2proxy", "--access-log", where).access_log, where)

    def test_outside_twistd(self) -> None:
        """The options parsed outside twistd (no parent) pick standard output."""
        self.assertEqual(default_access_log(None), "-")

    def test_every_sink_writes_json(self) -> None:
        """--log-format json: standard output and a file write JSON lines; log keeps events for the JSON observer."""
        path = Path(self.mktemp()).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        for where in ("-", str(path)):
            sink = access_sink(ProxyConfig(access_log=where, log_format="json"), Clock())
            assert isinstance(sink, FileSink)
            out = io.StringIO()
            sink._out = out
            sink.record("GET /api/proxy/a 200", FIELDS)
            sink.flush()
            self.assertEqual(json.loads(out.getvalue())["request_id"], "r1")
        log = access_sink(ProxyConfig(access_log="log", log_format="json"), Clock())
        self.assertIsInstance(log, LoggerSink)


class ReopenTests(SynchronousTestCase):
    def sink(self) -> tuple[FileSink, Path]:
        path = Path(self.mktemp()).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        sink = access_sink(ProxyConfig(access_log=str(path)), Clock())
        assert isinstance(sink, FileSink)
        sink.startService()
        self.addCleanup(sink.stopService)
        return sink, path

    def test_reopen_after_rename(self) -> None:
        """After logrotate renames the file, reopen sends the next lines to a new file and none is lost."""
        sink, path = self.sink()
        sink.record("GET /one 200", FIELDS)
        path.rename(path.with_suffix(".1"))
        sink.record("GET /two 200", FIELDS)  # buffered: written to the renamed file by reopen
        sink.reopen()
        sink.record("GET /three 200", FIELDS)
        sink.flush()
        self.assertEqual(_tails(path.with_suffix(".1")), ["GET /one 200", "GET /two 200"])
        self.assertEqual(_tails(path), ["GET /three 200"])

    def test_reopen_keeps_the_mode(self) -> None:
        """
        The file reopened after a rotation has the old file's mode, whatever
        the daemon's umask (twistd's is 0077), unless logrotate made it.
        """
        import os

        sink, path = self.sink()
        path.chmod(0o644)
        path.rename(path.with_suffix(".1"))
        old_umask = os.umask(0o077)
        self.addCleanup(os.umask, old_umask)
        sink.reopen()
        self.assertEqual(path.stat().st_mode & 0o777, 0o644)
        path.rename(path.with_suffix(".2"))
        path.touch(0o600)  # logrotate's create, with its own mode
        sink.reopen()
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)

    def test_reopen_failure_keeps_the_old_file(self) -> None:
        """A file that cannot be reopened (its folder gone) leaves the lines going to the old file."""
        sink, path = self.sink()
        moved = path.parent.with_name(path.parent.name + "-moved")
        path.parent.rename(moved)
        sink.reopen()
        sink.record("GET /kept 200", FIELDS)
        sink.flush()
        self.assertEqual(_tails(moved / path.name), ["GET /kept 200"])

    def test_lines_after_stop_written_at_once(self) -> None:
        """A line recorded after the sink stopped (a request ending during shutdown) is written at once."""
        sink, path = self.sink()
        sink.record("GET /before 200", FIELDS)
        sink.stopService()
        self.assertEqual(_tails(path), ["GET /before 200"])
        sink.record("GET /after 200", FIELDS)
        self.assertEqual(_tails(path), ["GET /before 200", "GET /after 200"])

    def test_stdout_after_stop(self) -> None:
        """Standard output is flushed at stop, left open, and later lines are written at once."""
        out = io.StringIO()
        sink = FileSink(out, Clock())
        sink.startService()
        sink.record("GET /a 200", FIELDS)
        sink.stopService()
        sink.record("GET /b 200", FIELDS)
        self.assertEqual(
            [line.split("] ", 1)[1] for line in out.getvalue().splitlines()], ["GET /a 200", "GET /b 200"]
        )


class JSONLogFileTests(SynchronousTestCase):
    def test_json_log_reopened(self) -> None:
        """The JSON log in twistd's --logfile goes to a new file after logrotate's rename and a reopen."""
        path = Path(self.mktemp()).absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        observer = JSONLinesObserver.to(str(path))
        observer({"log_format": "one", "log_namespace": "t"})
        path.rename(path.with_suffix(".1"))
        observer.reopen()
        observer({"log_format": "two", "log_namespace": "t"})
        path.parent.rename(path.parent.with_name(path.parent.name + "-gone"))
        observer.reopen()  # the folder is gone: the file open now is kept
        observer({"log_format": "three", "log_namespace": "t"})
        moved = path.parent.with_name(path.parent.name + "-gone")
        self.assertEqual(
            [
                json.loads(x)["message"]
                for x in (moved / path.with_suffix(".1").name).read_text().splitlines()
            ],
            ["one"],
        )
        self.assertEqual(
            [json.loads(x)["message"] for x in (moved / path.name).read_text().splitlines()], ["two", "three"]
        )


class BrokenOut(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


class WriteFailureTests(SynchronousTestCase):
    def test_write_failure_logged(self) -> None:
        """A write that fails (disk full, stdout closed) is one logged error naming the lines lost, not a crash."""
        events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        sink = FileSink(BrokenOut(), Clock())
        sink.record("GET /a 200", FIELDS)
        sink.record("GET /b 200", FIELDS)
        sink.flush()
        messages = [formatEvent(e) for e in events]
        self.assertEqual(messages, ["access log: 2 lines not written: [Errno 28] No space left on device"])


class CountingLog:
    def __init__(self) -> None:
        self.reopened = 0

    def reopen(self) -> None:
        self.reopened += 1


class SignalTests(TestCase):
    @inlineCallbacks
    def test_sigusr1_reopens_and_chains(self) -> None:
        """SIGUSR1 reopens the log on the reactor, still calls the handler it replaced, which is put back at stop."""
        before: list[int] = []

        def previous(signum: int, frame: FrameType | None) -> None:
            before.append(signum)

        saved = signal.signal(signal.SIGUSR1, previous)
        self.addCleanup(signal.signal, signal.SIGUSR1, saved)
        log = CountingLog()
        service = ReopenOnSignal(log, reactor)
        service.startService()
        os.kill(os.getpid(), signal.SIGUSR1)
        yield eventually(lambda: log.reopened == 1, what="the reopen")
        self.assertEqual(before, [signal.SIGUSR1])
        service.stopService()
        self.assertIs(signal.getsignal(signal.SIGUSR1), previous)

    def test_default_handler_restored(self) -> None:
        """Stopping puts SIG_DFL back when no handler was installed before."""
        saved = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        self.addCleanup(signal.signal, signal.SIGUSR1, saved)
        service = ReopenOnSignal(CountingLog(), reactor)
        service.startService()
        self.assertNotEqual(signal.getsignal(signal.SIGUSR1), signal.SIG_DFL)
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGUSR1), signal.SIG_DFL)


class ForegroundProcessTests(SynchronousTestCase):
    def test_stdout_lines_none_lost_at_stop(self) -> None:
        """twistd -n: every request's line reaches stdout, the last ones too when SIGTERM comes at once."""
        backend_port = start_backend(self)
        proxy, port = start_proxy_process(
            self, "--admin-listen", "none", "--upstream", f"http://127.0.0.1:{backend_port}/api"
        )
        ids = [get(f"http://127.0.0.1:{port}/api/proxy/jobs?n={n}")[1]["X-Request-Id"] for n in range(20)]
        os.kill(proxy.process.pid, signal.SIGTERM)
        self.assertIsNotNone(proxy.process.wait(20))
        proxy.stop()
        lines = [line for line in proxy.lines if "[sora2proxy.access]" in line]
        self.assertEqual([re.search(r" id=(\w+)", line).group(1) for line in lines], ids)  # type: ignore[union-attr]
        self.assertEqual(
            [line.split(" ")[3] for line in lines], [f"/api/proxy/jobs?n={n}" for n in range(20)]
        )

    def test_stdout_json(self) -> None:
        """twistd -n --log-format json: the default access lines on stdout are JSON with the request's fields."""
        backend_port = start_backend(self)
        proxy, port = start_proxy_process(
            self,
            "--admin-listen",
            "none",
            "--upstream",
            f"http://127.0.0.1:{backend_port}/api",
            "--log-format",
            "json",
        )
        _, headers, _ = get(f"http://127.0.0.1:{port}/api/proxy/jobs?x=2")
        event = json.loads(proxy.wait_for(r'"namespace": "sora2proxy.access"').string)
        self.assertEqual(
            (event["request_id"], event["path"], event["status"]),
            (headers["X-Request-Id"], "/api/proxy/jobs?x=2", 200),
        )


class DaemonProcessTests(SynchronousTestCase):
    def daemon(self, *options: str) -> tuple[int, Path, str]:
        """
        Start a daemonised twistd sora2proxy with C{--logfile} in a folder of
        its own: its pid, the folder and the proxy's base URL.
        """
        backend_port = start_backend(self)
        folder = Path(self.mktemp()).absolute()
        folder.mkdir(parents=True)
        pidfile, logfile = folder / "twistd.pid", folder / "twistd.log"
        started = subprocess.run(
            [str(BIN / "twistd"), f"--pidfile={pidfile}", f"--logfile={logfile}", "sora2proxy",
             "--listen", "tcp:0:interface=127.0.0.1", "--admin-listen", "none",
             "--upstream", f"http://127.0.0.1:{backend_port}/api", *options],
            cwd=ROOT, timeout=30, capture_output=True, text=True,
        )  # fmt: skip
        self.assertEqual(started.returncode, 0, started.stderr)
        pid = int(blocking_eventually(lambda: pidfile.exists() and pidfile.read_text().strip(), seconds=20))
        self.addCleanup(_stop, pid)
        found = blocking_eventually(
            lambda: re.search(r"ProxySite starting on (\d+)", _text(logfile)), seconds=20
        )
        self.assertTrue(found, _text(logfile))
        return pid, folder, f"http://127.0.0.1:{found.group(1)}/api/proxy/jobs"

    def rotate(self, pid: int, folder: Path, url: str, rename_log: bool) -> tuple[str, str]:
        """
        One request, logrotate's rename of access.log (and of twistd.log
        with C{rename_log}) and SIGUSR1, another request, stop: the two
        request ids.
        """
        first = get(url + "?n=1")[1]["X-Request-Id"]
        access = folder / "access.log"
        self.assertTrue(blocking_eventually(lambda: first in _text(access)), _text(folder / "twistd.log"))
        access.rename(folder / "access.log.1")
        if rename_log:
            (folder / "twistd.log").rename(folder / "twistd.log.1")
        os.kill(pid, signal.SIGUSR1)
        self.assertTrue(blocking_eventually(lambda: access.exists()), "access.log not reopened")
        second = get(url + "?n=2")[1]["X-Request-Id"]
        self.assertTrue(blocking_eventually(lambda: second in _text(access)))
        self.assertNotIn(second, _text(folder / "access.log.1"))
        self.assertNotIn(first, _text(access))
        _stop(pid)
        self.assertEqual(
            len(_text(folder / "access.log.1").splitlines()) + len(_text(access).splitlines()), 2
        )
        return first, second

    def test_logrotate_with_sigusr1(self) -> None:
        """Daemonised: lines in access.log beside --logfile; after a rename and SIGUSR1 they go to a new access.log."""
        pid, folder, url = self.daemon()
        self.rotate(pid, folder, url, rename_log=False)
        self.assertTrue((folder / "twistd.log.1").exists())  # twistd's own handler still rotates its log

    def test_json_daemon(self) -> None:
        """Daemonised with --log-format json: JSON access lines in access.log, the other events in --logfile, both reopened."""
        pid, folder, url = self.daemon("--log-format", "json")
        first, second = self.rotate(pid, folder, url, rename_log=True)
        for name, request_id in (("access.log.1", first), ("access.log", second)):
            access = [json.loads(line) for line in (folder / name).read_text().splitlines()]
            self.assertEqual([(e["request_id"], e["status"]) for e in access], [(request_id, 200)])
        events = [json.loads(line) for line in _text(folder / "twistd.log").splitlines()]
        self.assertIn("Server Shut Down.", [e["message"] for e in events])  # written after the reopen


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    blocking_eventually(lambda: not _alive(pid), seconds=20)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _tails(path: Path) -> list[str]:
    return [line.split("] ", 1)[1] for line in path.read_text().splitlines()]
