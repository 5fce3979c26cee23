"""What PgVectorStore.describe reads of index versions on a real PostgreSQL with pgvector."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from inferstack.core.indexcheck import IndexFacts
from inferstack.router.pgvector import PgVectorStore, StoreError

from .pgstore import PgServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    server = PgServer().start()
    server.create_index("docs__v1", 8, [("a", "refunds take five days", {})])
    server.sql('COMMENT ON TABLE "docs__v1" IS \'{"embeddingModel": "bge", "embeddingRevision": "r1"}\'')
    server.create_index("docs__empty", 8, [])
    server.create_index("docs__nocomment", 16, [("a", "shipping", {})])
    yield server
    server.cleanup()


def describe(dsn: str, index: str, version: str) -> IndexFacts:
    async def run() -> IndexFacts:
        store = PgVectorStore(dsn, connect_timeout=2)
        try:
            return await store.describe(index, version)
        finally:
            await store.close()

    return asyncio.run(run())


def test_describe_reads_existence_rows_dimension_and_the_recorded_model(pg: PgServer) -> None:
    assert describe(pg.dsn, "docs", "v1") == IndexFacts(True, True, 8, "bge", "r1")
    assert describe(pg.dsn, "docs", "empty") == IndexFacts(True, False, 8)
    assert describe(pg.dsn, "docs", "nocomment") == IndexFacts(True, True, 16)
    assert describe(pg.dsn, "docs", "v9") == IndexFacts(exists=False)
    assert describe(pg.dsn, 'docs__v1"; DROP TABLE "docs', "v1") == IndexFacts(exists=False)
    assert pg.sql('SELECT count(*) FROM "docs__v1"')[0][0] == 1


def test_an_unreachable_store_is_a_store_error_without_its_password(pg: PgServer) -> None:
    dead = pg.dsn.replace(f":{pg.port}/", ":1/")
    with pytest.raises(StoreError) as err:
        describe(dead, "docs", "v1")
    assert err.value.kind == "store_unreachable" and pg.password not in str(err.value)


class FakeKube:
    """Only what IndexChecker reads: a Secret key of the stack's namespace."""

    def __init__(self, secrets: dict[tuple[str, str, str], str]) -> None:
        self.secrets, self.reads = secrets, []

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        self.reads.append((namespace, name))
        return self.secrets.get((namespace, name, key))


def part(version: str, dimension: int = 8, secret: str = "docs-store") -> dict:
    return {"retriever": {"embedding": {"model": "bge", "revision": "r1", "dimension": dimension},
                          "index": {"name": "docs", "version": version},
                          "store": {"kind": "pgvector", "secretRef": {"name": secret, "key": "dsn"}}}}


def test_the_operator_checks_waiting_revisions_from_the_stacks_secret_and_caches_ready_verdicts(pg: PgServer) -> None:
    from inferstack.controller.indexes import IndexChecker

    kube = FakeKube({("team-a", "docs-store", "dsn"): pg.dsn})
    checker = IndexChecker(waiting_ttl=0)
    parts = {"ok": part("v1"), "gone": part("v9"), "wide": part("v1", dimension=16), "nosecret": part("v1", secret="other"),
             "plain": {"retriever": None}}

    def run() -> dict:
        return asyncio.run(checker.verdicts(kube, "team-a", "bot", parts, sorted(parts)))  # type: ignore[arg-type]

    verdicts = run()
    assert {r: v.reason for r, v in verdicts.items()} == {
        "ok": "IndexReady", "gone": "IndexMissing", "wide": "IndexDimensionMismatch", "nosecret": "StoreUnavailable"}
    assert "Secret other has no key dsn" in verdicts["nosecret"].message
    assert all(pg.password not in v.message for v in verdicts.values())
    reads = len(kube.reads)
    run()
    # The ready verdict is kept; the waiting ones are asked again (waiting_ttl 0).
    assert kube.reads[reads:] == [("team-a", "docs-store"), ("team-a", "other"), ("team-a", "docs-store")]  # gone, nosecret, wide
