"""
A demo backend with the surface of the Sora2 API, in memory: clearly a demo,
for ``make run``, the tests and the benchmarks.  ``python -m sora2proxy.demo``.

May import: C{http} (its quiet site) and the kernel modules; the proxy
imports nothing of it (C{--spawn} runs it as a command).
"""

from ._app import DemoBackend, Faults, Video

__all__ = ["DemoBackend", "Faults", "Video"]
