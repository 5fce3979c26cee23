"""Retrieval for a revision, the I/O part: embed the query, search the pinned index version.

:class:`Retriever` owns the stores (one bounded pool per DSN, shared by the
revisions and stacks that name the same database) and applies the
revision's timeout to embedding and search together. A failure of either is
a :class:`RetrievalFailed` with a fixed ``kind`` (a metric label) and a
detail for the log; what the client is told is the router's choice
(``onFailure``), never the detail. The pure part (query, template, header)
is :mod:`inferstack.core.retrieval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from typing import Any

import aiohttp

from inferstack.core.retrieval import Document
from inferstack.core.trafficplan import RetrievalPlan
from inferstack.router import proxy
from inferstack.router.errors import UpstreamError
from inferstack.router.pgvector import PgVectorStore, StoreError


class RetrievalFailed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


async def embed(session: aiohttp.ClientSession, plan: RetrievalPlan, text: str, request_id: str) -> list[float]:
    """The query's vector from the revision's OpenAI-compatible ``/v1/embeddings``, checked against its dimension."""
    body = {"model": plan.embedding_model, "input": text}
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
    try:
        async with session.post(plan.embedding_url.rstrip("/") + "/v1/embeddings", data=json.dumps(body), headers=headers) as resp:
            if resp.status != 200:
                raise RetrievalFailed("embedding_error", f"the embedding server answered HTTP {resp.status}")
            # A vector of `dimension` numbers is at most ~25 bytes each in JSON; anything far larger is not one.
            data = await proxy.read_bounded(resp, 64 * 1024 + 32 * plan.dimension)
    except UpstreamError as exc:
        raise RetrievalFailed("embedding_error", exc.detail) from None
    except aiohttp.ClientError as exc:
        raise RetrievalFailed("embedding_unreachable", f"{type(exc).__name__}: {exc}") from None
    try:
        vector = json.loads(data)["data"][0]["embedding"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise RetrievalFailed("bad_embedding", "the embedding server's answer has no data[0].embedding") from None
    if not isinstance(vector, list) or len(vector) != plan.dimension:
        got = len(vector) if isinstance(vector, list) else type(vector).__name__
        raise RetrievalFailed("bad_embedding", f"the embedding has {got} dimensions, the retriever declares {plan.dimension}")
    if not all((type(v) is float or type(v) is int) and math.isfinite(v) for v in vector):
        raise RetrievalFailed("bad_embedding", "the embedding holds a value that is not a finite number")
    return [float(v) for v in vector]


class Retriever:
    def __init__(self, max_connections_per_store: int, connect_timeout: float) -> None:
        self.max_connections = max_connections_per_store
        self.connect_timeout = connect_timeout
        self._stores: dict[str, PgVectorStore] = {}  # by DSN: never logged, never a label
        self._closing: set[asyncio.Task[None]] = set()

    def _store(self, dsn: str) -> PgVectorStore:
        store = self._stores.get(dsn)
        if store is None:
            store = self._stores[dsn] = PgVectorStore(dsn, max_connections=self.max_connections, connect_timeout=self.connect_timeout)
        return store

    async def retrieve(self, session: aiohttp.ClientSession, plan: RetrievalPlan, query: str, request_id: str) -> list[Document]:
        """``plan.top_k`` documents of the pinned index version nearest to ``query``, within ``plan.timeout_seconds``."""
        if not plan.store_dsn:  # parse_plan refuses such plans; a bundle built in code may still lack one
            raise RetrievalFailed("store_unconfigured", "the store's DSN was not read")
        try:
            async with asyncio.timeout(plan.timeout_seconds):
                vector = await embed(session, plan, query, request_id)
                return await self._store(plan.store_dsn).search(plan.index, plan.index_version, vector, plan.top_k)
        except TimeoutError:
            raise RetrievalFailed("timeout", f"retrieval took longer than {plan.timeout_seconds:g}s") from None
        except StoreError as exc:
            raise RetrievalFailed(exc.kind, exc.detail) from None

    def keep_only(self, dsns: set[str]) -> None:
        """Close the pools of stores no plan names any more (a store rotated out, a stack deleted)."""
        for dsn in set(self._stores) - dsns:
            task = asyncio.get_running_loop().create_task(self._stores.pop(dsn).close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            with contextlib.suppress(Exception):
                await store.close()
        if self._closing:
            await asyncio.wait(set(self._closing))


def store_dsns(bundles: Any) -> set[str]:
    """The DSNs the given bundles search."""
    return {b.retrieval.store_dsn for b in bundles if b is not None and b.retrieval is not None and b.retrieval.store_dsn}
