"""
Idempotency-Key at the edge (after draft-ietf-httpapi-idempotency-key-header
and Stripe): for a POST or PATCH with a key, the first request is forwarded
and the upstream's answer stored; a repeat gets the stored answer replayed,
a concurrent one 409, a different request with the same key 422.  Keys are
scoped by the caller's L{Identity}, so a key never crosses from one caller
to another.  An answer is stored once the backend has begun executing the
request (Stripe's rule): never a 429, 502, 503 or 504, nor an error of the
proxy's own; those release the key, so the client's retry is forwarded.
"""

from __future__ import annotations

import hashlib
from typing import IO

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from .._errors import ErrorKind
from .._identity import Identity
from .._rules import path_rule
from ..http._headers import REQUEST_ID
from ._store import Entry, IdempotencyStore, StoredResponse, StoreFull, StoreUnavailable

#: Methods whose Idempotency-Key the proxy enforces.
CHECKED_METHODS = frozenset({b"POST", b"PATCH"})
HEADER = b"idempotency-key"
MAX_KEY = 255

IDEMPOTENCY_KEY_INVALID = ErrorKind("IDEMPOTENCY_KEY_INVALID", 400, "Invalid Idempotency-Key")
IDEMPOTENCY_KEY_MISSING = ErrorKind("IDEMPOTENCY_KEY_MISSING", 400, "Idempotency-Key required")
IDEMPOTENCY_IN_FLIGHT = ErrorKind("IDEMPOTENCY_IN_FLIGHT", 409, "Request in progress", retry_after=True)
IDEMPOTENCY_KEY_REUSED = ErrorKind("IDEMPOTENCY_KEY_REUSED", 422, "Idempotency-Key reused")
IDEMPOTENCY_STORE_UNAVAILABLE = ErrorKind(
    "IDEMPOTENCY_STORE_UNAVAILABLE", 503, "Idempotency store unavailable", retry_after=True
)
IDEMPOTENCY_STORE_FULL = ErrorKind("IDEMPOTENCY_STORE_FULL", 503, "Idempotency store full", retry_after=True)

#: Upstream answers never stored (the backend may not have acted; a retry may succeed).
NOT_STORED = frozenset({429, 502, 503, 504})

MISSING_SUGGESTION = (
    "Send a unique Idempotency-Key header per operation and reuse it when retrying, "
    'e.g. -H "Idempotency-Key: $(uuidgen)".'
)


@frozen
class Reject:
    """
    Answer with the proxy's own error.
    """

    kind: ErrorKind
    message: str
    suggestion: str | None = None


@frozen
class Replay:
    """
    Answer with the stored response.
    """

    response: StoredResponse


@define
class Ticket:
    """
    This request owns its key: forward it, then store the answer or release the key.
    """

    _guard: IdempotencyGuard
    caller: str
    key: str
    fingerprint: str
    _captured: StoredResponse | None = field(default=None, init=False)
    _body: list[bytes] = field(factory=list, init=False)
    _size: int = field(default=0, init=False)
    _too_large: bool = field(default=False, init=False)
    _settled: bool = field(default=False, init=False)

    def answered(self, status: int, phrase: bytes, headers: Headers) -> None:
        """
        The upstream answered: start capturing the answer as the client gets
        it (hop-by-hop headers gone, C{Location} rewritten, C{Via} added),
        all but its C{X-Request-ID}.
        """
        kept = tuple(
            (name, tuple(values)) for name, values in headers.getAllRawHeaders() if name.lower() != REQUEST_ID
        )
        self._captured = StoredResponse(status, phrase, kept, b"")

    def data(self, chunk: bytes) -> None:
        """
        A piece of the answer's body, as relayed to the client.
        """
        if self._too_large:
            return
        self._size += len(chunk)
        if self._size > self._guard.max_body:
            self._too_large = True
            self._body = []
            return
        self._body.append(chunk)

    @property
    def storing(self) -> bool:
        """
        Whether the answer being captured will be stored once whole (worth
        reading to its end for a client that left).
        """
        captured = self._captured
        return captured is not None and not self._too_large and captured.status not in NOT_STORED

    def finished(self, outcome: Failure | None) -> None:
        """
        The answer ended: stored when whole and small enough, else the key is released.
        """
        if self._settled:
            return
        self._settled = True
        captured = self._captured
        if outcome is not None or captured is None or self._too_large or captured.status in NOT_STORED:
            self._guard.release(self.caller, self.key)
            return
        stored = StoredResponse(captured.status, captured.phrase, captured.headers, b"".join(self._body))
        self._guard.complete(self.caller, self.key, Entry(self.fingerprint, stored))

    def release(self) -> None:
        """
        No answer came from the upstream: the key is free again.
        """
        if not self._settled:
            self._settled = True
            self._guard.release(self.caller, self.key)


Verdict = Reject | Replay | Ticket | None


def _store_timed_out(result: object, seconds: float) -> object:
    if isinstance(result, Failure):
        return Failure(StoreUnavailable(f"no answer within {seconds:g} s"))
    return result


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _body_digest(content: IO[bytes] | None) -> bytes:
    h = hashlib.sha256()
    if content is not None:
        content.seek(0)
        for block in iter(lambda: content.read(65536), b""):
            h.update(block)
        content.seek(0)
    return h.digest()


@define
class IdempotencyGuard:
    """
    Decides what a POST or PATCH with an Idempotency-Key gets.

    @ivar required: C{METHOD:PATH-PATTERN}s whose requests must carry a key
        (the pattern is matched, fnmatch style, against the path after the prefix).
    """

    log = Logger()

    store: IdempotencyStore
    _clock: IReactorTime
    ttl: float = 86_400.0
    store_timeout: float = 2.0
    in_flight_ttl: float = 300.0
    max_body: int = 1024 * 1024
    fail_closed: bool = False
    required: tuple[str, ...] = ()
    replays: int = 0
    conflicts: int = 0
    reused: int = 0
    store_errors: int = 0
    full: int = 0
    last_store_error: str = ""

    def _required(self, method: bytes, path: bytes) -> bool:
        return any(path_rule(rule).matches(method, path) for rule in self.required)

    def verdict(self, request: Request, rest: bytes, caller: Identity) -> Deferred[Verdict]:
        """
        @param rest: the path after the prefix (no query).
        @param caller: who sent it: the key's scope.
        @return: L{None} when the request is not subject to a key (forward
            it as usual), else a L{Reject}, a L{Replay} or a L{Ticket}.
        """
        method = request.method
        if method not in CHECKED_METHODS:
            return succeed(None)
        sent = request.requestHeaders.getRawHeaders(HEADER)
        if not sent:
            if self._required(method, rest):
                message = f"{method.decode()} {rest.decode('latin-1')} needs an Idempotency-Key header."
                return succeed(Reject(IDEMPOTENCY_KEY_MISSING, message, MISSING_SUGGESTION))
            return succeed(None)
        key = sent[0]
        if len(sent) > 1 or not key or len(key) > MAX_KEY or any(b < 0x20 or b >= 0x7F for b in key):
            message = f"An Idempotency-Key must be one value of 1 to {MAX_KEY} printable ASCII characters."
            return succeed(Reject(IDEMPOTENCY_KEY_INVALID, message))
        who = caller.digest
        scoped = _digest(who.encode("ascii"), key)
        fingerprint = _digest(method, request.uri, _body_digest(request.content))
        claiming = self.store.claim(who, scoped, fingerprint, self.in_flight_ttl)
        claiming.addTimeout(self.store_timeout, self._clock, onTimeoutCancel=_store_timed_out)
        return claiming.addCallbacks(
            lambda existing: self._decide(existing, who, scoped, fingerprint), self._store_failed
        )

    def _decide(self, existing: Entry | None, caller: str, scoped: str, fingerprint: str) -> Verdict:
        if existing is None:
            return Ticket(self, caller, scoped, fingerprint)
        if existing.fingerprint != fingerprint:
            self.reused += 1
            return Reject(
                IDEMPOTENCY_KEY_REUSED,
                "This Idempotency-Key was already used for a different request "
                "(another path, query or body).",
                "Use a new Idempotency-Key for a new operation.",
            )
        if existing.response is None:
            self.conflicts += 1
            return Reject(
                IDEMPOTENCY_IN_FLIGHT,
                "A request with this Idempotency-Key is still in progress.",
                "Retry after a moment: you will get its answer.",
            )
        self.replays += 1
        return Replay(existing.response)

    def _store_failed(self, failure: Failure) -> Verdict:
        if failure.check(StoreFull):
            self.full += 1
            return Reject(
                IDEMPOTENCY_STORE_FULL,
                f"No room to hold this Idempotency-Key ({failure.getErrorMessage()}); "
                "the request was not sent.",
                "Retry after a moment, with the same key.",
            )
        failure.trap(StoreUnavailable)
        self._note_error(failure)
        if self.fail_closed:
            return Reject(
                IDEMPOTENCY_STORE_UNAVAILABLE,
                f"The idempotency store ({self.store.description}) cannot be reached; "
                "the request was not sent (--idempotency-fail-closed).",
                "Check the store (Redis), or retry later.",
            )
        return None  # fail open: forward without deduplication

    def _note_error(self, failure: Failure) -> None:
        self.store_errors += 1
        self.last_store_error = failure.getErrorMessage()
        self.log.warn(
            "idempotency store {store} failed: {error}",
            store=self.store.description,
            error=self.last_store_error,
        )

    def complete(self, caller: str, key: str, entry: Entry) -> None:
        """
        Store an answer (store errors are logged, never raised).
        """
        storing = self.store.complete(caller, key, entry, self.ttl)
        storing.addTimeout(self.store_timeout, self._clock, onTimeoutCancel=_store_timed_out)
        storing.addErrback(self._ignored)

    def release(self, caller: str, key: str) -> None:
        """
        Free a key (store errors are logged, never raised).
        """
        releasing = self.store.release(caller, key)
        releasing.addTimeout(self.store_timeout, self._clock, onTimeoutCancel=_store_timed_out)
        releasing.addErrback(self._ignored)

    def _ignored(self, failure: Failure) -> None:
        failure.trap(StoreUnavailable)
        self._note_error(failure)
