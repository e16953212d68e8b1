"""
A short fault-injection soak (``make soak`` runs a long one).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from .soak import run_soak


class SoakTests(SynchronousTestCase):
    def test_short_soak(self) -> None:
        """Under chaos no request hangs, answers are documented, no POST is sent twice, memory returns."""
        report = run_soak(seconds=12, clients=4, chaos_every=3.0, min_kills=2)
        print(f"\nsoak: {report}")
        self.assertTrue(report["proxy_alive"])
        self.assertEqual(report["failure_count"], 0, report["failures"])
        self.assertEqual(report["duplicate_posts"], {})
        self.assertGreater(report["requests"], 100)
        self.assertGreaterEqual(report["answers"].get("upstream killed", 0), 2)
        self.assertGreater(report["answers"].get("200", 0), 50)
        self.assertLessEqual(report["rss_end_mib"], report["rss_start_mib"] + 10)
