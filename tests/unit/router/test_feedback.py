"""User feedback: signed response ids (pure) and POST /v1/feedback on the in-process router."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from inferstack.router.app import ROUTER
from inferstack.router.feedback import (
    HEADER,
    MAX_BODY_BYTES,
    MAX_ID_CHARS,
    InvalidId,
    SeenIds,
    Signer,
    load_keys,
    parse_value,
)
from inferstack.router.metrics import Labels
from inferstack.router.settings import RouterSettings

KEY = b"k" * 32
LABELS = Labels("team-a", "support", "rev-b", "candidate", "billing")
NOW = 1_750_000_000


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


# ------------------------------------------------------------------ signing


def test_an_id_verifies_to_the_labels_and_time_it_was_issued_with() -> None:
    signer = Signer([KEY])
    ref = signer.verify(signer.sign(LABELS, NOW) or "")
    assert ref.labels == LABELS and ref.issued == NOW
    assert ref.key == "team-a/support"


def test_ids_are_unique_per_answer_and_carry_no_content() -> None:
    signer = Signer([KEY])
    a, b = signer.sign(LABELS, NOW), signer.sign(LABELS, NOW)
    assert a and b and a != b  # a random nonce per answer
    payload = unb64(a)[:-32]
    assert b"support" in payload and b"billing" in payload  # readable labels, no secret, no prompt
    assert KEY not in unb64(a)


def test_the_mac_is_hmac_sha256_and_the_encoding_base64url() -> None:
    """The signer's MAC from precomputed pads, and its base64url, are the standard library's bytes."""
    import hmac
    import os
    import random

    from inferstack.router.feedback import _b64encode

    rng = random.Random(14)
    for size in (16, 32, 63, 64, 65, 100, 200):
        key = bytes(rng.getrandbits(8) for _ in range(size))
        signer = Signer([key])
        for length in (0, 1, 55, 56, 64, 72, 300):
            payload = os.urandom(length)
            assert signer._mac(key, payload) == hmac.digest(key, payload, "sha256")
            assert _b64encode(payload) == base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
        token = signer.sign(LABELS, NOW, nonce=b"n" * 8) or ""
        raw = unb64(token)
        assert raw[-32:] == hmac.digest(key, raw[:-32], "sha256") and b64(raw) == token
        assert signer.verify(token).nonce == b"n" * 8


def test_any_replica_with_the_same_key_verifies_and_no_other_does() -> None:
    token = Signer([KEY]).sign(LABELS, NOW) or ""
    assert Signer([KEY]).verify(token).labels == LABELS
    with pytest.raises(InvalidId) as err:
        Signer([b"x" * 32]).verify(token)
    assert err.value.reason == "bad_signature"
    with pytest.raises(InvalidId):
        Signer.ephemeral().verify(token)


def test_rotation_new_key_signs_old_key_still_verifies() -> None:
    old = Signer([KEY]).sign(LABELS, NOW) or ""
    rotated = Signer([b"n" * 32, KEY])
    assert rotated.verify(old).labels == LABELS
    new = rotated.sign(LABELS, NOW) or ""
    with pytest.raises(InvalidId):
        Signer([KEY]).verify(new)


@pytest.mark.parametrize("position", [0, 1, 5, 14, 20, -40, -1])
def test_any_flipped_byte_is_refused(position: int) -> None:
    signer = Signer([KEY])
    raw = bytearray(unb64(signer.sign(LABELS, NOW) or ""))
    raw[position] ^= 0x01
    with pytest.raises(InvalidId) as err:
        signer.verify(b64(bytes(raw)))
    assert err.value.reason == "bad_signature"


def test_a_relabelled_payload_with_the_old_mac_is_refused() -> None:
    signer = Signer([KEY])
    raw = unb64(signer.sign(LABELS, NOW) or "")
    forged = raw[:-32].replace(b"rev-b", b"rev-a") + raw[-32:]
    with pytest.raises(InvalidId, match="not signed"):
        signer.verify(b64(forged))


@pytest.mark.parametrize("cut", [1, 2, 10, 43, 60])
def test_truncated_ids_are_refused(cut: int) -> None:
    signer = Signer([KEY])
    token = signer.sign(LABELS, NOW) or ""
    with pytest.raises(InvalidId):
        signer.verify(token[:-cut])


@pytest.mark.parametrize(
    "token",
    ["", "a", "====", "not base64!", "é" * 10, "a" * (MAX_ID_CHARS + 1), "A" * 10_000_000, "AAAA" * 20, "+/+/" * 30],
    ids=lambda v: f"{v[:12]}..{len(v)}",
)
def test_garbage_and_huge_ids_are_malformed_or_unsigned(token: str) -> None:
    with pytest.raises(InvalidId) as err:
        Signer([KEY]).verify(token)
    assert err.value.reason in ("malformed_id", "bad_signature")


def test_non_string_ids_are_malformed() -> None:
    for token in (None, 5, ["x"], {"a": 1}):
        with pytest.raises(InvalidId):
            Signer([KEY]).verify(token)  # type: ignore[arg-type]


def test_the_longest_id_fits_the_bound_and_longer_labels_get_no_id() -> None:
    signer = Signer([KEY])
    longest = Labels("n" * 255, "s" * 255, "r" * 255, "stable", "x" * 255)
    token = signer.sign(longest, NOW) or ""
    assert len(token) <= MAX_ID_CHARS and signer.verify(token).labels == longest
    assert signer.sign(Labels("n" * 256, "s", "r", "stable", "x"), NOW) is None
    assert signer.sign(Labels("n", "s", "r", "shadow", "x"), NOW) is None  # shadow answers are never seen by users


def test_a_well_signed_payload_of_another_format_is_malformed() -> None:
    import hashlib
    import hmac

    for payload in (b"\x02" + b"\0" * 40, b"\x01" + b"\0" * 13 + b"\x05ab"):
        token = b64(payload + hmac.new(KEY, payload, hashlib.sha256).digest())
        with pytest.raises(InvalidId) as err:
            Signer([KEY]).verify(token)
        assert err.value.reason == "malformed_id"


def test_keys_from_a_file_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("# rotated 2025-06\n" + "a" * 32 + "\n\n" + "b" * 20 + "\n")
    assert load_keys(str(path)) == (b"a" * 32, b"b" * 20)
    assert load_keys(None, "c" * 16) == (b"c" * 16,)
    assert load_keys(None, None) == ()
    with pytest.raises(ValueError, match="shorter"):
        load_keys(None, "short")
    path.write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="no key"):
        load_keys(str(path))


@pytest.mark.parametrize(
    ("value", "score"),
    [(True, 1.0), (False, 0.0), (1, 1.0), (0, 0.0), (0.25, 0.25), ("up", 1.0), ("DOWN", 0.0),
     (1.5, None), (-0.1, None), (float("nan"), None), (float("inf"), None), ("yes", None), (None, None), ([1], None)],
)  # fmt: skip
def test_values(value: object, score: float | None) -> None:
    assert parse_value(value) == score


def test_seen_ids_are_bounded() -> None:
    seen = SeenIds(limit=3)
    for i in range(10):
        seen.add(bytes([i]))
    assert len(seen) == 3 and bytes([9]) in seen and bytes([0]) not in seen


# ----------------------------------------------------------- the endpoint

FEEDBACK = [{"name": "thumbs", "feedback": {"maxAge": "1h"}}]


def settings(**kw: object) -> RouterSettings:
    return RouterSettings(upstream_timeout=5, feedback_keys=(KEY,), **kw)  # type: ignore[arg-type]


def plan_with(make_plan, evaluators=FEEDBACK, **fields):  # type: ignore[no-untyped-def]
    return make_plan(evaluation={"slices": ["billing", "general"], "sliceHeader": "x-inferstack-slice", "evaluators": evaluators}, **fields)


async def answer(client, **headers: str):  # type: ignore[no-untyped-def]
    resp = await client.post(
        "/v1/chat/completions", json={"model": "support", "messages": [{"role": "user", "content": "Where is my parcel?"}]},
        headers={"x-inferstack-slice": "billing", **headers},
    )  # fmt: skip
    assert resp.status == 200
    return resp


def sample(client, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return client.server.app[ROUTER].metrics.registry.get_sample_value(name, labels) or 0.0


async def test_feedback_is_recorded_under_the_labels_of_the_answer(router_client, make_plan) -> None:
    client = await router_client(plan_with(make_plan, candidateWeight=100), settings=settings())
    resp = await answer(client, **{"x-user-id": "u1"})
    token = resp.headers[HEADER]
    assert resp.headers["x-inferstack-role"] == "candidate"
    fb = await client.post("/v1/feedback", json={"response_id": token, "value": "down"})
    assert fb.status == 200 and await fb.json() == {"status": "recorded", "evaluator": "thumbs"}
    labels = {"namespace": "team-a", "stack": "support", "revision": "rev-b", "role": "candidate", "slice": "billing", "evaluator": "thumbs"}
    assert sample(client, "inferstack_eval_samples_total", **labels) == 1
    assert sample(client, "inferstack_eval_score_sum_total", **labels) == 0
    assert sample(client, "inferstack_router_feedback_recorded_total", namespace="team-a", stack="support", evaluator="thumbs") == 1
    # one feedback per answer per replica
    again = await client.post("/v1/feedback", json={"response_id": token, "value": True})
    assert again.status == 409 and (await again.json())["error"]["code"] == "duplicate_feedback"
    assert sample(client, "inferstack_eval_samples_total", **labels) == 1
    assert sample(client, "inferstack_router_feedback_refused_total", reason="duplicate") == 1


async def test_cache_hits_and_streams_carry_an_id_too(router_client, make_plan) -> None:
    client = await router_client(plan_with(make_plan, candidate=False, responseCache={"enabled": True}), settings=settings())
    body = {"model": "support", "messages": [{"role": "user", "content": "Who are you?"}], "temperature": 0}
    first = await client.post("/v1/chat/completions", json=body)
    hit = await client.post("/v1/chat/completions", json=body)
    assert hit.headers["x-inferstack-cache"] == "hit"
    assert first.headers[HEADER] != hit.headers[HEADER]  # each answer served is its own
    stream = await client.post("/v1/chat/completions", json={**body, "stream": True})
    await stream.read()
    for token in (first.headers[HEADER], hit.headers[HEADER], stream.headers[HEADER]):
        assert (await client.post("/v1/feedback", json={"response_id": token, "value": 1})).status == 200


async def test_another_replica_with_the_same_key_records_it(router_client, make_plan) -> None:
    plan = plan_with(make_plan, candidate=False)
    one = await router_client(plan, settings=settings())
    two = await router_client(plan, settings=settings())
    token = (await answer(one)).headers[HEADER]
    assert (await two.post("/v1/feedback", json={"response_id": token, "value": 0.5})).status == 200
    other = await router_client(plan, settings=RouterSettings(upstream_timeout=5, feedback_keys=(b"z" * 32,)))
    refused = await other.post("/v1/feedback", json={"response_id": token, "value": 0.5})
    assert refused.status == 400 and (await refused.json())["error"]["code"] == "invalid_response_id"


async def test_without_a_key_only_the_serving_replica_accepts(router_client, make_plan, caplog) -> None:
    plan = plan_with(make_plan, candidate=False)
    one = await router_client(plan, settings=RouterSettings(upstream_timeout=5))
    two = await router_client(plan, settings=RouterSettings(upstream_timeout=5))
    assert "only accepts ids issued by this replica" in caplog.text
    token = (await answer(one)).headers[HEADER]
    assert (await two.post("/v1/feedback", json={"response_id": token, "value": 1})).status == 400
    assert (await one.post("/v1/feedback", json={"response_id": token, "value": 1})).status == 200


async def test_several_feedback_evaluators_need_a_name(router_client, make_plan) -> None:
    evaluators = [*FEEDBACK, {"name": "accurate", "feedback": {}}, {"name": "no-refusal", "rule": {"refusal": {}}}]
    client = await router_client(plan_with(make_plan, evaluators, candidate=False), settings=settings())
    token = (await answer(client)).headers[HEADER]
    for body, status, code in [
        ({"response_id": token, "value": 1}, 400, "unknown_evaluator"),
        ({"response_id": token, "value": 1, "evaluator": "no-refusal"}, 400, "unknown_evaluator"),
        ({"response_id": token, "value": 1, "evaluator": "nope"}, 400, "unknown_evaluator"),
    ]:
        resp = await client.post("/v1/feedback", json=body)
        assert resp.status == status and (await resp.json())["error"]["code"] == code
    assert (await client.post("/v1/feedback", json={"response_id": token, "value": 1, "evaluator": "accurate"})).status == 200
    # one per evaluator: the other evaluator may still be given
    assert (await client.post("/v1/feedback", json={"response_id": token, "value": 0, "evaluator": "thumbs"})).status == 200


async def test_expired_ids_use_the_evaluators_max_age(router_client, make_plan) -> None:
    client = await router_client(plan_with(make_plan, candidate=False), settings=settings())
    old = Signer([KEY]).sign(Labels("team-a", "support", "rev-a", "stable", "billing"), time.time() - 3601)
    resp = await client.post("/v1/feedback", json={"response_id": old, "value": 1})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "response_id_expired"
    future = Signer([KEY]).sign(Labels("team-a", "support", "rev-a", "stable", "billing"), time.time() + 3600)
    assert (await client.post("/v1/feedback", json={"response_id": future, "value": 1})).status == 400


async def test_a_retired_revision_still_counts_but_a_removed_stack_does_not(router_client, make_plan) -> None:
    client = await router_client(plan_with(make_plan, candidate=False), settings=settings())
    signer = Signer([KEY])
    retired = signer.sign(Labels("team-a", "support", "rev-old", "candidate", "general"))
    assert (await client.post("/v1/feedback", json={"response_id": retired, "value": 0})).status == 200
    gone = signer.sign(Labels("team-b", "support", "rev-a", "stable", "general"))
    resp = await client.post("/v1/feedback", json={"response_id": gone, "value": 0})
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"


async def test_a_stack_without_a_feedback_evaluator(router_client, make_plan) -> None:
    client = await router_client(plan_with(make_plan, [{"name": "no-refusal", "rule": {"refusal": {}}}], candidate=False),
                                 settings=settings())  # fmt: skip
    token = (await answer(client)).headers[HEADER]
    resp = await client.post("/v1/feedback", json={"response_id": token, "value": 1})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "feedback_not_enabled"


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'"x"', 400, "invalid_json"),
        (b"[" * 8_000 + b"]" * 8_000, 400, "invalid_json"),
        (b'{"value": 1}', 400, "invalid_request"),
        (b'{"response_id": "x"}', 400, "invalid_request"),
        (b'{"response_id": "x", "value": 1, "comment": "meh"}', 400, "invalid_request"),
        (b'{"response_id": "x", "value": 1, "evaluator": 5}', 400, "invalid_request"),
        (b'{"response_id": 5, "value": 1}', 400, "invalid_response_id"),
        (b'{"response_id": "AAAA", "value": 1}', 400, "invalid_response_id"),
        (json.dumps({"response_id": "A" * 5000, "value": 1}).encode(), 400, "invalid_response_id"),
        (b" " * (MAX_BODY_BYTES + 1), 413, "request_too_large"),
    ],
    ids=lambda v: v[:24].decode(errors="replace") if isinstance(v, bytes) else str(v),
)
async def test_hostile_bodies_get_a_4xx(router_client, make_plan, data: bytes, status: int, code: str) -> None:
    client = await router_client(plan_with(make_plan, candidate=False), settings=settings())
    resp = await client.post("/v1/feedback", data=data, headers={"content-type": "application/json"})
    assert resp.status == status
    err = (await resp.json())["error"]
    assert err["code"] == code and err["type"] == "invalid_request_error" and err["message"]


async def test_a_bad_value_does_not_use_up_the_id(router_client, make_plan) -> None:
    client = await router_client(plan_with(make_plan, candidate=False), settings=settings())
    token = (await answer(client)).headers[HEADER]
    for value in (2, -1, "maybe", None, [1], {"v": 1}):
        resp = await client.post("/v1/feedback", json={"response_id": token, "value": value})
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_value"
    assert (await client.post("/v1/feedback", json={"response_id": token, "value": 1})).status == 200
    assert sample(client, "inferstack_router_feedback_refused_total", reason="invalid_value") == 6


async def test_a_chunked_body_larger_than_the_bound_is_refused(router_client, make_plan) -> None:
    client = await router_client(plan_with(make_plan, candidate=False), settings=settings())

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(100):
            yield b" " * 4096

    resp = await client.post("/v1/feedback", data=chunks(), headers={"content-type": "application/json"})
    assert resp.status == 413


def test_the_command_line_reads_the_key_file_else_the_environment(tmp_path: Path, monkeypatch) -> None:
    from inferstack.router.main import parse_args, settings_from

    path = tmp_path / "key"
    path.write_text("a" * 32 + "\n")
    monkeypatch.setenv("INFERSTACK_FEEDBACK_KEY", "e" * 32)
    assert settings_from(parse_args(["--feedback-key-file", str(path)])).feedback_keys == (b"a" * 32,)
    settings_ = settings_from(parse_args([]))
    assert settings_.feedback_keys == (b"e" * 32,) and "eeee" not in repr(settings_)  # never logged with the settings
    monkeypatch.delenv("INFERSTACK_FEEDBACK_KEY")
    assert settings_from(parse_args([])).feedback_keys == ()
