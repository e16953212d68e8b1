"""
Every zope C{@implementer} class in the package provides what it declares,
checked with C{verifyObject} on an instance; the classes are found by reading
the source, so that a new one without a check fails here.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from io import BytesIO, StringIO
from pathlib import Path

import trustme
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementedBy
from zope.interface.verify import verifyObject

import sora2proxy
from sora2proxy.demo._app import ByteStream
from sora2proxy.forward._attempt import ReplayableBody
from sora2proxy.forward._relay import BodyRelay
from sora2proxy.http._chunked import ChunkedEncoder
from sora2proxy.http._client import UpstreamClient
from sora2proxy.http._endpoints import PrivateCAPolicy, UpstreamEndpoints
from sora2proxy.http._h2 import NegotiatedChannel
from sora2proxy.http._reading import PauseTracking
from sora2proxy.http._upstream_response import BodyTransport, UpstreamResponse
from sora2proxy.ops._admin_hosts import LocalHostsOnly
from sora2proxy.ops._logs import JSONLinesObserver

from .helpers import InertReadControl

SOURCE = Path(sora2proxy.__file__).parent


def _response() -> UpstreamResponse:
    fields = {b"content-length": (b"Content-Length", [b"0"])}
    return UpstreamResponse((b"HTTP", 1, 1), 200, b"OK", fields, {}, 0, InertReadControl())


def _proxy_resource() -> object:
    return sora2proxy.build_proxy(sora2proxy.ProxyConfig(), MemoryReactorClock()).resource


#: One instance of each @implementer class, by the class's dotted name.
INSTANCES: dict[str, Callable[[], object]] = {
    "sora2proxy.demo._app.ByteStream": lambda: ByteStream(DummyRequest([b""]), 10),  # type: ignore[no-untyped-call]
    "sora2proxy.forward._attempt.ReplayableBody": lambda: ReplayableBody(
        BytesIO(b"x"), 1, Cooperator(scheduler=Clock().callLater)
    ),
    "sora2proxy.forward._relay.BodyRelay": lambda: BodyRelay(DummyRequest([b""]), lambda _: None),  # type: ignore[no-untyped-call]
    "sora2proxy.forward._resource.ProxyResource": _proxy_resource,
    "sora2proxy.http._chunked.ChunkedEncoder": lambda: ChunkedEncoder(StringTransport()),
    "sora2proxy.http._client.UpstreamClient": lambda: UpstreamClient(Clock(), UpstreamEndpoints(Clock())),
    "sora2proxy.http._endpoints.PrivateCAPolicy": lambda: PrivateCAPolicy(trustme.CA().cert_pem.bytes()),
    "sora2proxy.http._endpoints.UpstreamEndpoints": lambda: UpstreamEndpoints(MemoryReactorClock()),
    "sora2proxy.http._h2.NegotiatedChannel": lambda: NegotiatedChannel(Protocol(), lambda: None),  # type: ignore[arg-type,return-value]
    "sora2proxy.http._reading.PauseTracking": lambda: PauseTracking(StringTransport()),
    "sora2proxy.http._upstream_response.BodyTransport": lambda: BodyTransport(InertReadControl()),
    "sora2proxy.http._upstream_response.UpstreamResponse": _response,
    "sora2proxy.ops._admin_hosts.LocalHostsOnly": lambda: LocalHostsOnly(Resource()),
    "sora2proxy.ops._logs.JSONLinesObserver": lambda: JSONLinesObserver(StringIO()),
}


def _is_implementer(decorator: ast.expr) -> bool:
    if not isinstance(decorator, ast.Call):
        return False
    function = decorator.func
    name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
    return name == "implementer"


def implementer_classes() -> list[str]:
    """
    The dotted name of each class in the package's source decorated with
    C{@implementer}; one defined inside a function or class is named with
    a C{<nested>} mark (it cannot be verified: move it to the module).
    """
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        module = ".".join(["sora2proxy", *path.relative_to(SOURCE).with_suffix("").parts])
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(map(_is_implementer, node.decorator_list)):
                found.append(f"{module}.{node.name}" if id(node) in top else f"{module}.<nested>.{node.name}")
    return found


class ImplementerTests(SynchronousTestCase):
    def test_every_implementer_checked(self) -> None:
        """Each @implementer class in the package has an instance verified below, and only those."""
        found = set(implementer_classes())
        missing = sorted(found - INSTANCES.keys())
        stale = sorted(INSTANCES.keys() - found)
        self.assertEqual((missing, stale), ([], []), "(no verifyObject check, no such @implementer class)")

    def test_verify_object(self) -> None:
        """Each @implementer class's instance provides every interface it declares, methods and attributes."""
        for name, make in INSTANCES.items():
            module, _, class_name = name.rpartition(".")
            cls = getattr(importlib.import_module(module), class_name)
            instance = make()
            self.assertIsInstance(instance, cls)
            interfaces = list(implementedBy(cls))
            self.assertTrue(interfaces, name)
            for interface in interfaces:
                self.assertTrue(verifyObject(interface, instance), f"{name} {interface.__name__}")

    def test_decorator_forms(self) -> None:
        """The search knows @implementer(...) by its name or as an attribute (zope.interface.implementer)."""
        self.assertIn("sora2proxy.http._client.UpstreamClient", implementer_classes())
        tree = ast.parse("@zope.interface.implementer(I)\nclass A: pass\n@implementer\nclass B: pass\n")
        decorators = [node.decorator_list[0] for node in tree.body if isinstance(node, ast.ClassDef)]
        self.assertEqual([_is_implementer(d) for d in decorators], [True, False])
