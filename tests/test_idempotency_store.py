"""
The memory Idempotency-Key store's bounds, on a Clock: in-flight claims are
never evicted, one caller cannot push out another's entries, and a store
full of claims refuses new keys with 503 instead of forwarding unprotected.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from sora2proxy.idempotency._memory import MemoryStore
from sora2proxy.idempotency._store import Entry, StoredResponse, StoreFull

from .test_idempotency import Harness

ANSWER = StoredResponse(201, b"Created", ((b"content-type", (b"application/json",)),), b'{"job":1}')


def stored(store: MemoryStore, caller: str, key: str) -> None:
    """Claim C{key} for C{caller} and store an answer for it."""
    store.claim(caller, key, "f", 60)
    store.complete(caller, key, Entry("f", ANSWER), 3600)


class BoundsTests(SynchronousTestCase):
    def entry(self, store: MemoryStore, caller: str, key: str) -> Entry | None:
        found = self.successResultOf(store.claim(caller, key, "other", 60))
        return found

    def test_claims_never_evicted(self) -> None:
        """A store full of requests in flight refuses a new key, and every claim stays."""
        store = MemoryStore(Clock(), max_entries=5, max_per_caller=100)
        for i in range(5):
            self.assertIsNone(self.successResultOf(store.claim(f"c{i}", f"k{i}", "f", 60)))
        self.failureResultOf(store.claim("late", "new", "f", 60), StoreFull)
        for i in range(5):
            self.assertEqual(self.entry(store, f"c{i}", f"k{i}"), Entry("f"), f"claim k{i} evicted")

    def test_answers_make_room_for_claims(self) -> None:
        """With stored answers in a full store, a new claim evicts an answer, never a claim."""
        store = MemoryStore(Clock(), max_entries=3, max_per_caller=100)
        store.claim("a", "flying", "f", 60)
        stored(store, "b", "done-1")
        stored(store, "b", "done-2")
        self.assertIsNone(self.successResultOf(store.claim("c", "new", "f", 60)))
        self.assertEqual(self.entry(store, "a", "flying"), Entry("f"))
        self.assertEqual(store.size(), 3)

    def test_flood_keeps_victim(self) -> None:
        """One caller storing 30,000 fresh keys leaves another caller's answer and claim intact."""
        store = MemoryStore(Clock(), max_entries=2000, max_per_caller=1000)
        stored(store, "victim", "paid")
        store.claim("victim", "slow", "f", 60)
        for i in range(30_000):
            self.assertIsNone(self.successResultOf(store.claim("flood", f"x{i}", "f", 60)))
            store.complete("flood", f"x{i}", Entry("f", ANSWER), 3600)
        self.assertEqual(self.entry(store, "victim", "paid"), Entry("f", ANSWER))
        self.assertEqual(self.entry(store, "victim", "slow"), Entry("f"))
        self.assertEqual(store.size(), 1002, "the flooder keeps its own 1,000")

    def test_flooded_claims_refused_per_caller(self) -> None:
        """A caller with --idempotency-max-per-caller requests in flight gets StoreFull; others still claim."""
        store = MemoryStore(Clock(), max_entries=100, max_per_caller=10)
        for i in range(10):
            store.claim("flood", f"x{i}", "f", 60)
        self.failureResultOf(store.claim("flood", "x10", "f", 60), StoreFull)
        self.assertIsNone(self.successResultOf(store.claim("victim", "mine", "f", 60)))

    def test_largest_caller_pays(self) -> None:
        """When the total is reached, the caller holding the most answers loses its oldest one."""
        store = MemoryStore(Clock(), max_entries=4, max_per_caller=100)
        stored(store, "small", "s1")
        for key in ("b1", "b2", "b3"):
            stored(store, "big", key)
        store.claim("third", "t1", "f", 60)
        self.assertIsNotNone(self.entry(store, "small", "s1"))
        self.assertIsNone(self.entry(store, "big", "b1"), "the big caller's oldest answer went")

    def test_expired_claims_free_room(self) -> None:
        """Claims past their in-flight TTL no longer fill the store."""
        clock = Clock()
        store = MemoryStore(clock, max_entries=2, max_per_caller=100)
        store.claim("a", "k1", "f", 60)
        store.claim("b", "k2", "f", 60)
        self.failureResultOf(store.claim("c", "k3", "f", 60), StoreFull)
        clock.advance(60)
        self.assertIsNone(self.successResultOf(store.claim("c", "k3", "f", 60)))

    def test_released_and_stored_bytes(self) -> None:
        """Releasing frees the claim; an answer larger than the byte bound is not kept."""
        store = MemoryStore(Clock(), max_entries=10, max_bytes=200)
        store.claim("a", "k", "f", 60)
        store.release("a", "k")
        self.assertEqual(store.size(), 0)
        store.claim("a", "big", "f", 60)
        store.complete("a", "big", Entry("f", StoredResponse(200, b"OK", (), b"x" * 500)), 60)
        self.assertEqual((store.size(), store.stored_bytes), (0, 0))


class GuardTests(SynchronousTestCase):
    def test_full_store_refuses(self) -> None:
        """With the store full of requests in flight, a new key gets 503 with Retry-After; nothing is sent."""
        h = Harness(idempotency_max_entries=2)
        h.upstream.hang = True
        h.post("a", Authorization="Bearer a")
        h.post("b", Authorization="Bearer b")
        response = self.successResultOf(h.post("c", Authorization="Bearer c"))
        self.assertEqual(response.code, 503)
        self.assertTrue(response.headers.hasHeader("retry-after"))
        self.assertEqual(json.loads(h.body(response))["details"]["errorType"], "IDEMPOTENCY_STORE_FULL")
        self.assertEqual(len(h.upstream.calls), 2)
        self.assertEqual(h.proxy.resource.parts.guard.full, 1)

    def test_per_caller_bound(self) -> None:
        """--idempotency-max-per-caller 2: a third key in flight from one caller gets 503, another caller's passes."""
        h = Harness(idempotency_max_per_caller=2)
        h.upstream.hang = True
        for key in ("a1", "a2"):
            h.post(key, X_Api_Key="alice")
        self.assertEqual(self.successResultOf(h.post("a3", X_Api_Key="alice")).code, 503)
        h.post("b1", X_Api_Key="bob")
        self.assertEqual(len(h.upstream.calls), 3)


class RandomOperationTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["claim"] * 4 + ["complete"] * 3 + ["release", "advance"]),
                st.sampled_from(["a", "b", "c"]),
                st.integers(0, 5),
            ),
            max_size=80,
        )
    )
    def test_bounds_hold(self, operations: list[tuple[str, str, int]]) -> None:
        """Whatever callers do, the store keeps its bounds and never loses a claim it did not release or expire."""
        clock = Clock()
        store = MemoryStore(clock, max_entries=6, max_bytes=250, max_per_caller=3)
        claims: dict[str, float] = {}  # the model: claims granted, by key, with their expiry
        for operation, caller, n in operations:
            key = f"{caller}{n}"
            if operation == "claim":
                result: list[object] = []
                store.claim(caller, key, "f", 30).addBoth(result.append)
                if result[0] is None:
                    claims[key] = clock.seconds() + 30
                elif not isinstance(result[0], Entry):
                    # refused: only when every entry in the caller's share, or in the store, is a claim
                    slots = store._slots.values()
                    mine = [slot for slot in slots if slot.caller == caller]
                    full = [mine] if len(mine) >= 3 else [list(slots)]
                    self.assertTrue(all(slot.entry.response is None for slot in full[0]), operations)
            elif operation == "complete":
                mine = [held for held in claims if held[0] == caller]
                if mine:  # the caller's oldest request in flight is answered, with n * 20 bytes
                    del claims[mine[0]]
                    body = b"x" * 20 * n
                    store.complete(caller, mine[0], Entry("f", StoredResponse(200, b"OK", (), body)), 100)
            elif operation == "release":
                claims.pop(key, None)
                store.release(caller, key)
            elif operation == "advance":
                clock.advance(n * 2)
            for held, expires in list(claims.items()):
                if expires <= clock.seconds():
                    del claims[held]
                    continue
                self.assertEqual(
                    self.successResultOf(store.claim(held[0], held, "other", 30)), Entry("f"), held
                )
            self.assertLessEqual(store.size(), 6)
            self.assertLessEqual(store.stored_bytes, 250)
            for who in "abc":
                owned = sum(1 for k in store._slots if store._slots[k].caller == who)
                self.assertLessEqual(owned, 3)
