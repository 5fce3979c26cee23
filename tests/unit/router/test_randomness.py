"""router/randomness.py: pooled CSPRNG bytes, never handed out twice, not shared with a forked child."""

from __future__ import annotations

import os

from inferstack.router import randomness


def test_bytes_are_never_handed_out_twice_across_batches() -> None:
    seen = [randomness.token_bytes(16) for _ in range(3 * randomness._BATCH // 16 + 5)]
    assert all(len(b) == 16 for b in seen)
    assert len(set(seen)) == len(seen)  # 2**-128 per pair to collide by chance
    assert len(randomness.token_bytes(3 * randomness._BATCH)) == 3 * randomness._BATCH  # more than a batch


def test_a_forked_child_draws_its_own_bytes() -> None:
    randomness.token_bytes(8)  # a pool is drawn in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it takes next
        os.write(write, randomness.token_bytes(32))
        os._exit(0)
    os.close(write)
    child = os.read(read, 32)
    os.waitpid(pid, 0)
    os.close(read)
    assert child != randomness.token_bytes(32)  # the parent's next bytes are not the child's
