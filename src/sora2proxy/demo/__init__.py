"""
A demo backend with the surface of the Sora2 API, in memory: clearly a demo,
for ``make run``, the tests and the benchmarks.  ``python -m sora2proxy.demo``.
"""

from ._app import DemoBackend, Faults, Video

__all__ = ["DemoBackend", "Faults", "Video"]
