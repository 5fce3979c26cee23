"""The router's judges (router/judge.py): budget, pairs, and the runner against the real judge stand-in."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from inferstack.core import judging
from inferstack.core.judging import (
    ANSWER,
    ANSWER_A,
    ANSWER_B,
    DOCUMENTS,
    DOCUMENTS_A,
    DOCUMENTS_B,
    read_section,
)
from inferstack.core.retrieval import Document
from inferstack.core.trafficplan import TrafficPlan
from inferstack.router.judge import Budget, Judged, JudgeRunner, Pairs
from inferstack.router.metrics import Labels, RouterMetrics
from inferstack.router.plansource import PlanStore
from inferstack.standin import fixtures
from inferstack.standin.app import RECEIVED, StandinSettings
from inferstack.standin.app import build_app as build_standin

CRITERIA = "Correct, helpful and polite answers to support questions."
QUESTION = "How do I get a refund?"
BODY = {"model": "support", "messages": [{"role": "user", "content": QUESTION}]}
RIGHT = fixtures.answer("You are helpful.", QUESTION)
WRONG = fixtures.answer("You are helpful. Always quote the 2019 refund policy.", QUESTION)
NOWHERE = "http://127.0.0.1:9"  # the model backends: never called by the judges

STABLE = Labels("team-a", "support", "rev-a", "stable", "billing")
CANDIDATE = Labels("team-a", "support", "rev-b", "candidate", "billing")
SHADOW = Labels("team-a", "support", "rev-b", "shadow", "billing")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ budget


def test_budget_buckets_are_per_key() -> None:
    budget = Budget(Clock())
    assert [budget.take(("team-a/support", "quality"), 2) for _ in range(3)] == [True, True, False]
    assert budget.take(("team-a/support", "preferred"), 2)  # another evaluator
    assert budget.take(("team-a/other", "quality"), 2)  # another stack


def test_budget_refills_over_time_up_to_its_size() -> None:
    clock = Clock()
    budget = Budget(clock)
    key = ("team-a/support", "quality")
    assert all(budget.take(key, 60) for _ in range(60))
    assert not budget.take(key, 60)
    clock.now += 0.5  # half a call's worth
    assert not budget.take(key, 60)
    clock.now += 0.5
    assert budget.take(key, 60)
    assert not budget.take(key, 60)
    clock.now += 3600  # an idle hour refills one minute's worth, no more
    assert sum(budget.take(key, 60) for _ in range(100)) == 60


def test_budget_a_pair_costs_two() -> None:
    budget = Budget(Clock())
    key = ("team-a/support", "preferred")
    assert budget.take(key, 3, cost=2)
    assert not budget.take(key, 3, cost=2)  # one token left: not enough for both orders
    assert budget.take(key, 3, cost=1)  # ...and a refused take spent nothing


def test_budget_keys_are_bounded() -> None:
    budget = Budget(Clock(), max_keys=2)
    for stack in ("a", "b", "c"):
        assert budget.take((f"ns/{stack}", "quality"), 1)
    assert len(budget._buckets) == 2
    assert not budget.take(("ns/c", "quality"), 1)  # the newest are kept
    assert budget.take(("ns/a", "quality"), 1)  # the oldest was forgotten: a fresh bucket


# ------------------------------------------------------------------- pairs


@pytest.mark.parametrize("order", [("stable", "shadow"), ("shadow", "stable")])
def test_pairs_complete_on_both_halves_in_either_order(order: tuple[str, str]) -> None:
    pairs = Pairs(clock=Clock())
    key = ("team-a/support", "preferred", "req-1")
    texts = {"stable": "stable answer", "shadow": "candidate answer"}
    assert pairs.expect(key)
    assert pairs.add(key, order[0], texts[order[0]]) is None
    assert pairs.add(key, order[1], texts[order[1]]) == (Judged("stable answer"), Judged("candidate answer"))
    assert len(pairs) == 0
    assert pairs.add(key, "stable", "again") is None  # done: a retry's answer opens nothing


def test_pairs_only_complete_what_was_expected() -> None:
    pairs = Pairs(clock=Clock())
    assert pairs.add(("team-a/support", "preferred", "req-1"), "stable", "x") is None
    assert len(pairs) == 0


def test_pairs_expire_and_report_stack_and_evaluator() -> None:
    clock = Clock()
    pairs = Pairs(ttl=10, clock=clock)
    assert pairs.expect(("team-a/support", "preferred", "req-1"))
    pairs.add(("team-a/support", "preferred", "req-1"), "stable", "half")
    clock.now += 5
    assert pairs.expect(("team-b/shop", "judge", "req-2"))
    clock.now += 6  # req-1 is past its ttl, req-2 is not
    assert pairs.expect(("team-a/support", "preferred", "req-3"))
    assert pairs.take_expired() == [("team-a/support", "preferred")]
    assert pairs.take_expired() == []
    assert pairs.add(("team-a/support", "preferred", "req-1"), "shadow", "late") is None
    clock.now += 100
    pairs.expect(("team-a/support", "preferred", "req-4"))
    assert sorted(pairs.take_expired()) == [("team-a/support", "preferred"), ("team-b/shop", "judge")]
    assert len(pairs) == 1


def test_pairs_are_bounded() -> None:
    clock = Clock()
    pairs = Pairs(limit=2, ttl=10, clock=clock)
    assert pairs.expect(("ns/s", "p", "1")) and pairs.expect(("ns/s", "p", "2"))
    assert not pairs.expect(("ns/s", "p", "3"))  # full of live pairs: refused, nothing kept
    assert len(pairs) == 2
    assert pairs.add(("ns/s", "p", "3"), "stable", "x") is None
    clock.now += 11
    assert pairs.expect(("ns/s", "p", "3"))  # the expired made room
    assert len(pairs) == 1
    assert len(pairs.take_expired()) == 2


def test_pairs_expired_reports_are_bounded() -> None:
    clock = Clock()
    pairs = Pairs(limit=3, ttl=1, clock=clock)
    for round_ in range(5):
        for i in range(3):
            pairs.expect(("ns/s", "p", f"{round_}-{i}"))
        clock.now += 2
    pairs.expect(("ns/s", "p", "last"))
    assert len(pairs.take_expired()) == 3  # never more than ``limit`` waiting to be counted


# ------------------------------------------------------------------ runner


def value(metrics: RouterMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def endpoint_judge(name: str, url: str, mode: str = "Rubric", **extra: Any) -> dict[str, Any]:
    judge = {"mode": mode, "endpoint": {"url": url.rstrip("/") + "/v1", "model": "judge"}, "criteria": CRITERIA,
             "sampleRate": 1.0, "maxCallsPerMinute": 10_000, "timeout": "5s", **extra}  # fmt: skip
    return {"name": name, "judge": judge}


def make_plan(*evaluators: dict[str, Any], stack: str = "support", **fields: Any) -> TrafficPlan:
    data: dict[str, Any] = {
        "stack": stack,
        "namespace": "team-a",
        "serial": 1,
        "shadowPercent": 100,
        "stable": {"revision": "rev-a", "url": NOWHERE, "servedModel": "model-a", "cacheNamespace": "team-a.support.rev-a"},
        "candidate": {"revision": "rev-b", "url": NOWHERE, "servedModel": "model-b", "cacheNamespace": "team-a.support.rev-b"},
        "evaluation": {"slices": ["billing"], "evaluators": list(evaluators)},
        **fields,
    }
    return TrafficPlan.model_validate(data)


def judged_plan(url: str, **rubric: Any) -> TrafficPlan:
    """The stack with a rubric judge ``quality`` and a pairwise judge ``preferred``, both at ``url``."""
    return make_plan(endpoint_judge("quality", url, **rubric), endpoint_judge("preferred", url, "Pairwise"))


def judge_standin(**kw: Any) -> TestServer:
    return TestServer(build_standin(StandinSettings(served_model="judge", judge=True, **kw)))


@pytest.fixture
async def judge_server() -> AsyncIterator[TestServer]:
    async with judge_standin() as server:
        yield server


def url_of(server: TestServer) -> str:
    return str(server.make_url(""))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


Runners = Callable[..., tuple[JudgeRunner, PlanStore]]


@pytest.fixture
async def runners(session: aiohttp.ClientSession) -> AsyncIterator[Runners]:
    """``runners(*plans, **JudgeRunner fields)`` -> a started runner over a store holding the plans."""
    started: list[JudgeRunner] = []

    def make(*plans: TrafficPlan, **kw: Any) -> tuple[JudgeRunner, PlanStore]:
        store = PlanStore()
        runner = JudgeRunner(RouterMetrics(), store.get, **kw)
        for plan in plans:
            store.apply(plan)
            runner.plan_changed(plan.key, plan)
        runner.start(session)
        started.append(runner)
        return runner, store

    yield make
    for runner in started:
        await runner.close()


async def drained(runner: JudgeRunner) -> None:
    assert runner._queue is not None
    await asyncio.wait_for(runner._queue.join(), timeout=5)


def samples(runner: JudgeRunner, labels: Labels, evaluator: str) -> tuple[float, float]:
    key = {**labels._asdict(), "evaluator": evaluator}
    m = runner.metrics
    return value(m, "inferstack_eval_samples_total", **key), value(m, "inferstack_eval_score_sum_total", **key)


def pairs_of(runner: JudgeRunner, evaluator: str = "preferred", baseline: str = "rev-a") -> tuple[float, float, float]:
    key = {"namespace": "team-a", "stack": "support", "revision": "rev-b", "baseline": baseline,
           "slice": "billing", "evaluator": evaluator}  # fmt: skip
    m = runner.metrics
    return (
        value(m, "inferstack_eval_pairs_total", **key),
        value(m, "inferstack_eval_pair_wins_total", **key),
        value(m, "inferstack_eval_pair_losses_total", **key),
    )


def errors(runner: JudgeRunner, revision: str, evaluator: str, kind: str) -> float:
    return value(runner.metrics, "inferstack_eval_errors_total", namespace="team-a", stack="support",
                 revision=revision, evaluator=evaluator, kind=kind)  # fmt: skip


def dropped(runner: JudgeRunner, evaluator: str, reason: str) -> float:
    return value(runner.metrics, "inferstack_eval_dropped_total", namespace="team-a", stack="support",
                 evaluator=evaluator, reason=reason)  # fmt: skip


async def test_rubric_samples_are_recorded_with_the_answers_labels(runners: Runners, judge_server: TestServer) -> None:
    plan = judged_plan(url_of(judge_server))
    runner, _ = runners(plan)
    runner.answered(plan, STABLE, BODY, RIGHT, "req-1")
    runner.answered(plan, CANDIDATE, BODY, WRONG, "req-2")
    await drained(runner)
    assert samples(runner, STABLE, "quality") == (1, pytest.approx(8 / 9))
    assert samples(runner, CANDIDATE, "quality") == (1, pytest.approx(1 / 9))
    # No pair was opened, so the pairwise judge asked nothing: two judge calls in all.
    assert len(judge_server.app[RECEIVED]) == 2
    assert pairs_of(runner) == (0, 0, 0)
    sent = judge_server.app[RECEIVED][0]
    assert sent["model"] == "judge" and sent["temperature"] == 0 and sent["stream"] is False
    assert read_section(sent["messages"][1]["content"], ANSWER) == RIGHT


async def test_rubric_judges_only_the_sampled_requests(runners: Runners, judge_server: TestServer) -> None:
    plan = make_plan(endpoint_judge("quality", url_of(judge_server), sampleRate=0.3))
    runner, _ = runners(plan)
    ids = [f"req-{i}" for i in range(40)]
    for request_id in ids:
        runner.answered(plan, STABLE, BODY, RIGHT, request_id)
    await drained(runner)
    expected = sum(judging.sampled(i, "quality", 0.3) for i in ids)
    assert 0 < expected < len(ids)
    assert samples(runner, STABLE, "quality")[0] == expected


async def test_a_wrong_candidate_loses_its_pair(runners: Runners, judge_server: TestServer) -> None:
    plan = judged_plan(url_of(judge_server))
    runner, _ = runners(plan)
    # The shadow half first, then the client-facing half: the pair completes either way.
    runner.expect_pair(plan, "req-1")
    runner.answered(plan, SHADOW, BODY, WRONG, "req-1")
    runner.answered(plan, STABLE, BODY, RIGHT, "req-1")
    await drained(runner)
    assert pairs_of(runner) == (1, 0, 1)  # one pair, lost in both orders, baseline = stable revision
    assert pairs_of(runner, baseline="rev-b") == (0, 0, 0)
    # Both orders were asked: stable as A, then the candidate as A.
    asked = [m["messages"][1]["content"] for m in judge_server.app[RECEIVED]]
    pair_prompts = [(read_section(p, ANSWER_A), read_section(p, ANSWER_B)) for p in asked if read_section(p, ANSWER_A)]
    assert pair_prompts == [(RIGHT, WRONG), (WRONG, RIGHT)]
    # The rubric judge saw both answers too, each under its own labels.
    assert samples(runner, STABLE, "quality")[0] == samples(runner, SHADOW, "quality")[0] == 1

    # A right candidate against a wrong stable answer wins; the same answer is a tie.
    for request_id, stable, candidate in (("req-2", WRONG, RIGHT), ("req-3", RIGHT, RIGHT)):
        runner.expect_pair(plan, request_id)
        runner.answered(plan, STABLE, BODY, stable, request_id)
        runner.answered(plan, SHADOW, BODY, candidate, request_id)
    await drained(runner)
    assert pairs_of(runner) == (3, 1, 1)
    assert len(runner.pairs) == 0


V1 = [Document("kb-1", "Refunds take 5 days.", 0.9)]  # the stable revision's index version
V2 = [Document("kb-2", "Refunds take 90 days.", 0.9)]  # the candidate's


async def test_a_rubric_judge_sees_the_documents_its_answer_was_given(runners: Runners, judge_server: TestServer) -> None:
    plan = make_plan(endpoint_judge("quality", url_of(judge_server)))
    runner, _ = runners(plan)
    runner.answered(plan, STABLE, BODY, RIGHT, "req-1", V1)
    runner.answered(plan, SHADOW, BODY, WRONG, "req-1", V2)
    runner.answered(plan, STABLE, BODY, RIGHT, "req-2")  # nothing retrieved: no documents section
    await drained(runner)
    asked = [m["messages"] for m in judge_server.app[RECEIVED]]
    seen = {(read_section(m[1]["content"], ANSWER), read_section(m[1]["content"], DOCUMENTS), m[0]["content"]) for m in asked}
    assert len(asked) == 3 and seen == {
        (RIGHT, "[kb-1] Refunds take 5 days.", judging.RUBRIC_SYSTEM_WITH_DOCUMENTS),
        (WRONG, "[kb-2] Refunds take 90 days.", judging.RUBRIC_SYSTEM_WITH_DOCUMENTS),  # the shadow answer: the candidate's own
        (RIGHT, None, judging.RUBRIC_SYSTEM),
    }
    # The stand-in still judges: documents change the prompt, not its verdict.
    assert samples(runner, STABLE, "quality") == (2, pytest.approx(16 / 9))
    assert samples(runner, SHADOW, "quality") == (1, pytest.approx(1 / 9))


async def test_a_pairwise_judge_sees_each_answer_with_its_own_documents(runners: Runners, judge_server: TestServer) -> None:
    plan = make_plan(endpoint_judge("preferred", url_of(judge_server), "Pairwise"))
    runner, _ = runners(plan)
    runner.expect_pair(plan, "req-1")
    runner.answered(plan, SHADOW, BODY, WRONG, "req-1", V2)
    runner.answered(plan, STABLE, BODY, RIGHT, "req-1", V1)
    await drained(runner)
    assert pairs_of(runner) == (1, 0, 1)
    asked = [m["messages"][1]["content"] for m in judge_server.app[RECEIVED]]
    sides = [((read_section(p, DOCUMENTS_A), read_section(p, ANSWER_A)), (read_section(p, DOCUMENTS_B), read_section(p, ANSWER_B)))
             for p in asked]
    stable, candidate = ("[kb-1] Refunds take 5 days.", RIGHT), ("[kb-2] Refunds take 90 days.", WRONG)
    assert sides == [(stable, candidate), (candidate, stable)]  # the documents move with their answer


async def test_position_bias_is_a_tie_not_a_win(runners: Runners) -> None:
    async with judge_standin(judge_position_bias=True) as biased:
        plan = make_plan(endpoint_judge("preferred", url_of(biased), "Pairwise"))
        runner, _ = runners(plan)
        runner.expect_pair(plan, "req-1")
        runner.answered(plan, STABLE, BODY, RIGHT, "req-1")
        runner.answered(plan, SHADOW, BODY, RIGHT, "req-1")
        await drained(runner)
        assert pairs_of(runner) == (1, 0, 0)


async def test_pairs_ignore_a_candidate_answer_and_a_missing_half(runners: Runners, judge_server: TestServer) -> None:
    clock = Clock()
    plan = make_plan(endpoint_judge("preferred", url_of(judge_server), "Pairwise"))
    runner, _ = runners(plan, pairs=Pairs(ttl=10, clock=clock))
    runner.expect_pair(plan, "req-1")
    runner.answered(plan, CANDIDATE, BODY, WRONG, "req-1")  # a canary answer is not the shadow half
    runner.answered(plan, STABLE, BODY, RIGHT, "req-1")
    await drained(runner)
    assert pairs_of(runner) == (0, 0, 0)
    assert len(judge_server.app[RECEIVED]) == 0
    clock.now += 11
    runner.expect_pair(plan, "req-2")
    assert dropped(runner, "preferred", "unpaired") == 1


def garbage_judge(content: Any = "I like the answer a lot.", raw: bytes | None = None) -> TestServer:
    async def reply(request: web.Request) -> web.Response:
        if raw is not None:
            return web.Response(body=raw, content_type="application/json")
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": content}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", reply)
    return TestServer(app)


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("kind", "server", "timeout"),
    [
        pytest.param("reply", lambda: garbage_judge(), "5s", id="no-verdict"),
        pytest.param("reply", lambda: garbage_judge(content=None), "5s", id="no-content"),
        pytest.param("reply", lambda: garbage_judge(raw=b"<html>not json"), "5s", id="not-json"),
        pytest.param("reply", lambda: garbage_judge(content="Rating: [[42]]"), "5s", id="out-of-range"),
        pytest.param("http_5xx", lambda: judge_standin(fail_rate=1.0), "5s", id="http-500"),
        pytest.param("http_4xx", lambda: judge_standin(api_key="s3cret"), "5s", id="http-401"),
        pytest.param("connect", None, "5s", id="unreachable"),
        pytest.param("timeout", lambda: judge_standin(latency_ms=1000), "200ms", id="timeout"),
    ],
)
async def test_a_failing_judge_is_an_error_never_a_sample(
    runners: Runners, kind: str, server: Callable[[], TestServer] | None, timeout: str
) -> None:
    async def check(url: str) -> None:
        plan = make_plan(
            endpoint_judge("quality", url, timeout=timeout), endpoint_judge("preferred", url, "Pairwise", timeout=timeout)
        )
        runner, _ = runners(plan)
        runner.expect_pair(plan, "req-1")
        runner.answered(plan, STABLE, BODY, RIGHT, "req-1")
        runner.answered(plan, SHADOW, BODY, WRONG, "req-1")
        started = time.monotonic()
        await drained(runner)
        assert time.monotonic() - started < 3
        assert errors(runner, "rev-a", "quality", kind) == 1
        assert errors(runner, "rev-b", "quality", kind) == 1
        assert errors(runner, "rev-b", "preferred", kind) == 1  # a pair's error is the candidate's
        assert samples(runner, STABLE, "quality") == samples(runner, SHADOW, "quality") == (0, 0)
        assert pairs_of(runner) == (0, 0, 0)
        assert runner._tasks and not any(t.done() for t in runner._tasks)  # the workers live on

    if server is None:
        await check(f"http://127.0.0.1:{dead_port()}")
    else:
        async with server() as s:
            await check(url_of(s))


async def test_the_judge_api_key_is_sent(runners: Runners) -> None:
    async with judge_standin(api_key="s3cret") as keyed:
        plan = make_plan(endpoint_judge("quality", url_of(keyed)))
        plan = plan.model_copy(update={"evaluation": plan.evaluation.model_copy(update={"judge_api_keys": {"quality": "s3cret"}})})
        runner, _ = runners(plan)
        runner.answered(plan, STABLE, BODY, RIGHT, "req-1")
        await drained(runner)
        assert samples(runner, STABLE, "quality")[0] == 1


async def test_a_full_queue_drops_and_counts(runners: Runners) -> None:
    plan = judged_plan(NOWHERE)
    runner, _ = runners(plan, queue_limit=2, workers=0)  # nobody takes jobs off the queue
    for i in range(5):
        runner.answered(plan, STABLE, BODY, RIGHT, f"req-{i}")
    assert runner.queued == 2
    assert dropped(runner, "quality", "queue_full") == 3
    runner.expect_pair(plan, "req-9")
    runner.answered(plan, SHADOW, BODY, WRONG, "req-9")  # its rubric job is dropped too
    runner.answered(plan, STABLE, BODY, RIGHT, "req-9")  # the completed pair finds the queue full
    assert dropped(runner, "preferred", "queue_full") == 1
    assert dropped(runner, "quality", "queue_full") == 5


async def test_a_spent_budget_drops_and_counts(runners: Runners, judge_server: TestServer) -> None:
    clock = Clock()
    url = url_of(judge_server)
    plan = make_plan(
        endpoint_judge("quality", url, maxCallsPerMinute=2), endpoint_judge("preferred", url, "Pairwise", maxCallsPerMinute=3)
    )
    runner, _ = runners(plan, budget=Budget(clock))
    for i in range(3):
        runner.answered(plan, STABLE, BODY, RIGHT, f"req-{i}")
    await drained(runner)
    assert samples(runner, STABLE, "quality")[0] == 2
    assert dropped(runner, "quality", "budget") == 1
    # A pair costs two calls: the second pair does not fit in the one token left.
    for request_id in ("pair-1", "pair-2"):
        runner.expect_pair(plan, request_id)
        runner.answered(plan, STABLE, BODY, RIGHT, request_id)
        runner.answered(plan, SHADOW, BODY, WRONG, request_id)
    await drained(runner)
    assert pairs_of(runner)[0] == 1
    assert dropped(runner, "preferred", "budget") == 1
    # A minute later the buckets are full again.
    clock.now += 60
    runner.answered(plan, STABLE, BODY, RIGHT, "req-late")
    await drained(runner)
    assert samples(runner, STABLE, "quality")[0] == 3


async def test_a_full_pairs_table_drops_and_counts(runners: Runners, judge_server: TestServer) -> None:
    plan = make_plan(endpoint_judge("preferred", url_of(judge_server), "Pairwise"))
    runner, _ = runners(plan, pairs=Pairs(limit=1, clock=Clock()))
    runner.expect_pair(plan, "req-1")
    runner.expect_pair(plan, "req-2")
    assert dropped(runner, "preferred", "pairs_full") == 1
    for request_id in ("req-1", "req-2"):
        runner.answered(plan, STABLE, BODY, RIGHT, request_id)
        runner.answered(plan, SHADOW, BODY, WRONG, request_id)
    await drained(runner)
    assert pairs_of(runner) == (1, 0, 1)


def stack_judge(name: str, stack: str, mode: str = "Rubric") -> dict[str, Any]:
    return {"name": name, "judge": {"mode": mode, "stack": stack, "criteria": CRITERIA, "sampleRate": 1.0}}


def grader_plan(url: str, serial: int = 1, **stable: Any) -> TrafficPlan:
    return TrafficPlan.model_validate({
        "stack": "grader", "namespace": "team-a", "serial": serial,
        "stable": {"revision": "grader-1", "url": url, "servedModel": "judge", "cacheNamespace": "team-a.grader.grader-1",
                   **stable},
    })  # fmt: skip


async def test_a_judge_stack_resolves_through_the_plan_store(runners: Runners, judge_server: TestServer) -> None:
    plan = make_plan(stack_judge("quality", "grader"), stack_judge("preferred", "grader", "Pairwise"))
    runner, store = runners(plan)
    # No plan for the judge stack yet: an error, not a sample.
    runner.answered(plan, STABLE, BODY, RIGHT, "req-1")
    await drained(runner)
    assert errors(runner, "rev-a", "quality", "no_judge_stack") == 1
    assert samples(runner, STABLE, "quality")[0] == 0

    store.apply(grader_plan(url_of(judge_server)))
    runner.answered(plan, STABLE, BODY, RIGHT, "req-2")
    runner.expect_pair(plan, "req-3")
    runner.answered(plan, STABLE, BODY, RIGHT, "req-3")
    runner.answered(plan, SHADOW, BODY, WRONG, "req-3")
    await drained(runner)
    assert samples(runner, STABLE, "quality") == (2, pytest.approx(16 / 9))
    assert pairs_of(runner) == (1, 0, 1)
    sent = judge_server.app[RECEIVED][0]
    assert sent["model"] == "judge"  # the judge stack's served model
    assert sent["cache_salt"]  # its bundle applied, under the judge's own tenant
    assert sent["messages"][0]["content"] == judging.RUBRIC_SYSTEM

    # The plan in force is used on every call: a new judge stack plan moves the calls.
    async with judge_standin() as moved:
        store.apply(grader_plan(url_of(moved), serial=2))
        runner.answered(plan, STABLE, BODY, RIGHT, "req-4")
        await drained(runner)
        assert len(moved.app[RECEIVED]) == 1
    assert samples(runner, STABLE, "quality")[0] == 3



async def test_a_judge_stacks_system_prompt_keeps_the_judges_instructions(
    runners: Runners, judge_server: TestServer
) -> None:
    plan = make_plan(stack_judge("quality", "grader"))
    tool = {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}
    runner, _ = runners(plan, grader_plan(url_of(judge_server), systemPrompt="You grade support answers.", tools=[tool]))
    runner.answered(plan, STABLE, BODY, RIGHT, "req-1")
    await drained(runner)
    assert samples(runner, STABLE, "quality")[0] == 1
    sent = judge_server.app[RECEIVED][0]
    assert [m["role"] for m in sent["messages"]] == ["system", "user"]
    system = sent["messages"][0]["content"]
    assert system.startswith("You grade support answers.") and system.endswith(judging.RUBRIC_SYSTEM)
    assert "tools" not in sent  # a judge call asks for a verdict, not a tool call


async def test_verdicts_land_in_the_scored_answers_trace(runners: Runners, judge_server: TestServer) -> None:
    """Inside a traced request, a verdict is an ``evaluate`` span under the request's span, with its event."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from inferstack.router.tracing import Tracing

    exporter = InMemorySpanExporter()
    tracer = Tracing.to_exporter(exporter, 1.0)
    plan = judged_plan(url_of(judge_server))
    runner, _ = runners(plan, tracer=tracer)
    with tracer.request({}, "chat support", {}) as request_span:  # as the router's handler does
        runner.expect_pair(plan, "req-1")
        runner.answered(plan, STABLE, BODY, RIGHT, "req-1")
        runner.answered(plan, SHADOW, BODY, WRONG, "req-1")
    await drained(runner)
    assert tracer.provider is not None and tracer.provider.force_flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert request_span is not None
    for name in ("evaluate quality", "evaluate preferred"):
        span = spans[name]
        assert span.context.trace_id == request_span.get_span_context().trace_id
        assert span.parent is not None and span.parent.span_id == request_span.get_span_context().span_id
        assert span.attributes["inferstack.request_id"] == "req-1"
    (pair,) = spans["evaluate preferred"].events
    assert pair.name == "gen_ai.evaluation.result"
    assert pair.attributes["gen_ai.evaluation.score.label"] == "loss" and pair.attributes["gen_ai.evaluation.score.value"] == -1.0
    assert spans["evaluate preferred"].attributes["inferstack.revision"] == "rev-b"
    # Two rubric verdicts (stable and shadow answers) and one pairwise: three evaluate spans in all.
    assert len([s for s in exporter.get_finished_spans() if s.name.startswith("evaluate ")]) == 3
