"""
The demo backend: its API on a Clock, its faults, and its command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy.demo import DemoBackend, Faults

from .test_cli import Child, get


class DemoAPITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = DemoBackend(self.clock)
        self.client = StubTreq(self.backend.resource())

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes, Any]:
        d = self.client.request(method, "http://demo.test" + path, **kwargs)
        self.client.flush()
        response = self.successResultOf(d)
        body = treq.content(response)
        self.client.flush()
        return response.code, self.successResultOf(body), response

    def test_job_lifecycle(self) -> None:
        """A created job progresses with time, lists, and its content streams once completed."""
        code, body, _ = self.call("POST", "/api/videos", data=b'{"prompt": "a cat"}')
        self.assertEqual(code, 201)
        video = json.loads(body)
        self.assertEqual((video["status"], video["progress"]), ("queued", 0))
        self.clock.advance(3)
        _, body, _ = self.call("GET", f"/api/videos/{video['id']}")
        self.assertEqual(json.loads(body)["status"], "in_progress")
        self.assertEqual(json.loads(body)["progress"], 50)
        code, _, _ = self.call("GET", f"/api/videos/{video['id']}/content")
        self.assertEqual(code, 409)
        self.clock.advance(3)
        _, body, _ = self.call("GET", "/api/videos")
        self.assertEqual(json.loads(body)["data"][0]["status"], "completed")
        code, body, response = self.call("GET", f"/api/videos/{video['id']}/content")
        self.assertEqual(code, 200)
        self.assertEqual(len(body), 4 * 1024 * 1024)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["video/mp4"])

    def test_events(self) -> None:
        """Progress comes as server-sent events until the job completes."""
        _, body, _ = self.call("POST", "/api/videos", data=b'{"prompt": "x"}')
        video_id = json.loads(body)["id"]
        d = self.client.get(f"http://demo.test/api/videos/{video_id}/events")
        self.client.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream"])
        content = treq.content(response)
        for _ in range(14):
            self.clock.advance(0.5)
            self.client.flush()
        events = self.successResultOf(content).decode().strip().split("\n\n")
        self.assertEqual(events[0].split("\n")[0], "event: progress")
        self.assertEqual(json.loads(events[-1].split("data: ")[1])["status"], "completed")

    def test_memory_stays_bounded(self) -> None:
        """The demo keeps its newest MAX_VIDEOS jobs and the start of each prompt, whatever it is sent."""
        from sora2proxy.demo._app import MAX_PROMPT, MAX_VIDEOS

        huge = json.dumps({"prompt": "x" * (1024 * 1024)}).encode()
        for _ in range(MAX_VIDEOS + 5):
            code, body, _ = self.call("POST", "/api/videos", data=huge)
            self.assertEqual(code, 201)
        self.assertEqual(len(json.loads(body)["prompt"]), MAX_PROMPT)
        self.assertEqual(len(self.backend.videos), MAX_VIDEOS)
        self.assertEqual(self.call("GET", "/api/videos/video_1")[0], 404)  # the oldest are forgotten
        self.assertEqual(self.call("GET", f"/api/videos/video_{MAX_VIDEOS + 5}")[0], 200)

    def test_bad_input_and_missing(self) -> None:
        """A POST without a prompt gets 400; an unknown id 404; the health check answers."""
        self.assertEqual(self.call("POST", "/api/videos", data=b"nope")[0], 400)
        self.assertEqual(self.call("GET", "/api/videos/video_9")[0], 404)
        self.assertEqual(self.call("GET", "/api/videos/video_9/content")[0], 404)
        self.assertEqual(self.call("GET", "/api/videos/video_9/events")[0], 404)
        self.assertEqual(self.call("GET", "/api/health")[0], 200)

    def test_faults(self) -> None:
        """--fail-rate 1 makes every answer a 500; --latency delays answers on the clock."""
        failing = DemoBackend(self.clock, Faults(fail_rate=1.0))
        client = StubTreq(failing.resource())
        d = client.get("http://demo.test/api/health")
        client.flush()
        self.assertEqual(self.successResultOf(d).code, 500)
        slow = DemoBackend(self.clock, Faults(latency=2.0))
        client = StubTreq(slow.resource())
        d = client.get("http://demo.test/api/health")
        client.flush()
        self.assertNoResult(d)
        self.clock.advance(2)
        client.flush()
        self.assertEqual(self.successResultOf(d).code, 200)


class DemoCommandLineTests(SynchronousTestCase):
    def test_down_for_then_up(self) -> None:
        """python -m sora2proxy.demo --down-for refuses connections, then serves."""
        from .helpers import refused_port

        port = refused_port()
        demo = Child(self, [sys.executable, "-m", "sora2proxy.demo", "--port", str(port), "--down-for", "1"])
        demo.wait_for("down for")
        with self.assertRaises(OSError):
            get(f"http://127.0.0.1:{port}/api/health", timeout=2)
        demo.wait_for("listening on")
        status, _, body = get(f"http://127.0.0.1:{port}/api/health")
        self.assertEqual((status, json.loads(body)["status"]), (200, "ok"))

    def test_bad_flags(self) -> None:
        """A bad flag is refused with a usage line."""
        result = subprocess.run(
            [sys.executable, "-m", "sora2proxy.demo", "--fail-rate", "2"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 2)
        self.assertIn("--fail-rate", result.stderr)


__all__ = ["time"]
