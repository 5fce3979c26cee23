"""The pre-traffic index check's I/O: the store's DSN from the stack's Secret, the index version's facts.

The decision is :func:`inferstack.core.indexcheck.judge_index`; this only
asks. A revision is checked while it waits for traffic (the spec's revision
and the candidate, never the stable one, which already serves). Verdicts
are kept a while so a reconcile pass does not open a database connection
every time: a ready one for ``ready_ttl`` (the check is before traffic, not
a monitor), a waiting one for ``waiting_ttl`` (re-asked soon, so the
candidate starts shortly after the index is built).

The DSN is read from the stack's own namespace, as the router reads it, and
never logged: a failure is reported by its kind only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from kubernetes.client.exceptions import ApiException

from inferstack.controller.kube import Kube
from inferstack.core.indexcheck import IndexVerdict, judge_index
from inferstack.router.pgvector import PgVectorStore, StoreError


class IndexChecker:
    def __init__(self, ready_ttl: float = 600.0, waiting_ttl: float = 15.0, timeout: float = 10.0) -> None:
        self.ready_ttl = ready_ttl
        self.waiting_ttl = waiting_ttl
        self.timeout = timeout
        self._cache: dict[tuple[str, str, str], tuple[float, IndexVerdict]] = {}

    async def verdicts(
        self, kube: Kube, namespace: str, stack: str, parts: dict[str, dict[str, Any]], revisions: Iterable[str]
    ) -> dict[str, IndexVerdict]:
        out: dict[str, IndexVerdict] = {}
        now = time.monotonic()
        for rev in revisions:
            retriever = (parts.get(rev) or {}).get("retriever") or {}
            if not retriever.get("store"):
                continue  # nothing is retrieved: nothing to check
            key = (namespace, stack, rev)
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                out[rev] = cached[1]
                continue
            verdict = await self._check(kube, namespace, retriever)
            self._cache[key] = (now + (self.ready_ttl if verdict.ready else self.waiting_ttl), verdict)
            out[rev] = verdict
        # Forget revisions of this stack no longer waiting (promoted, replaced, deleted).
        for key in [k for k in self._cache if k[:2] == (namespace, stack) and k[2] not in out]:
            del self._cache[key]
        return out

    async def _check(self, kube: Kube, namespace: str, retriever: dict[str, Any]) -> IndexVerdict:
        ref = retriever["store"]["secretRef"]
        name, key = ref["name"], ref.get("key", "dsn")
        try:
            dsn = await kube.read_secret_key(namespace, name, key)
        except ApiException as exc:
            return judge_index(retriever, None, f"cannot read Secret {name}: HTTP {exc.status} (the operator needs get on it)")
        if not dsn:
            return judge_index(retriever, None, f"Secret {name} has no key {key}")
        store = PgVectorStore(dsn.strip(), max_connections=1, connect_timeout=self.timeout)
        try:
            async with asyncio.timeout(self.timeout):
                facts = await store.describe(retriever["index"]["name"], retriever["index"]["version"])
        except StoreError as exc:
            return judge_index(retriever, None, exc.kind)  # the kind only: the detail may name the host
        except TimeoutError:
            return judge_index(retriever, None, f"no answer within {self.timeout:g}s")
        except Exception as exc:  # a malformed DSN and the like: the stack's problem, never the pass's
            return judge_index(retriever, None, f"{type(exc).__name__} (check the DSN in Secret {name})")
        finally:
            await store.close()
        return judge_index(retriever, facts)
