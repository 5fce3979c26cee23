"""The pgvector store: one table per index version, searched by cosine distance.

An index version ``<name>__<version>`` is a table with the columns ``id``,
``text``, ``metadata jsonb`` and ``embedding vector(<dimension>)``, built by
whoever builds the index (the stack pins the version; the router only reads).
Names come from the spec, so they are quoted as identifiers, never pasted into
SQL, and refused when Postgres would silently cut them; the vector and the
limit are query parameters.

One bounded pool per DSN: the router is shared by every stack, and a
database's connection limit is not the router's to spend. What the store
says when it fails is logged by the caller, redacted; it never reaches a client.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import Any

import asyncpg

from inferstack.core.indexcheck import IndexFacts
from inferstack.core.retrieval import Document

MAX_IDENTIFIER_BYTES = 63  # Postgres' NAMEDATALEN - 1: longer names are cut, which would search another table
MAX_TEXT_CHARS = 16_384  # one document's text as it reaches the template (the prompt is bounded again there)
MAX_METADATA_CHARS = 8192  # a larger metadata document is passed on as {}


class StoreError(Exception):
    """The store could not answer: unreachable, refused, no such index version. ``kind`` is a metric label."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def table_identifier(index: str, version: str) -> str:
    """The quoted table name of an index version; :class:`StoreError` when it cannot be one."""
    name = f"{index}__{version}"
    if "\x00" in name or not name.strip():
        raise StoreError("bad_index", f"index {name!r} is not a valid table name")
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise StoreError("bad_index", f"index {name!r} is longer than {MAX_IDENTIFIER_BYTES} bytes")
    return '"' + name.replace('"', '""') + '"'


def search_sql(table: str) -> str:
    # <=> is cosine distance; 1 - distance is the similarity the documents carry.
    return (
        f"SELECT id::text, left(text, {MAX_TEXT_CHARS}), "
        f"CASE WHEN length(metadata::text) <= {MAX_METADATA_CHARS} THEN metadata::text END, "
        f"embedding <=> $1::vector AS distance "
        f"FROM {table} ORDER BY distance LIMIT $2"
    )


def vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(v)) for v in vector) + "]"


def _document(row: Any) -> Document:
    metadata: dict[str, Any] = {}
    if row[2] is not None:
        parsed = json.loads(row[2])
        metadata = parsed if isinstance(parsed, dict) else {}
    distance = row[3]
    score = 1.0 - distance if distance is not None and math.isfinite(distance) else 0.0
    return Document(id=row[0] or "", text=row[1] or "", score=score, metadata=metadata)


def _recorded_model(comment: str | None) -> dict[str, str]:
    """The table comment's {"embeddingModel", "embeddingRevision"}; {} when it records none."""
    try:
        parsed = json.loads(comment) if comment else {}
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {k: v for k, v in parsed.items() if k in ("embeddingModel", "embeddingRevision") and isinstance(v, str) and v}


class PgVectorStore:
    """A :class:`inferstack.core.retrieval.VectorStore` on one database (one DSN)."""

    def __init__(self, dsn: str, *, max_connections: int = 4, connect_timeout: float = 5.0) -> None:
        self._dsn = dsn
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    def __repr__(self) -> str:  # never the DSN: it holds the password
        return f"PgVectorStore(max_connections={self.max_connections})"

    async def _get_pool(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                # min_size 0: a stack that gets no traffic holds no connections.
                self._pool = await asyncpg.create_pool(
                    self._dsn, min_size=0, max_size=self.max_connections, timeout=self.connect_timeout,
                    max_inactive_connection_lifetime=60.0,
                )
            return self._pool

    async def search(self, index: str, version: str, vector: Sequence[float], k: int) -> list[Document]:
        sql = search_sql(table_identifier(index, version))
        try:
            pool = await self._get_pool()
            rows = await pool.fetch(sql, vector_literal(vector), k)
        except asyncpg.UndefinedTableError:
            raise StoreError("index_missing", f"index version table {index}__{version} does not exist") from None
        except asyncpg.PostgresError as exc:
            raise StoreError("store_error", f"{type(exc).__name__}: {exc}") from None
        except (OSError, asyncpg.InterfaceError, asyncpg.ConnectionDoesNotExistError) as exc:
            raise StoreError("store_unreachable", f"{type(exc).__name__}: {exc}") from None
        return [_document(row) for row in rows]

    async def describe(self, index: str, version: str) -> IndexFacts:
        """What the pre-traffic check needs to know of an index version (core/indexcheck.py)."""
        table = table_identifier(index, version)
        try:
            pool = await self._get_pool()
            async with pool.acquire() as conn:
                # to_regclass takes the quoted name, so the same identifier rules apply as in a search.
                row = await conn.fetchrow(
                    "SELECT c.oid, obj_description(c.oid, 'pg_class'), "
                    "(SELECT atttypmod FROM pg_attribute WHERE attrelid = c.oid AND attname = 'embedding' AND NOT attisdropped) "
                    "FROM pg_class c WHERE c.oid = to_regclass($1)", table)
                if row is None:
                    return IndexFacts(exists=False)
                has_rows = await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})")
        except asyncpg.PostgresError as exc:
            raise StoreError("store_error", f"{type(exc).__name__}: {exc}") from None
        except (OSError, asyncpg.InterfaceError) as exc:
            raise StoreError("store_unreachable", f"{type(exc).__name__}: {exc}") from None
        recorded = _recorded_model(row[1])
        # pgvector keeps a vector column's length in its type modifier (-1: no fixed length).
        dimension = row[2] if row[2] is not None and row[2] > 0 else None
        return IndexFacts(exists=True, has_rows=bool(has_rows), dimension=dimension,
                          embedding_model=recorded.get("embeddingModel"), embedding_revision=recorded.get("embeddingRevision"))

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
