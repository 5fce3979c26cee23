"""Revision identity: equal for semantically equal specs, different for any real change."""

import pytest

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core.revision import ResolvedRefs, UnresolvedReference, cache_namespace, compute_revision

BASE = {
    "model": {"name": "Qwen/Qwen2.5-7B-Instruct", "revision": "a" * 40, "gpus": 1},
    "prompt": {"version": "v1", "system": "Be brief."},
    "retriever": {"embedding": {"model": "bge"}, "index": {"name": "docs", "version": "1"}},
    "tools": {"version": "v1", "definitions": [{"name": "t", "parameters": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "int"}}}}]},
}


def rev(doc, refs=None):
    return compute_revision(InferenceStackSpec.model_validate(doc), refs).hash


def with_(path, value, doc=None):
    import copy

    doc = copy.deepcopy(doc or BASE)
    node = doc
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return doc


def test_hash_is_short_hex_and_stable():
    h = rev(BASE)
    assert len(h) == 10 and int(h, 16) >= 0
    assert rev(BASE) == h


def test_key_order_does_not_matter():
    reordered = {k: BASE[k] for k in reversed(BASE)}
    reordered["model"] = dict(reversed(list(BASE["model"].items())))
    tools = with_("tools.definitions", [{"parameters": {"properties": {"b": {"type": "int"}, "a": {"type": "string"}}, "type": "object"}, "name": "t"}])
    assert rev(reordered) == rev(BASE)
    assert rev(tools) == rev(BASE)


@pytest.mark.parametrize(
    "path,value",
    [
        ("model.engine.tensorParallelSize", 1),
        ("model.engine.gpuMemoryUtilization", 0.9),
        ("model.gpuResourceName", "nvidia.com/gpu"),
        ("model.image", "vllm/vllm-openai:v0.32.0"),
        ("retriever.topK", 5),
        ("model.pool", "interactive"),
    ],
)
def test_defaults_written_or_omitted_are_equal(path, value):
    assert rev(with_(path, value)) == rev(BASE)


@pytest.mark.parametrize(
    "path,value",
    [
        ("model.revision", "b" * 40),
        ("model.name", "Qwen/Qwen2.5-14B-Instruct"),
        ("model.engine.maxModelLen", 8192),
        ("model.engine.extraArgs", ["--enforce-eager"]),
        ("model.gpus", 2),
        ("model.image", "vllm/vllm-openai:v0.33.0"),
        ("model.pool", "batch"),
        ("prompt.system", "Be verbose."),
        ("prompt.version", "v2"),
        ("retriever.index.version", "2"),
        ("retriever.embedding.model", "e5"),
        ("retriever.topK", 8),
        ("retriever.embedding.dimension", 384),
        ("retriever.queryTemplate", "{{ messages[-1].content }}"),
        ("prompt.templates", {"system": "{{ system }} {% for d in documents %}{{ d.text }}{% endfor %}"}),
        ("tools.definitions", []),
        ("tools.version", "v2"),
    ],
)
def test_any_real_change_makes_a_new_revision(path, value):
    doc = with_(path, value)
    if path == "model.gpus":
        doc["model"]["engine"] = {"tensorParallelSize": 2}
    assert rev(doc) != rev(BASE)


@pytest.mark.parametrize(
    "path,value",
    [
        ("model.replicas", 7),
        ("rollout.analysisInterval", "10s"),
        ("rollout.steps", [{"canary": {"weight": 50}}]),
        ("gates", [{"name": "g", "prometheus": {"query": "up"}, "threshold": {"min": 1}}]),
        ("traffic.provider", "Router"),
        ("cache.tenantHeader", "x-org"),
        ("retriever.timeout", "10s"),
        ("retriever.onFailure", "AnswerWithoutContext"),
        ("evaluation.slices", {"values": ["billing"]}),
        ("evaluation.evaluators", [{"name": "json", "rule": {"json": {}}}]),
        ("evaluation.alpha", 0.01),
    ],
)
def test_delivery_changes_make_no_new_revision(path, value):
    assert rev(with_(path, value)) == rev(BASE)


def test_configmap_prompt_hashes_its_content():
    doc = with_("prompt", {"version": "v1", "configMapRef": {"name": "p", "key": "system"}})
    with pytest.raises(UnresolvedReference):
        rev(doc)
    inline_equivalent = rev(BASE)
    assert rev(doc, ResolvedRefs(prompt_system="Be brief.")) == inline_equivalent
    assert rev(doc, ResolvedRefs(prompt_system="Be rude.")) != inline_equivalent


def test_cache_namespace_is_per_revision():
    assert cache_namespace("ns", "bot", "abc") != cache_namespace("ns", "bot", "def")
    assert cache_namespace("ns", "bot", "abc", prefix="team-a") == "team-a:abc"


def test_retriever_fields_added_later_leave_existing_revisions_alone():
    # The hash of BASE before spec.retriever had store, dimension, queryTemplate, timeout and onFailure:
    # an operator upgrade must not start a rollout of every stack with a retriever.
    assert rev(BASE) == "77ca169e71"


RAG = with_("retriever", {
    "embedding": {"model": "bge", "dimension": 384}, "index": {"name": "docs", "version": "1"},
    "endpoint": "http://embed:8080", "store": {"kind": "pgvector", "secretRef": {"name": "store"}},
})


@pytest.mark.parametrize(
    "path,value,new_revision",
    [
        ("retriever.store.secretRef.name", "other-store", True),  # another database: other documents
        ("retriever.embedding.dimension", 768, True),
        ("retriever.endpoint", "http://embed-2:8080", True),
        ("retriever.timeout", "250ms", False),
        ("retriever.onFailure", "AnswerWithoutContext", False),
    ],
)
def test_a_served_retriever_changes_the_revision_by_what_users_see(path, value, new_revision):
    assert (rev(with_(path, value, RAG)) != rev(RAG)) is new_revision
