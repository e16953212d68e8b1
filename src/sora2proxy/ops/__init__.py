"""
Operating the proxy: the admin port (metrics, status page, readiness), the
counts behind them, access and JSON logs, listening ports bound at start-up,
C{--spawn} children, C{--workers}, and the stop order.

May import every layer below the top (C{forward}, C{resilience},
C{idempotency}, C{http}) and the kernel modules.  Imported only by the top
(C{_tap}, C{_proxy}, the public C{__init__}): nothing below depends on it.
"""
