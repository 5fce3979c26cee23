"""The stand-in's embedding model: a hashed bag of words, deterministic, normalized.

Each word adds 1 at a position its hash picks (no signs: a collision never
cancels a shared word), so texts that share words point the same way and a cosine search finds the documents that share the
query's words: enough for tests to see retrieval pick related documents,
with no weights. Tests embed their documents with the same function.
"""

from __future__ import annotations

import hashlib
import math
import re

_WORD = re.compile(r"[a-z0-9]+")
MAX_DIMENSION = 16_000  # pgvector's vector type holds no more


def embed(text: str, dimension: int) -> list[float]:
    vector = [0.0] * dimension
    for word in _WORD.findall(text.lower()):
        h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big")
        vector[h % dimension] += 1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0:
        # No words: a fixed unit vector, because a zero vector has no cosine distance to anything.
        return [1.0] + [0.0] * (dimension - 1)
    return [v / norm for v in vector]
