"""
The public API: every exported name exists, and interfaces are provided.
"""

from __future__ import annotations

from twisted.application.service import IService
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource
from zope.interface.verify import verifyObject

import sora2proxy
from sora2proxy.forward._attempt import ReplayableBody
from sora2proxy.http._endpoints import UpstreamEndpoints


class ExportTests(SynchronousTestCase):
    def test_all_names_exist(self) -> None:
        """Every name in __all__ is importable from sora2proxy."""
        for name in sora2proxy.__all__:
            self.assertTrue(hasattr(sora2proxy, name), name)

    def test_interfaces(self) -> None:
        """The resource, the services and our zope implementers verify."""
        from io import BytesIO

        from twisted.internet.task import Cooperator
        from twisted.internet.testing import MemoryReactorClock
        from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer

        reactor = MemoryReactorClock()
        proxy = sora2proxy.build_proxy(sora2proxy.ProxyConfig(), reactor)
        self.assertTrue(verifyObject(IResource, proxy.resource))
        self.assertTrue(verifyObject(IService, proxy.service))
        self.assertTrue(verifyObject(IAgentEndpointFactory, UpstreamEndpoints(reactor)))
        body = ReplayableBody(BytesIO(b"x"), 1, Cooperator(scheduler=Clock().callLater))
        self.assertTrue(verifyObject(IBodyProducer, body))
        monitor = [s for s in proxy.service if isinstance(s, sora2proxy.HealthMonitor)]  # type: ignore[attr-defined]
        self.assertEqual(len(monitor), 1)
        self.assertTrue(verifyObject(IService, monitor[0]))
