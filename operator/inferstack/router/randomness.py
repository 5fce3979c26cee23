"""Random bytes for the router's ids and nonces, drawn from the OS 4 KiB at a time.

A request takes some: its request id when the client sent none (16 bytes), its assignment key
when it carries no user identity (16) and, without a tenant, a cache salt (32). ``os.urandom``
for each was a ``getrandom`` syscall each on the hot path (issue 14). The nonce of a signed
response id stays ``secrets.token_bytes``: ``feedback.Signer`` is pure and may be used from any
thread. The bytes are the kernel's CSPRNG output
either way, only drawn in batches; a forked child starts a pool of its own, so no two
processes hand out the same bytes.

For the event loop's thread only: two threads taking bytes at once could get the same ones.
"""

from __future__ import annotations

import os

_BATCH = 4096
_pool = b""
_taken = 0


def token_bytes(n: int) -> bytes:
    """``n`` bytes from the OS's CSPRNG (as ``secrets.token_bytes``)."""
    global _pool, _taken
    end = _taken + n
    if end > len(_pool):
        _pool, end = os.urandom(max(_BATCH, n)), n
        start = 0
    else:
        start = _taken
    _taken = end
    return _pool[start:end]


def _forget() -> None:
    global _pool, _taken
    _pool, _taken = b"", 0


os.register_at_fork(after_in_child=_forget)
