import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from inferstack.standin.app import StandinSettings, build_app


@pytest.fixture
async def client():
    async with TestClient(TestServer(build_app(StandinSettings(served_model="m1")))) as c:
        yield c


async def test_chat_answer_and_usage(client: TestClient) -> None:
    body = {"model": "m1", "messages": [{"role": "user", "content": "Where is my parcel?"}]}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    data = await resp.json()
    assert data["choices"][0]["message"]["content"].startswith("Open Orders and press Track")
    assert data["usage"]["completion_tokens"] > 0
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]


async def test_stream_chunks_rebuild_the_answer(client: TestClient) -> None:
    body = {
        "model": "m1",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Do you ship to Canada?"}],
    }
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    raw = (await resp.read()).decode()
    events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in parsed if c["choices"])
    assert text == "Yes, we ship to Canada in 5 to 8 working days."
    assert parsed[-1]["usage"]["completion_tokens"] > 0


async def test_completions_endpoint(client: TestClient) -> None:
    resp = await client.post("/v1/completions", json={"model": "m1", "prompt": "Who are you?"})
    assert (await resp.json())["choices"][0]["text"] == "I am the support assistant of Example Shop."


async def test_wrong_model_is_404_like_vllm(client: TestClient) -> None:
    resp = await client.post("/v1/chat/completions", json={"model": "other", "messages": []})
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "model_not_found"


async def test_fail_rate_one_always_fails() -> None:
    async with TestClient(TestServer(build_app(StandinSettings(served_model="m1", fail_rate=1.0)))) as c:
        resp = await c.post("/v1/chat/completions", json={"model": "m1", "messages": []})
        assert resp.status == 500


async def test_metrics_use_vllm_names(client: TestClient) -> None:
    await client.post("/v1/chat/completions", json={"model": "m1", "messages": [{"role": "user", "content": "Who are you?"}]})
    text = await (await client.get("/metrics")).text()
    for name in (
        'vllm:e2e_request_latency_seconds_count{model_name="m1"} 1.0',
        'vllm:time_to_first_token_seconds_count{model_name="m1"} 1.0',
        'vllm:num_requests_running{model_name="m1"} 0.0',
        'vllm:num_requests_waiting{model_name="m1"} 0.0',
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        'vllm:request_success_total{finished_reason="stop",model_name="m1"} 1.0',
    ):
        assert name in text
    assert (await client.get("/health")).status == 200
    assert (await (await client.get("/v1/models")).json())["data"][0]["id"] == "m1"


async def test_embeddings_are_deterministic_normalized_and_related_texts_are_closer(client: TestClient) -> None:
    texts = ["refund policy for damaged parcels", "refund policy for damaged parcels", "refund for a damaged parcel", "weather in Paris"]
    resp = await client.post("/v1/embeddings", json={"model": "m1", "input": texts, "dimensions": 32})
    assert resp.status == 200
    vectors = [d["embedding"] for d in (await resp.json())["data"]]
    assert all(len(v) == 32 and abs(sum(x * x for x in v) - 1) < 1e-9 for v in vectors)
    cos = [sum(a * b for a, b in zip(vectors[0], v, strict=True)) for v in vectors]
    assert vectors[0] == vectors[1] and cos[2] > cos[3]


@pytest.mark.parametrize(
    "body,status",
    [
        ({"model": "other", "input": "x"}, 404),
        ({"model": "m1", "input": []}, 400),
        ({"model": "m1", "input": [1]}, 400),
        ({"model": "m1", "input": "x", "dimensions": 10**6}, 400),
    ],
)
async def test_embeddings_refuse_what_vllm_refuses(client: TestClient, body, status) -> None:
    assert (await client.post("/v1/embeddings", json=body)).status == status


async def test_what_the_model_received_is_readable_over_http(client: TestClient) -> None:
    body = {"model": "m1", "messages": [{"role": "system", "content": "rendered context"}, {"role": "user", "content": "hi"}]}
    await client.post("/v1/chat/completions", json=body)
    received = await (await client.get("/debug/received")).json()
    assert received[-1]["messages"][0]["content"] == "rendered context"


async def test_a_prompt_the_router_may_forward_is_taken_like_vllm(client: TestClient) -> None:
    """vLLM sets no request-size limit; aiohttp's 1 MiB default answered a 7 MB prompt (under the router's
    8 MiB) with a plain-text 413, which the router passes through (found by tests/integration/test_fuzz_router.py)."""
    body = {"model": "m1", "messages": [{"role": "user", "content": "parcel " * 1_000_000}]}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200, (await resp.text())[:200]
