"""
Idempotency-Key handling: the guard (verdicts: pass, reject, replay, a
ticket that stores the answer), its stores (bounded memory, Redis) and the
stored answer.

May import: C{http}, the standard library, Twisted, txredisapi (lazily: it
imports the global reactor) and the kernel modules (C{_config}, C{_errors},
C{_identity}).  Imports nothing of C{forward}, C{resilience} or C{ops}.
"""
