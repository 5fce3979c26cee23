"""Revision identity: one content hash over every part that changes answers.

A revision is what users get: the model (weights, engine arguments, GPUs,
placement), the prompt, the retriever and the tool schemas. Its hash is taken
over a canonical JSON document of those parts *after* defaults are applied and
ConfigMap references are resolved to their content, so

* map order and whether a default is written or omitted never matter;
* editing a referenced ConfigMap makes a new revision, as editing inline text would;
* rollout, gates, traffic, cache settings, replicas and labels are not part
  of it: changing how a revision is delivered or how many replicas serve it
  makes no new revision.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from inferstack.api.v1alpha1 import InferenceStackSpec

HASH_LENGTH = 10  # hex chars; per-stack collision odds ~1e-12 for 1000 revisions


@dataclass(frozen=True)
class ResolvedRefs:
    """Content of ConfigMap keys the spec refers to, read by the I/O layer."""

    prompt_system: str | None = None
    tools_definitions: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Revision:
    """Everything one revision consists of, restorable from its ControllerRevision."""

    hash: str
    parts: dict[str, Any] = field(repr=False)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


# The embedding fields that say how the operator runs the model (api/v1alpha1.py EmbeddingSpec), replicas aside.
EMBEDDER_RUN_FIELDS = ("revisionPolicy", "image", "gpus", "gpuResourceName", "resources", "extraArgs")


def deploys_embedder(retriever: dict[str, Any] | None) -> bool:
    """Whether the operator runs a revision's embedding model: it searches a store and names no endpoint.

    ``retriever`` is the revision's retriever part (camelCase, as its
    ControllerRevision holds it), so an old revision answers for itself.
    """
    return bool(retriever and retriever.get("store") and not retriever.get("endpoint"))


class UnresolvedReference(ValueError):
    """The spec refers to ConfigMap content that the caller did not supply."""


def revision_parts(spec: InferenceStackSpec, refs: ResolvedRefs | None = None) -> dict[str, Any]:
    """The canonical document a revision hash is taken over."""
    refs = refs or ResolvedRefs()
    model = spec.model.model_dump(mode="json", by_alias=True, exclude={"replicas"})

    prompt = spec.prompt.model_dump(mode="json", by_alias=True, exclude={"config_map_ref", "system"})
    if spec.prompt.config_map_ref is not None:
        if refs.prompt_system is None:
            raise UnresolvedReference(f"prompt ConfigMap {spec.prompt.config_map_ref.name} is not resolved")
        prompt["system"] = refs.prompt_system
    else:
        prompt["system"] = spec.prompt.system

    parts: dict[str, Any] = {"model": model, "prompt": prompt, "retriever": None, "tools": None}
    if spec.retriever is not None:
        # How a failure is handled is delivery, not content: no new revision for it.
        # Fields added later are left out while unset, so a stack's revision is
        # the same before and after an operator upgrade that added them.
        # Replicas of a deployed embedding model are delivery too.
        retriever = spec.retriever.model_dump(
            mode="json", by_alias=True, exclude={"timeout": True, "on_failure": True, "embedding": {"replicas"}}
        )
        for optional in ("store", "queryTemplate"):
            if retriever[optional] is None:
                del retriever[optional]
        embedding = retriever["embedding"]
        for optional in ("dimension", "resources"):
            if embedding[optional] is None:
                del embedding[optional]
        if not deploys_embedder(retriever):
            # How the operator would run the model matters only when it does.
            for key in EMBEDDER_RUN_FIELDS:
                embedding.pop(key, None)
        parts["retriever"] = retriever
    if spec.tools is not None:
        tools: dict[str, Any] = {"version": spec.tools.version}
        if spec.tools.config_map_ref is not None:
            if refs.tools_definitions is None:
                raise UnresolvedReference(f"tools ConfigMap {spec.tools.config_map_ref.name} is not resolved")
            tools["definitions"] = refs.tools_definitions
        else:
            tools["definitions"] = [d.model_dump(mode="json", by_alias=True) for d in spec.tools.definitions]
        parts["tools"] = tools
    return parts


def compute_revision(spec: InferenceStackSpec, refs: ResolvedRefs | None = None) -> Revision:
    parts = revision_parts(spec, refs)
    return Revision(hash=digest(parts)[:HASH_LENGTH], parts=parts)


def cache_namespace(stack_namespace: str, stack_name: str, revision: str, prefix: str | None = None) -> str:
    """Each revision caches apart, so a deploy or rollback never serves another revision's entries."""
    return f"{prefix or f'{stack_namespace}.{stack_name}'}:{revision}"
