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
    return hashlib.sha256("\x00".join((tenant, cache_namespace, revision, canonical)).encode()).hexdigest()


@dataclass(frozen=True)
class CachedResponse:
    body: bytes
    content_type: str
    expires: float


class ResponseCache:
    """LRU bounded by entries and by bytes per entry; expired entries die on access."""

    def __init__(self, max_entries: int, max_entry_bytes: int = 256 * 1024, clock: Callable[[], float] = time.monotonic):
        self.max_entries = max_entries
        self.max_entry_bytes = max_entry_bytes
        self._clock = clock
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, body: bytes, content_type: str, ttl_seconds: float) -> None:
        if len(body) > self.max_entry_bytes or ttl_seconds <= 0 or self.max_entries <= 0:
            return
        self._entries[key] = CachedResponse(body, content_type, self._clock() + ttl_seconds)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
