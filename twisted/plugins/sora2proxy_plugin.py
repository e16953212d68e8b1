"""
The twistd plugin: C{twistd -n sora2proxy}.

This file only names the tap module; importing it imports nothing of
sora2proxy and never the global reactor.  There is deliberately no
C{__init__.py} in C{twisted/} or C{twisted/plugins/}.
"""

from twisted.application.service import ServiceMaker

sora2proxy = ServiceMaker(
    "sora2proxy",
    "sora2proxy._tap",
    "An API proxy with health checks, safe retries and clear JSON errors.",
    "sora2proxy",
)
