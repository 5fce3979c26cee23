"""The pre-traffic index check: missing, empty or differently built index versions wait, with a reason."""

from __future__ import annotations

import pytest

from inferstack.core.indexcheck import IndexFacts, judge_index

RETRIEVER = {"embedding": {"model": "BAAI/bge-small-en-v1.5", "revision": "abc", "dimension": 384},
             "index": {"name": "docs", "version": "v2"}}
GOOD = IndexFacts(exists=True, has_rows=True, dimension=384, embedding_model="BAAI/bge-small-en-v1.5", embedding_revision="abc")


@pytest.mark.parametrize(
    "facts,error,ready,reason,says",
    [
        (GOOD, None, True, "IndexReady", "index docs version v2 is ready"),
        (IndexFacts(True, True, 384), None, True, "IndexReady", "not recorded, so not checked"),
        (IndexFacts(True, True, 384, "BAAI/bge-small-en-v1.5"), None, True, "IndexReady", "is ready"),  # no revision recorded
        (IndexFacts(exists=False), None, False, "IndexMissing", "does not exist in the store"),
        (IndexFacts(True, False, 384), None, False, "IndexEmpty", "has no documents"),
        (IndexFacts(True, True, 768, "BAAI/bge-small-en-v1.5", "abc"), None, False, "IndexDimensionMismatch",
         "dimension 768, spec.retriever.embedding.dimension is 384"),
        (IndexFacts(True, True, 384, "intfloat/e5-small", None), None, False, "IndexEmbeddingMismatch",
         "built with intfloat/e5-small, the spec embeds queries with BAAI/bge-small-en-v1.5@abc"),
        (IndexFacts(True, True, 384, "BAAI/bge-small-en-v1.5", "def"), None, False, "IndexEmbeddingMismatch", "@def"),
        (None, "store_unreachable", False, "StoreUnavailable", "could not be checked: store_unreachable"),
    ],
)
def test_verdicts(facts, error, ready, reason, says) -> None:
    verdict = judge_index(RETRIEVER, facts, error)
    assert (verdict.ready, verdict.reason) == (ready, reason)
    assert says in verdict.message and "\n" not in verdict.message


def test_a_spec_without_dimension_checks_no_dimension() -> None:
    retriever = {"embedding": {"model": "m"}, "index": {"name": "docs", "version": "v1"}}
    assert judge_index(retriever, IndexFacts(True, True, 1024)).ready
