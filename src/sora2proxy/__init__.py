"""
sora2proxy: an API proxy on Twisted that knows whether its backend is up,
retries only what is safe, and turns every failure into a precise status and
a JSON body that says how to fix it.

Embedding::

    from sora2proxy import ProxyConfig, build_proxy
    proxy = build_proxy(ProxyConfig(upstream="http://localhost:3101/api"), reactor)
    proxy.service.setServiceParent(application)   # health monitor, pool
    site = Site(proxy.resource)
"""

from ._config import ConfigError, ProxyConfig
from ._errors import ERROR_KINDS, ErrorKind, ProxyError
from ._proxy import Proxy, build_proxy
from .forward._resource import ProxyResource
from .resilience._classify import TryFailure, classify
from .resilience._health import Health, HealthMonitor, HealthState
from .resilience._retry import IDEMPOTENT_METHODS, GaveUp, RetryDecision, RetryLoop, RetryPolicy

__all__ = [
    "ERROR_KINDS",
    "IDEMPOTENT_METHODS",
    "ConfigError",
    "ErrorKind",
    "GaveUp",
    "Health",
    "HealthMonitor",
    "HealthState",
    "Proxy",
    "ProxyConfig",
    "ProxyError",
    "ProxyResource",
    "RetryDecision",
    "RetryLoop",
    "RetryPolicy",
    "TryFailure",
    "build_proxy",
    "classify",
]
