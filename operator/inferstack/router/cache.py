"""An exact-response cache: in-memory LRU with TTL, for deterministic requests only."""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def cacheable(body: dict[str, Any]) -> bool:
    """Only non-streamed requests with temperature 0 give the same answer twice.

    A missing temperature means the server default (1.0), so it is not cached.
    """
    temperature = body.get("temperature")
    return not body.get("stream") and isinstance(temperature, int | float) and temperature == 0 and body.get("n", 1) == 1


def cache_key(tenant: str, cache_namespace: str, revision: str, upstream_body: dict[str, Any]) -> str:
    """Key over the body as sent upstream (served model, system prompt, tools included).

    The cache namespace is per revision already; the revision is in the key too
    so even a misconfigured shared namespace cannot serve another revision's answer.
    """
    canonical = json.dumps(upstream_body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a JSON string may hold a lone surrogate ("\\ud800"), which strict UTF-8 refuses.
    key = "\x00".join((tenant, cache_namespace, revision, canonical)).encode(errors="surrogatepass")
    return hashlib.sha256(key).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    body: bytes
    content_type: str
    expires: float
    size: int  # bytes charged to the router's CacheMemory


# What an entry costs besides its body: key, content type, the objects and dict slots holding them.
ENTRY_OVERHEAD = 512


class CacheMemory:
    """The byte budget that all of one router's response caches share.

    Every entry of every stack's cache is charged here; past ``max_bytes`` the
    least recently used entries of the whole router are evicted, whichever
    stack they belong to, so the caches together never hold more than
    ``max_bytes`` (plus one entry's overhead) however many stacks or entries
    the plans allow.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._order: OrderedDict[tuple[int, str], ResponseCache] = OrderedDict()

    def __len__(self) -> int:
        return len(self._order)

    def charge(self, cache: ResponseCache, key: str, size: int) -> None:
        self.used += size
        self._order[(id(cache), key)] = cache
        self._order.move_to_end((id(cache), key))
        while self.used > self.max_bytes and self._order:
            (_, oldest), owner = self._order.popitem(last=False)
            owner._evict(oldest)

    def touch(self, cache: ResponseCache, key: str) -> None:
        self._order.move_to_end((id(cache), key))

    def release(self, cache: ResponseCache, key: str, size: int) -> None:
        self.used -= size
        self._order.pop((id(cache), key), None)


class ResponseCache:
    """LRU bounded by entries, by bytes per entry and, through ``memory``, by bytes per router.

    Expired entries die on access. Call :meth:`clear` before dropping a cache,
    so its bytes go back to the router's budget.
    """

    def __init__(
        self,
        max_entries: int,
        max_entry_bytes: int = 256 * 1024,
        clock: Callable[[], float] = time.monotonic,
        memory: CacheMemory | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_entry_bytes = max_entry_bytes
        self.memory = memory if memory is not None else CacheMemory(64 * 1024 * 1024)
        self._clock = clock
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    def get(self, key: str) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._evict(key)
            return None
        self._entries.move_to_end(key)
        self.memory.touch(self, key)
        return entry

    def put(self, key: str, body: bytes, content_type: str, ttl_seconds: float) -> None:
        size = len(body) + len(key) + len(content_type) + ENTRY_OVERHEAD
        if len(body) > self.max_entry_bytes or size > self.memory.max_bytes or ttl_seconds <= 0 or self.max_entries <= 0:
            return
        self._evict(key)
        self._entries[key] = CachedResponse(body, content_type, self._clock() + ttl_seconds, size)
        while len(self._entries) > self.max_entries:
            self._evict(next(iter(self._entries)))
        self.memory.charge(self, key, size)

    def _evict(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.memory.release(self, key, entry.size)

    def clear(self) -> None:
        for key in list(self._entries):
            self._evict(key)
