"""The router applies the stack's declared slices and evaluators: one metric shape, labels from the spec only."""

from __future__ import annotations

from inferstack.router.app import ROUTER

REFUND = {"model": "support", "messages": [{"role": "user", "content": "How do I get a refund?"}]}
EVALUATION = {
    "sliceHeader": "x-team-slice",
    "slices": ["billing", "shipping"],
    "evaluators": [
        {"name": "no-refusal", "rule": {"refusal": {}}},
        {"name": "mentions-days", "rule": {"mustMatch": "(?i)days"}},
        {"name": "json", "rule": {"json": {}}},
    ],
}


def sample(client, name: str, **labels: str) -> float:
    return client.app[ROUTER].metrics.registry.get_sample_value(name, labels) or 0.0


def series(client, name: str) -> list[dict[str, str]]:
    return [s.labels for m in client.app[ROUTER].metrics.registry.collect() for s in m.samples if s.name == name]


async def test_declared_slices_and_evaluators_give_count_sum_and_squares(make_plan, router_client) -> None:
    plan = make_plan(
        candidate_weight=0,
        evaluation=EVALUATION,
        stable_extra={"systemPrompt": "You are the support assistant. Never discuss refunds."},
    )
    client = await router_client(plan)
    for slice_header in ("billing", "billing", "junk-1", "junk-2", None):
        headers = {"x-user-id": "u"} | ({"x-team-slice": slice_header} if slice_header else {})
        assert (await client.post("/v1/chat/completions", json=REFUND, headers=headers)).status == 200
    base = {"namespace": "team-a", "stack": "support", "revision": "rev-a", "role": "stable"}
    billing = {**base, "slice": "billing", "evaluator": "no-refusal"}
    assert sample(client, "inferstack_eval_samples_total", **billing) == 2
    assert sample(client, "inferstack_eval_score_sum_total", **billing) == 0  # the stand-in refuses refunds
    assert sample(client, "inferstack_eval_score_squares_sum_total", **billing) == 0
    # undeclared and missing slices are "other": no label value a client chose
    assert sample(client, "inferstack_eval_samples_total", **{**billing, "slice": "other"}) == 3
    assert {s["slice"] for s in series(client, "inferstack_eval_samples_total")} == {"billing", "other"}
    # json applies only when JSON was asked for: no sample, no series
    assert not [s for s in series(client, "inferstack_eval_samples_total") if s["evaluator"] == "json"]
    assert sample(client, "inferstack_eval_samples_total", **{**billing, "evaluator": "mentions-days"}) == 2


async def test_a_shadow_answer_is_scored_like_a_client_answer(make_plan, router_client) -> None:
    import asyncio

    plan = make_plan(shadow_percent=100, evaluation=EVALUATION)
    client = await router_client(plan)
    resp = await client.post("/v1/chat/completions", json=REFUND, headers={"x-user-id": "u", "x-team-slice": "billing"})
    assert resp.status == 200
    labels = {"namespace": "team-a", "stack": "support", "revision": "rev-b", "role": "shadow", "slice": "billing", "evaluator": "no-refusal"}
    for _ in range(200):  # the mirror runs in the background: poll with a deadline
        if sample(client, "inferstack_eval_samples_total", **labels):
            break
        await asyncio.sleep(0.01)
    assert sample(client, "inferstack_eval_samples_total", **labels) == 1
