"""Traces in a real backend: the router exports OTLP to Jaeger (built from the Go module proxy) while the
operator rolls a candidate out on the real control plane and rolls it back on an evaluator gate.

What a platform team does when a user complains about an answer: take the answer's response id, find
its trace, and read which revision and prompt produced it and how the evaluators scored it; for a
rolled-back candidate, find the shadow copies it answered and the failed evaluations that sank it.
The router's audit log (its stdout) holds one line per request with the same ids and no secret.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from pathlib import Path

import pytest
from conftest import NS_GLOB, kget, kubectl, wait_until

from dataplane import SLICE_QUESTIONS, Load
from scenario import BAD_PROMPT, GOOD_PROMPT, support_stack, with_prompt

SERVICE = "inferstack-router"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
EVALUATION = {
    "slices": {"values": list(SLICE_QUESTIONS)},
    "evaluators": [{"name": "no-refusal", "rule": {"refusal": {}}}],
}


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory):
    import jaeger as backend

    j = backend.start(tmp_path_factory.mktemp("jaeger"))
    yield j
    j.stop()


@pytest.fixture(scope="module")
def traced(tmp_path_factory, jaeger):
    """The e2e data plane with a router that traces every request to Jaeger and writes its audit log."""
    from dataplane import DataPlane

    dp = DataPlane(tmp_path_factory.mktemp("traced"), namespace=NS_GLOB,
                   router_args=("--otlp-endpoint", jaeger.otlp_http_endpoint, "--trace-sample-rate", "1", "--audit-log"))
    dp.start()
    yield dp
    dp.stop()


def status(namespace: str) -> dict:
    return (kget("istack", "shop", namespace) or {}).get("status", {})


def apply(namespace: str, manifest: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def ask(router_url: str, key: str, stack: str, slice_: str) -> tuple[dict, dict[str, str]]:
    body = {"model": stack, "messages": [{"role": "user", "content": SLICE_QUESTIONS[slice_][0]}], "max_tokens": 32}
    req = urllib.request.Request(
        f"{router_url}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", "x-inferstack-slice": slice_,
                 "x-user-id": "complaining-user", "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read()), dict(resp.headers)


def by_id(spans: list[dict]) -> dict[str, dict]:
    return {s["spanID"]: s for s in spans}


def test_an_answer_and_a_rolled_back_candidates_shadow_copies_are_traced_in_jaeger(traced, jaeger, namespace) -> None:
    import jaeger as backend

    gate = {"name": "quality", "evaluator": "no-refusal", "margin": 0.1, "minSamples": 5}
    manifest = support_stack("shop", GOOD_PROMPT, gates=[gate])
    manifest["spec"]["evaluation"] = copy.deepcopy(EVALUATION)
    apply(namespace, manifest)
    kubectl("wait", "-n", namespace, "--for=condition=Ready", "istack/shop", "--timeout=150s")
    stable = status(namespace)["stableRevision"]
    key = traced.key_for(namespace)
    stack = f"{namespace}/shop"

    # 1. One answer, found in Jaeger by the response id the client got.
    answer, headers = ask(traced.router_url, key, stack, "shipping")
    response_id = headers["x-inferstack-response-id"]
    (trace,) = jaeger.find_traces(SERVICE, {"inferstack.response_id": response_id}, deadline_s=30)
    spans = backend.spans(trace)
    (root,) = [s for s in spans if s["tags"].get("inferstack.response_id") == response_id]
    t = root["tags"]
    assert root["operationName"] == "chat " + stack and t["span.kind"] == "server"
    assert root["traceID"] == CLIENT_TRACE and root["parent"] == CLIENT_SPAN  # the client's trace, continued
    assert (t["inferstack.stack"], t["inferstack.namespace"], t["inferstack.revision"], t["inferstack.role"]) == (
        "shop", namespace, stable, "stable")
    assert t["inferstack.slice"] == "shipping" and t["inferstack.prompt_hash"] == headers["x-inferstack-prompt-hash"]
    assert t["gen_ai.response.id"] == answer["id"] and t["gen_ai.request.model"] == stack
    assert t["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert t["inferstack.cache_hit"] is False and t["http.response.status_code"] == 200
    (check,) = [e for e in root["events"] if e["name"] == "gen_ai.evaluation.result"]
    assert check["fields"]["gen_ai.evaluation.name"] == "no-refusal" and check["fields"]["gen_ai.evaluation.score.label"] == "pass"
    (upstream,) = [s for s in spans if s["parent"] == root["spanID"] and s["tags"].get("span.kind") == "client"]
    assert upstream["tags"]["inferstack.revision"] == stable
    # The operator's revisions are served by vLLM (here its stand-in) at the URL the plan names.
    assert t["gen_ai.provider.name"] == upstream["tags"]["gen_ai.provider.name"] == "vllm"
    assert upstream["tags"]["server.address"] and upstream["tags"]["server.port"] > 0
    # The trace as Jaeger returned it, kept beside the logs for a reader (docs/router.md quotes one).
    Path(traced.log_dir, "trace-of-one-answer.json").write_text(json.dumps(spans, indent=1, sort_keys=True))

    # 2. A candidate that refuses billing, rolled back in shadow under load.
    with Load(traced.router_url, stack, api_key=key) as load:
        apply(namespace, with_prompt(manifest, BAD_PROMPT))
        cand = wait_until("candidate", lambda: status(namespace).get("candidateRevision"))
        wait_until("rollback", lambda: status(namespace).get("phase") == "Degraded", timeout=120)
    assert status(namespace)["rolledBackRevision"] == cand and load.result.failed == 0

    # 3. Its shadow copies on billing are in Jaeger, inside the traces of the stable answers they copied,
    #    with the failed evaluation that rolled it back.
    traces = jaeger.find_traces(SERVICE, {"inferstack.role": "shadow", "inferstack.revision": cand,
                                          "inferstack.slice": "billing"}, deadline_s=30)
    assert traces, "no shadow copy of the rolled-back candidate in Jaeger"
    spans = backend.spans(traces[0])
    ids = by_id(spans)
    (shadow,) = [s for s in spans if s["tags"].get("inferstack.role") == "shadow"]
    parent = ids[shadow["parent"]]  # the client-facing request the copy was made of
    assert parent["tags"]["inferstack.role"] == "stable" and parent["tags"]["inferstack.revision"] == stable
    assert shadow["operationName"] == "shadow shop"
    assert shadow["tags"]["inferstack.prompt_hash"] != parent["tags"]["inferstack.prompt_hash"]  # the candidate's prompt
    (verdict,) = [e for e in shadow["events"] if e["name"] == "gen_ai.evaluation.result"]
    assert verdict["fields"]["gen_ai.evaluation.score.label"] == "fail" and verdict["fields"]["gen_ai.evaluation.score.value"] == 0
    assert [s for s in spans if s["parent"] == shadow["spanID"] and s["tags"]["inferstack.revision"] == cand]  # its upstream call

    # 4. The audit log: a line per request with the same ids, and no API key anywhere in it.
    log = Path(traced.log_dir, "router-1.log").read_text()
    lines = [json.loads(x) for x in log.splitlines() if x.startswith('{"event"')]
    (mine,) = [x for x in lines if x.get("response_id") == response_id]
    assert mine["trace_id"] == CLIENT_TRACE and mine["revision"] == stable and mine["status"] == 200
    assert mine["evaluations"] == {"no-refusal": 1.0} and mine["tenant"] == f"{namespace}/e2e"
    assert any(x["revision"] == stable and x["slice"] == "billing" for x in lines if x["event"] == "request")
    assert key not in log
    # Nothing the stack did not opt in to: no message contents.
    assert all("input_messages" not in x for x in lines)

