"""The judge stand-in: the router's own judge prompts in, its own parsers on the replies."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from inferstack.core.judging import (
    documents_text,
    pair_outcome,
    pairwise_messages,
    parse_choice,
    parse_rating,
    reply_text,
    request_body,
    rubric_messages,
)
from inferstack.core.retrieval import Document
from inferstack.standin import fixtures
from inferstack.standin.app import RECEIVED, StandinSettings, build_app

CRITERIA = "Correct, helpful and polite answers to support questions."
QUESTION = "How do I get a refund?"
BODY = {"model": "support", "messages": [{"role": "user", "content": QUESTION}]}
RIGHT = fixtures.answer("You are helpful.", QUESTION)
WRONG = fixtures.answer("You are helpful. Always quote the 2019 refund policy.", QUESTION)


def judge_app(**kw: Any):
    return build_app(StandinSettings(served_model="judge", judge=True, **kw))


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(judge_app())) as c:
        yield c


@pytest.fixture
async def biased() -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(judge_app(judge_position_bias=True))) as c:
        yield c


async def ask(client: TestClient, messages: list[dict[str, str]], **headers: str) -> str:
    resp = await client.post("/v1/chat/completions", json=request_body("judge", messages), headers=headers)
    assert resp.status == 200, await resp.text()
    return reply_text(await resp.json())


async def rate(client: TestClient, answer: str, body: dict[str, Any] = BODY) -> float:
    return parse_rating(await ask(client, rubric_messages(CRITERIA, body, answer)))


async def outcome(client: TestClient, stable: str, candidate: str) -> float:
    """The router's pairwise judging: both orders, then the swap-surviving outcome for the candidate."""
    stable_first = parse_choice(await ask(client, pairwise_messages(CRITERIA, BODY, stable, candidate)))
    candidate_first = parse_choice(await ask(client, pairwise_messages(CRITERIA, BODY, candidate, stable)))
    return pair_outcome(stable_first, candidate_first)


def test_the_wrong_answer_is_fluent_not_a_refusal() -> None:
    assert WRONG != RIGHT
    assert WRONG != fixtures.REFUSAL


async def test_rubric_rates_right_wrong_and_unknown(client: TestClient) -> None:
    assert await rate(client, RIGHT) == pytest.approx((9 - 1) / 9)
    assert await rate(client, "  open orders, pick the order and press REQUEST REFUND: it takes 5 days  ") == pytest.approx(8 / 9)
    assert await rate(client, WRONG) == pytest.approx((2 - 1) / 9)
    unknown = {"messages": [{"role": "user", "content": "What is the meaning of life?"}]}
    assert await rate(client, "42.", unknown) == pytest.approx((6 - 1) / 9)


async def test_rubric_reads_the_last_user_turn_and_json_answers(client: TestClient) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Client system prompt."},
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "I am the support assistant of Example Shop.\nAsk me anything."},
            {"role": "user", "content": QUESTION},
        ],
        "response_format": {"type": "json_object"},
    }
    assert await rate(client, json.dumps({"answer": RIGHT}), body) == pytest.approx(8 / 9)
    assert await rate(client, json.dumps({"answer": WRONG}), body) == pytest.approx(1 / 9)


@pytest.mark.parametrize(
    ("stable", "candidate", "verdicts", "expected"),
    [
        pytest.param(RIGHT, WRONG, ("A", "B"), -1.0, id="candidate-wrong-loses-in-both-orders"),
        pytest.param(WRONG, RIGHT, ("B", "A"), 1.0, id="candidate-right-wins-in-both-orders"),
        pytest.param(RIGHT, RIGHT, ("C", "C"), 0.0, id="equal-is-a-tie"),
        pytest.param(WRONG, "Something else entirely wrong.", ("C", "C"), 0.0, id="both-wrong-is-a-tie"),
    ],
)
async def test_pairwise_prefers_the_right_answer_in_both_orders(
    client: TestClient, stable: str, candidate: str, verdicts: tuple[str, str], expected: float
) -> None:
    first = parse_choice(await ask(client, pairwise_messages(CRITERIA, BODY, stable, candidate)))
    second = parse_choice(await ask(client, pairwise_messages(CRITERIA, BODY, candidate, stable)))
    assert (first, second) == verdicts
    assert await outcome(client, stable, candidate) == expected


async def test_position_bias_is_undone_by_the_swap(biased: TestClient) -> None:
    assert parse_choice(await ask(biased, pairwise_messages(CRITERIA, BODY, RIGHT, RIGHT))) == "A"
    assert await outcome(biased, RIGHT, RIGHT) == 0.0  # [[A]] in both orders: a tie, not a win
    # A real difference still survives the swap.
    assert await outcome(biased, RIGHT, WRONG) == -1.0
    assert await outcome(biased, WRONG, RIGHT) == 1.0


async def test_retrieved_documents_in_the_prompt_leave_the_verdicts_as_they_were(client: TestClient) -> None:
    """A groundedness prompt (core/judging.py with documents) is still a judge prompt; the stand-in judges the answer."""
    docs = documents_text([Document("kb-1", "Refunds take 5 days. user: Why was I charged twice?", 0.9)])
    rating = parse_rating(await ask(client, rubric_messages(CRITERIA, BODY, WRONG, docs)))
    assert rating == pytest.approx(1 / 9)
    reply = await ask(client, pairwise_messages(CRITERIA, BODY, RIGHT, WRONG, docs, ""))
    assert parse_choice(reply) == "A" and "kb-1" not in reply and "Refunds take" not in reply


async def test_a_non_judge_prompt_is_refused_without_echo(client: TestClient) -> None:
    secret = "my card number is 4111 1111 1111 1111"
    for messages in (
        [{"role": "user", "content": f"How do I get a refund? {secret}"}],
        [{"role": "user", "content": f"[The Start of Conversation]\n{secret}\n[The End of Conversation]"}],
    ):
        resp = await client.post("/v1/chat/completions", json=request_body("judge", messages))
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["type"] == "BadRequestError"
        assert "4111" not in error["message"]
    # Criteria and Conversation but no answer to judge.
    half = rubric_messages(CRITERIA, BODY, RIGHT)
    half[1]["content"] = half[1]["content"].split("\n\n[The Start of Answer]")[0]
    resp = await client.post("/v1/chat/completions", json=request_body("judge", half))
    assert resp.status == 400


async def test_the_reply_quotes_nothing_from_the_prompt(client: TestClient) -> None:
    secret_body = {"messages": [{"role": "user", "content": "Tell me the vault code 739215."}]}
    reply = await ask(client, rubric_messages("Secret criteria 5521.", secret_body, "The code is 739215."))
    assert "739215" not in reply and "5521" not in reply and "vault" not in reply


async def test_api_key_fail_rate_and_received() -> None:
    messages = rubric_messages(CRITERIA, BODY, RIGHT)
    async with TestClient(TestServer(judge_app(api_key="s3cret"))) as c:
        resp = await c.post("/v1/chat/completions", json=request_body("judge", messages))
        assert resp.status == 401
        assert parse_rating(await ask(c, messages, Authorization="Bearer s3cret")) == pytest.approx(8 / 9)
        assert len(c.app[RECEIVED]) == 1  # the judge calls that got past the API key
        assert (await c.get("/v1/models")).status == 200
    async with TestClient(TestServer(judge_app(fail_rate=1.0))) as c:
        resp = await c.post("/v1/chat/completions", json=request_body("judge", messages))
        assert resp.status == 500
    async with TestClient(TestServer(judge_app())) as c:
        resp = await c.post("/v1/chat/completions", json=request_body("other", messages))
        assert resp.status == 404


def test_the_cli_serves_a_judge_on_loopback(unused_tcp_port: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferstack.standin", "--judge", "--judge-position-bias",
         "--port", str(unused_tcp_port), "--served-model", "judge"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        deadline = time.monotonic() + 8
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "the judge stand-in did not start"
                time.sleep(0.05)
        data = json.dumps(request_body("judge", pairwise_messages(CRITERIA, BODY, RIGHT, RIGHT))).encode()
        req = urllib.request.Request(f"{base}/v1/chat/completions", data, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert parse_choice(reply_text(json.loads(r.read()))) == "A"
    finally:
        proc.terminate()
        proc.wait(timeout=5)
