"""The TrafficPlan object the operator writes: owner, no tokens, a spec that round-trips, serials that only grow."""

from __future__ import annotations

import json

from inferstack.api.crdgen import build_plan_crd
from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.controller.handlers import PlanSeen, plans_seen
from inferstack.core.config import OperatorConfig
from inferstack.core.revision import compute_revision
from inferstack.core.trafficplan import (
    build_traffic_plan,
    controller_uid,
    parse_current,
    plan_differs,
    traffic_plan,
)

STACK = {"metadata": {"name": "hosted", "namespace": "team-a", "uid": "uid-1"}}
SPEC = InferenceStackSpec.model_validate(
    {
        "model": {"name": "gpt-x", "gpus": 0, "endpoint": {"url": "https://llm.example.com/v1", "apiKeySecretRef": {"name": "k"}}},
        "prompt": {"version": "v1", "system": "s"},
        "tools": {"version": "t1", "definitions": [{"name": "lookup", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}]},
    }
)


def plan(serial: int = 1):
    rev = compute_revision(SPEC)
    return traffic_plan(STACK["metadata"], SPEC, OperatorConfig(), (rev.hash, rev.parts), serial=serial)


def test_the_object_is_controlled_by_its_stack_and_carries_no_token() -> None:
    obj = build_traffic_plan(STACK, plan().model_copy(update={"stable": plan().stable.model_copy(update={"api_key": "sk-leak"})}))
    assert obj["apiVersion"] == "inferstack.dev/v1alpha1" and obj["kind"] == "TrafficPlan"
    assert obj["metadata"]["name"] == "hosted-traffic" and obj["metadata"]["namespace"] == "team-a"
    [ref] = obj["metadata"]["ownerReferences"]
    assert ref["kind"] == "InferenceStack" and ref["name"] == "hosted" and ref["uid"] == "uid-1" and ref["controller"] is True
    assert controller_uid(obj["metadata"]) == "uid-1"
    text = json.dumps(obj)
    assert "sk-leak" not in text and "apiKey\"" not in text and "judgeApiKeys" not in text
    assert obj["spec"]["stable"]["apiKeySecretRef"] == {"name": "k", "key": "api-key"}
    assert "null" not in text  # the API server prunes nulls: what we write is what we read back


def test_the_spec_read_back_is_the_same_plan_so_it_is_never_rewritten() -> None:
    written = build_traffic_plan(STACK, plan(serial=4))["spec"]
    current = parse_current(json.dumps(written))
    assert current is not None and current.serial == 4
    assert not plan_differs(current, plan(serial=5))


def test_the_crd_keeps_tool_schemas_and_has_no_token_fields() -> None:
    spec = build_plan_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    bundle = spec["properties"]["stable"]["properties"]
    assert "apiKey" not in bundle and "judgeApiKeys" not in spec["properties"]["evaluation"]["properties"]
    assert bundle["tools"]["items"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert set(bundle["apiKeySecretRef"]["properties"]) == {"name", "key"}  # no namespace: the plan's own only
    assert "x-kubernetes-validations" not in json.dumps(spec)


def test_plans_seen_trusts_only_the_stacks_own_plan_and_serials_only_grow() -> None:
    key = ("team-a", "hosted")
    own = PlanSeen("hosted-traffic", "p1", "uid-1", 7, '{"serial": 7}', "41")
    seen = plans_seen(key, "uid-1", {key: [own]}, {})
    assert seen.current_json == '{"serial": 7}' and seen.floor_serial == 7 and seen.legacy == ()
    assert seen.replace_version is None  # only the operator wrote it: server-side apply
    # Left by a deleted stack of the same name: rewritten whole, its serial carried on.
    seen = plans_seen(key, "uid-2", {key: [own]}, {})
    assert seen.current_json is None and seen.floor_serial == 7 and seen.replace_version == "41"
    # Someone else wrote to it (a field apply would leave theirs in place): replaced whole.
    touched = PlanSeen("hosted-traffic", "p1", "uid-1", 9, '{"serial": 9}', "42", foreign=True)
    seen = plans_seen(key, "uid-1", {key: [touched]}, {})
    assert seen.current_json == '{"serial": 9}' and seen.replace_version == "42"
    # An older release's ConfigMap of this stack: deleted later; its serial is the floor.
    legacy = PlanSeen("hosted-traffic", "cm1", "uid-1", 41)
    foreign = PlanSeen("hosted-traffic", "cm2", "uid-0", 99)  # not this stack's: never deleted by us
    seen = plans_seen(key, "uid-1", {}, {key: [legacy, foreign]})
    assert seen.current_json is None and seen.legacy == (legacy,) and seen.floor_serial == 41


RAG = InferenceStackSpec.model_validate(
    {
        "model": {"name": "gpt-x", "gpus": 0, "endpoint": {"url": "https://llm.example.com/v1"}},
        "prompt": {"version": "v1", "system": "s", "templates": {"system": "{{ system }} {{ documents | length }}"}},
        "retriever": {
            "embedding": {"model": "bge", "dimension": 8}, "index": {"name": "docs", "version": "v2"},
            "endpoint": "http://embed.search.svc:8080/v1", "topK": 3, "queryTemplate": "{{ messages[-1].content }}",
            "store": {"secretRef": {"name": "docs-store"}}, "timeout": "750ms", "onFailure": "AnswerWithoutContext",
        },
    }
)


def test_each_bundle_carries_its_revisions_retrieval_and_never_the_dsn() -> None:
    rev = compute_revision(RAG)
    built = traffic_plan(STACK["metadata"], RAG, OperatorConfig(), (rev.hash, rev.parts))
    r = built.stable.retrieval
    assert r is not None and built.stable.system_template == "{{ system }} {{ documents | length }}"
    assert (r.embedding_url, r.embedding_model, r.dimension, r.index, r.index_version, r.top_k) == (
        "http://embed.search.svc:8080", "bge", 8, "docs", "v2", 3)
    assert (r.store_secret_ref.name, r.store_secret_ref.key, r.timeout_seconds, r.on_failure) == ("docs-store", "dsn", 0.75, "AnswerWithoutContext")
    assert r.query_template == "{{ messages[-1].content }}"
    leaky = built.model_copy(update={"stable": built.stable.model_copy(update={"retrieval": r.model_copy(update={"store_dsn": "postgresql://u:pw-leak@db"})})})
    obj = build_traffic_plan(STACK, leaky)
    assert "pw-leak" not in json.dumps(obj) and "storeDsn" not in json.dumps(obj)
    crd = build_plan_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "storeDsn" not in crd["properties"]["stable"]["properties"]["retrieval"]["properties"]


def test_a_retriever_without_a_store_retrieves_nothing() -> None:
    rev = compute_revision(SPEC)
    assert traffic_plan(STACK["metadata"], SPEC, OperatorConfig(), (rev.hash, rev.parts)).stable.retrieval is None
