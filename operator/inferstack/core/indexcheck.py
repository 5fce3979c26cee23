"""Before a revision gets traffic: is its pinned index version there, filled, and built as the spec says?

A pure decision over what the store reported (:class:`IndexFacts`, read by
the store's backend, e.g. ``PgVectorStore.describe``). A revision whose index
version is missing, empty, or built with another embedding model or
dimension than its retriever declares would answer every request without
context, or with the wrong one: it must wait, with a reason that says what
to fix, and never receive traffic.

Which embedding model built an index is recorded by whoever builds it, in
the table's comment (``{"embeddingModel": "...", "embeddingRevision": "..."}``).
An index that records none cannot be proven wrong: it passes, and the
verdict says that the model was not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IndexFacts:
    exists: bool
    has_rows: bool = False
    dimension: int | None = None  # the embedding column's vector length; None when it has no fixed length
    embedding_model: str | None = None  # as the index's builder recorded it; None: not recorded
    embedding_revision: str | None = None


@dataclass(frozen=True)
class IndexVerdict:
    ready: bool
    reason: str  # IndexReady | IndexMissing | IndexEmpty | IndexDimensionMismatch | IndexEmbeddingMismatch | StoreUnavailable
    message: str


def judge_index(retriever: dict[str, Any], facts: IndexFacts | None, error: str | None = None) -> IndexVerdict:
    """The verdict for one revision's retriever part (camelCase, as its ControllerRevision holds it).

    ``facts`` None with ``error``: the store could not be asked (down, Secret
    unreadable); the revision waits, as for any missing evidence.
    """
    index, version = retriever["index"]["name"], retriever["index"]["version"]
    where = f"index {index} version {version}"
    if facts is None:
        return IndexVerdict(False, "StoreUnavailable", f"{where}: the store could not be checked: {error or 'unknown error'}")
    if not facts.exists:
        return IndexVerdict(False, "IndexMissing", f"{where} does not exist in the store: build it, or pin a version that exists")
    if not facts.has_rows:
        return IndexVerdict(False, "IndexEmpty", f"{where} has no documents: fill it before it gets traffic")
    embedding = retriever["embedding"]
    want_dim = embedding.get("dimension")
    if want_dim is not None and facts.dimension != want_dim:
        return IndexVerdict(False, "IndexDimensionMismatch",
                            f"{where} holds vectors of dimension {facts.dimension}, spec.retriever.embedding.dimension "
                            f"is {want_dim}: rebuild the index with the spec's model, or fix the spec")
    if facts.embedding_model is None:
        return IndexVerdict(True, "IndexReady", f"{where} is ready (its embedding model is not recorded, so not checked)")
    built = (facts.embedding_model, facts.embedding_revision or None)
    wanted = (embedding["model"], embedding.get("revision") or None)
    # A revision recorded on only one side cannot be compared: the model name still must match.
    if built[0] != wanted[0] or (built[1] and wanted[1] and built[1] != wanted[1]):
        return IndexVerdict(False, "IndexEmbeddingMismatch",
                            f"{where} was built with {_model(*built)}, the spec embeds queries with {_model(*wanted)}: "
                            "embeddings of two models are not comparable; build a new index version with the spec's model")
    return IndexVerdict(True, "IndexReady", f"{where} is ready")


def _model(name: str, revision: str | None) -> str:
    return f"{name}@{revision}" if revision else name
