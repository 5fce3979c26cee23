import asyncio
import json
import time

from aiohttp.test_utils import TestServer

from inferstack.router.app import ROUTER
from inferstack.router.metrics import RouterMetrics
from inferstack.router.settings import RouterSettings
from inferstack.router.shadow import ShadowMirror
from inferstack.standin.app import RECEIVED, StandinSettings
from inferstack.standin.app import build_app as build_standin

CHAT = {"model": "support", "messages": [{"role": "user", "content": "How do I get a refund?"}]}
SHADOW = {"namespace": "team-a", "stack": "support", "revision": "rev-b", "role": "shadow", "slice": "default"}


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


def answer_text(raw: str) -> str:
    if not raw.startswith("data:"):
        return json.loads(raw)["choices"][0]["message"]["content"]
    events = [json.loads(line[6:]) for line in raw.split("\n") if line.startswith("data: {")]
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])


def sample(client, name: str, **labels: str) -> float:
    return client.app[ROUTER].metrics.registry.get_sample_value(name, labels) or 0.0


async def test_shadow_does_not_change_the_client_response(make_plan, router_client, candidate_server) -> None:
    plain = await router_client(make_plan(shadow_percent=0))
    mirrored = await router_client(make_plan(shadow_percent=100, candidate_extra={"systemPrompt": "Never discuss refunds."}))
    for stream in (False, True):
        body = {**CHAT, "stream": stream}
        a = await plain.post("/v1/chat/completions", json=body, headers={"x-user-id": "dave"})
        b = await mirrored.post("/v1/chat/completions", json=body, headers={"x-user-id": "dave"})
        assert (a.status, a.headers["x-inferstack-revision"]) == (b.status, b.headers["x-inferstack-revision"]) == (200, "rev-a")
        # Ids and timestamps differ per answer; the answer text must not.
        text_a, text_b = answer_text(await a.text()), answer_text(await b.text())
        assert text_a == text_b
        assert text_b.startswith("Open Orders")

    # The candidate did get both mirrors, and they were measured as shadow (and refused).
    await until(lambda: sample(mirrored, "inferstack_router_requests_total", **SHADOW) == 2)
    assert [r["model"] for r in candidate_server.app[RECEIVED]] == ["model-b", "model-b"]
    assert sample(mirrored, "inferstack_router_check_total", **SHADOW, check="refusal", result="fail") == 2
    assert sample(mirrored, "inferstack_router_time_to_first_token_seconds_count", **SHADOW) == 1


async def test_primary_never_waits_for_a_slow_shadow_and_full_queue_drops(make_plan, router_client) -> None:
    async with TestServer(build_standin(StandinSettings(served_model="model-b", latency_ms=1500))) as slow:
        plan = make_plan(shadow_percent=100, candidate_extra={"url": str(slow.make_url(""))})
        client = await router_client(plan, settings=RouterSettings(shadow_queue_limit=1, upstream_timeout=10))
        started = time.monotonic()
        for _ in range(3):
            resp = await client.post("/v1/chat/completions", json=CHAT)
            assert resp.status == 200
        assert time.monotonic() - started < 1.0  # less than one mirror's latency
        assert client.app[ROUTER].shadow.inflight == 1
        assert sample(client, "inferstack_router_shadow_dropped_total", namespace="team-a", stack="support") == 2


async def test_failing_shadow_is_counted_not_returned(make_plan, router_client) -> None:
    async with TestServer(build_standin(StandinSettings(served_model="model-b", fail_rate=1.0))) as failing:
        client = await router_client(make_plan(shadow_percent=100, candidate_extra={"url": str(failing.make_url(""))}))
        resp = await client.post("/v1/chat/completions", json=CHAT)
        assert resp.status == 200
        await until(lambda: sample(client, "inferstack_router_errors_total", **SHADOW, kind="upstream_5xx") == 1)


async def test_close_cancels_mirrors_after_grace() -> None:
    mirror = ShadowMirror(limit=4, metrics=RouterMetrics())
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    assert mirror.submit("ns", "s", forever())
    await mirror.close(grace=0.01)
    assert cancelled.is_set() and mirror.inflight == 0
