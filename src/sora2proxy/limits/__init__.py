"""
Cost protection: per-caller rate limits (GCRA) and concurrency limits, kept
in memory (per process) or in Redis (shared by every worker and instance),
and the gate that admits or refuses a request and frees its slots when it
ends.

May import: C{http} and the kernel (C{_config}, C{_errors}, C{_identity},
C{_rules}).  C{forward} calls it through C{ProxyParts.limits}; C{ops} shows it.
"""
