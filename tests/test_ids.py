"""
Request ids come from a pool of kernel random bytes: one read per 256 ids,
every id 128 bits, none given twice, none shared with a forked child.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase

from sora2proxy.http._ids import POOL_BYTES, RandomIds

HEX32 = re.compile(r"[0-9a-f]{32}")


class RandomIdsTests(SynchronousTestCase):
    def test_ids_are_the_kernel_bytes_in_order(self) -> None:
        """Each id is the next 16 bytes the kernel gave, as 32 hex digits."""
        reads: list[int] = []
        stream = bytes(range(256)) * 16

        def urandom(n: int) -> bytes:
            reads.append(n)
            return stream[:n]

        ids = RandomIds(urandom)
        self.assertEqual(ids(), "000102030405060708090a0b0c0d0e0f")
        self.assertEqual(ids(), "101112131415161718191a1b1c1d1e1f")
        self.assertEqual(reads, [4096])

    def test_one_read_per_256_ids(self) -> None:
        """The kernel is asked once per 256 ids, and the 257th id starts a new read."""
        reads: list[int] = []
        counter = iter(range(1, 100))

        def urandom(n: int) -> bytes:
            reads.append(n)
            return bytes([next(counter)]) * n

        ids = RandomIds(urandom)
        first = [ids() for _ in range(256)]
        self.assertEqual(reads, [POOL_BYTES])
        self.assertEqual(set(first), {"01" * 16})
        self.assertEqual(ids(), "02" * 16)
        self.assertEqual(reads, [POOL_BYTES, POOL_BYTES])

    def test_real_ids_distinct_and_hex(self) -> None:
        """With the real generator, 2,000 ids are all different 32-digit lowercase hex."""
        ids = RandomIds()
        made = [ids() for _ in range(2000)]
        self.assertTrue(all(HEX32.fullmatch(i) for i in made))
        self.assertEqual(len(set(made)), 2000)

    def test_forked_child_reads_afresh(self) -> None:
        """A forked child never gives an id its parent's pool still holds."""
        ids = RandomIds()
        ids()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its next id, to the parent
            try:
                os.write(write, ids().encode("ascii"))
            finally:
                os._exit(0)
        os.close(write)
        child = os.read(read, 64).decode("ascii")
        os.close(read)
        os.waitpid(pid, 0)
        self.assertTrue(HEX32.fullmatch(child))
        self.assertNotEqual(child, ids())
