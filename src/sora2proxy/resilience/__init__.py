"""
Deciding, not talking: the retry policy and the retry loop, the retry
budget, the classification of a failed try, each upstream's health and
ejection, and the balancer that picks an upstream for each try.

Knows nothing of twisted.web's C{Request}: it works on methods, targets,
headers and L{IResponse}s.  May import: C{http}, the standard library,
Twisted, and the kernel modules (C{_config}, C{_errors}).  Imports nothing of
C{forward}, C{idempotency} or C{ops}; what it reports goes to observers
given to it (L{typing.Protocol}s), which C{ops} implements.
"""
