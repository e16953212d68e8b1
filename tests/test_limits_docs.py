"""
The README's cost-protection examples, run as written against the proxy
started with the README's options and the demo backend (free ports instead
of 3200 and 3101), answer as their comments say.
"""

from __future__ import annotations

import shlex
import sys

from twisted.trial.unittest import SynchronousTestCase

from .helpers import refused_port
from .test_cli import eventually, get, start_proxy_process
from .test_docs import curl, readme_literal


class ReadmeLimitsTests(SynchronousTestCase):
    def test_curls_as_written(self) -> None:
        """The README's rate, concurrency and event-stream curls answer 201 x10 then 429, the 429's fields, 429 beside two streams, and a proxy-error event."""
        [start] = readme_literal("With the demo backend running, start the proxy with limits::")
        options = shlex.split(start)[4:]
        self.assertEqual(options[0], "--rate-limit", start)
        demo_port = refused_port()
        spawn = f"demo={sys.executable} -m sora2proxy.demo --port {demo_port}"
        _, port = start_proxy_process(
            self, *options, "--spawn", spawn, "--upstream", f"http://localhost:{demo_port}/api",
            "--admin-listen", "none", "--health-interval", "1",
        )  # fmt: skip
        ok = eventually(lambda: get(f"http://127.0.0.1:{port}/api/proxy/videos")[0] == 200, seconds=15)
        self.assertTrue(ok, "the demo backend never answered")
        commands = [
            c.replace("localhost:3200", f"127.0.0.1:{port}").replace("-N ", "-N --max-time 2 ")
            for c in readme_literal("Then, from another terminal::")
        ]
        self.assertEqual(len(commands), 3, commands)
        self.assertEqual(curl(commands[0]).split(), ["201"] * 10 + ["429"])
        answer = curl(commands[1]).replace("\r", "")
        self.assertTrue(answer.startswith("HTTP/1.1 429 Too Many Requests\n"), answer)
        for field in ("Retry-After: ", 'Ratelimit-Policy: "POST:/videos=10/m";q=10;w=60', "Ratelimit: "):
            self.assertIn(field, answer)
        self.assertIn('"errorType": "RATE_LIMITED"', answer)
        self.assertEqual(sorted(curl(commands[2]).split()), ["200", "200", "429"])

    def test_event_stream_as_written(self) -> None:
        """The README's event-stream curl, with the backend stopped, gets retry, a proxy-error event and the JSON error."""
        [command] = readme_literal("plain`` turns this off)::")
        _, port = start_proxy_process(
            self, "--upstream", f"http://localhost:{refused_port()}/api", "--admin-listen", "none"
        )
        answer = curl(command.replace("localhost:3200", f"127.0.0.1:{port}"))
        lines = answer.split("\n")
        self.assertEqual(lines[:2], ["retry: 5000", "event: proxy-error"], answer)
        self.assertTrue(lines[2].startswith('data: {"error": "Backend '), answer)
