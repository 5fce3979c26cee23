"""router/requests.py: which bodies are forwarded, and the exact refusal of every other one."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferstack.router.requests import Limits, RequestError, parse_body, validate
from inferstack.router.settings import RouterSettings

LIMITS = Limits(max_output_tokens=4096)
USER = {"role": "user", "content": "Where is my parcel?"}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "support", "messages": [USER], **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "support", "prompt": "Once upon a time", **fields}


ACCEPTED_CHAT = [
    chat(),
    chat(messages=[{"role": "system", "content": "Be brief."}, USER]),
    chat(messages=[{"role": "developer", "content": "Be brief."}, USER]),
    chat(messages=[USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                                  "function": {"name": "f", "arguments": "{}"}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": "42"}]),
    chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                {"type": "image_url", "image_url": {"url": "data:,"}}]}]),
    chat(messages=[{"role": "user", "content": "hi", "name": "ann"}]),
    chat(messages=[{"role": "function", "name": "f", "content": "{}"}]),
    chat(max_tokens=1, max_completion_tokens=4096, n=2, temperature=0, top_p=1, stream=True,
         stream_options={"include_usage": True}, stop=["\n", "END"], seed=-7, user="u-1",
         presence_penalty=-2, frequency_penalty=2.0, logprobs=True, top_logprobs=3, parallel_tool_calls=False),
    chat(stop="END", tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="auto",
         response_format={"type": "json_object"}, logit_bias={"50256": -100}),
    chat(tool_choice={"type": "function", "function": {"name": "f"}}),
    chat(max_tokens=None, temperature=None, stop=None, tools=None, user=None),  # null is "not set"
    chat(guided_json={"type": "object"}, top_k=5, repetition_penalty=1.1, chat_template_kwargs={"x": 1}),  # vLLM's own
    chat(model="team-a/support"),
]

ACCEPTED_COMPLETIONS = [
    completion(),
    completion(prompt=["a", "b"]),
    completion(prompt=[1, 2, 3]),
    completion(prompt=[[1, 2], [3]]),
    completion(logprobs=5, echo=True, best_of=2, suffix="!", max_tokens=16),
]


@pytest.mark.parametrize("body", ACCEPTED_CHAT)
def test_chat_bodies_that_are_forwarded(body: dict[str, Any]) -> None:
    validate(body, LIMITS, chat=True)


@pytest.mark.parametrize("body", ACCEPTED_COMPLETIONS)
def test_completion_bodies_that_are_forwarded(body: dict[str, Any]) -> None:
    validate(body, LIMITS, chat=False)


REFUSED_CHAT = [
    ({"messages": [USER]}, "model", "missing_model"),
    (chat(model=42), "model", "invalid_type"),
    (chat(model=""), "model", "missing_model"),
    (chat(model="x" * 513), "model", "missing_model"),
    ({"model": "support"}, "messages", "missing_required_parameter"),  # never silently fixed
    (chat(messages=None), "messages", "missing_required_parameter"),
    (chat(messages="hello"), "messages", "invalid_type"),
    (chat(messages=42), "messages", "invalid_type"),
    (chat(messages={"role": "user"}), "messages", "invalid_type"),
    (chat(messages=[]), "messages", "invalid_value"),
    (chat(messages=[USER] * 4097), "messages", "invalid_value"),
    (chat(messages=["hello"]), "messages[0]", "invalid_type"),
    (chat(messages=[USER, {"content": "hi"}]), "messages[1].role", "invalid_type"),
    (chat(messages=[{"role": "root", "content": "hi"}]), "messages[0].role", "invalid_value"),
    (chat(messages=[{"role": 1, "content": "hi"}]), "messages[0].role", "invalid_type"),
    (chat(messages=[USER, {"role": ["user"], "content": "hi"}]), "messages[1].role", "invalid_type"),  # unhashable
    (chat(messages=[USER, {"role": {"r": 1}, "content": "hi"}]), "messages[1].role", "invalid_type"),
    (chat(messages=[USER, {"role": "assistant", "content": "hi", "tool_calls": [1]}]), "messages[1].tool_calls[0]", "invalid_type"),
    (chat(messages=[USER, {"role": "user", "content": "hi", "name": ["n"]}]), "messages[1].name", "invalid_type"),
    (chat(messages=[{"role": "user"}]), "messages[0].content", "missing_required_parameter"),
    (chat(messages=[{"role": "user", "content": None}]), "messages[0].content", "missing_required_parameter"),
    (chat(messages=[{"role": "assistant", "content": None}]), "messages[0].content", "missing_required_parameter"),
    (chat(messages=[{"role": "user", "content": 42}]), "messages[0].content", "invalid_type"),
    (chat(messages=[{"role": "user", "content": {"text": "hi"}}]), "messages[0].content", "invalid_type"),
    (chat(messages=[{"role": "user", "content": ["hi"]}]), "messages[0].content[0]", "invalid_type"),
    (chat(messages=[{"role": "user", "content": [{"text": "hi"}]}]), "messages[0].content[0].type", "invalid_type"),
    (chat(messages=[{"role": "user", "content": "hi", "name": 3}]), "messages[0].name", "invalid_type"),
    (chat(messages=[{"role": "tool", "content": "x", "tool_call_id": 3}]), "messages[0].tool_call_id", "invalid_type"),
    (chat(messages=[{"role": "assistant", "content": None, "tool_calls": "f"}]), "messages[0].tool_calls", "invalid_type"),
    (chat(max_tokens=0), "max_tokens", "invalid_value"),
    (chat(max_tokens=-1), "max_tokens", "invalid_value"),
    (chat(max_tokens=4097), "max_tokens", "invalid_value"),  # over the configured ceiling
    (chat(max_tokens="10"), "max_tokens", "invalid_type"),
    (chat(max_tokens=1.5), "max_tokens", "invalid_type"),
    (chat(max_tokens=True), "max_tokens", "invalid_type"),
    (chat(max_completion_tokens=10**30), "max_completion_tokens", "invalid_value"),
    (chat(n=0), "n", "invalid_value"),
    (chat(n=129), "n", "invalid_value"),
    (chat(temperature="hot"), "temperature", "invalid_type"),
    (chat(temperature=2.5), "temperature", "invalid_value"),
    (chat(temperature=-0.1), "temperature", "invalid_value"),
    (chat(top_p=1.5), "top_p", "invalid_value"),
    (chat(presence_penalty=3), "presence_penalty", "invalid_value"),
    (chat(stream="yes"), "stream", "invalid_type"),
    (chat(stream=1), "stream", "invalid_type"),
    (chat(stream_options=True), "stream_options", "invalid_type"),
    (chat(stop=5), "stop", "invalid_type"),
    (chat(stop=["a", 5]), "stop[1]", "invalid_type"),
    (chat(stop=["a"] * 65), "stop", "invalid_value"),
    (chat(tools={"type": "function"}), "tools", "invalid_type"),
    (chat(tools=["f"]), "tools[0]", "invalid_type"),
    (chat(tool_choice=3), "tool_choice", "invalid_type"),
    (chat(response_format="json"), "response_format", "invalid_type"),
    (chat(seed="7"), "seed", "invalid_type"),
    (chat(seed=1.0), "seed", "invalid_type"),
    (chat(user=7), "user", "invalid_type"),
    (chat(logprobs=3), "logprobs", "invalid_type"),
    (chat(top_logprobs=21), "top_logprobs", "invalid_value"),
    (chat(logit_bias=[1]), "logit_bias", "invalid_type"),
]

REFUSED_COMPLETIONS = [
    ({"model": "support"}, "prompt", "missing_required_parameter"),
    (completion(prompt=42), "prompt", "invalid_type"),
    (completion(prompt={"text": "x"}), "prompt", "invalid_type"),
    (completion(prompt=[]), "prompt", "invalid_value"),
    (completion(prompt=[-1]), "prompt[0]", "invalid_value"),
    (completion(prompt=[1.5]), "prompt[0]", "invalid_type"),
    (completion(prompt=[[1, "a"]]), "prompt[0]", "invalid_type"),
    (completion(prompt=[None]), "prompt[0]", "invalid_type"),
    (completion(logprobs=True), "logprobs", "invalid_type"),
    (completion(logprobs=21), "logprobs", "invalid_value"),
    (completion(echo="no"), "echo", "invalid_type"),
]


@pytest.mark.parametrize(("body", "param", "code"), REFUSED_CHAT)
def test_chat_refusals_name_the_field(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(RequestError) as info:
        validate(body, LIMITS, chat=True)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)


@pytest.mark.parametrize(("body", "param", "code"), REFUSED_COMPLETIONS)
def test_completion_refusals_name_the_field(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(RequestError) as info:
        validate(body, LIMITS, chat=False)
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"\xff\xfe{", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"hello"', "invalid_json"),
        (b"null", "invalid_json"),
        (b'{"model": "m", "temperature": NaN}', "invalid_json"),
        (b'{"model": "m", "temperature": Infinity}', "invalid_json"),
        (b'{"x": ' + b"1" * 5000 + b"}", "invalid_json"),  # past Python's int digits limit
        (b'{"x": ' + b"[" * 64 + b"]" * 64 + b"}", "too_deep"),  # 65 levels
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),  # would be a RecursionError
        (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "too_deep"),
    ],
)
def test_unparseable_and_deep_bodies(data: bytes, code: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_body(data, 64)
    assert (info.value.status, info.value.param, info.value.code) == (400, None, code)


def test_nesting_up_to_the_limit_is_accepted_and_brackets_in_strings_do_not_count() -> None:
    body = parse_body(b'{"x": ' + b"[" * 63 + b"]" * 63 + b"}", 64)  # 64 levels
    assert isinstance(body["x"], list)
    text = json.dumps({"model": "m", "messages": [{"role": "user", "content": "[[[[{{{{" * 1000}]}).encode()
    assert parse_body(text, 64)["model"] == "m"


# Bodies on which orjson (parse_body's shortcut) and json could disagree: each is parsed, or refused, as json does it.
TRICKY_BODIES = [
    b'{"a": 1e400, "b": -1e400, "c": 1.7976931348623159e308}',  # json: inf (orjson refuses)
    b'{"a": -0, "b": -0.0, "c": 1E2, "d": 0.1e-400, "e": 5e-324, "f": 2.2250738585072011e-308}',
    b'{"a": 18446744073709551615, "b": -9223372036854775808}',  # the 64-bit ends: ints in both
    b'{"seed": 18446744073709551616}',  # past 64 bits: orjson would make it a float
    b'{"seed": -9223372036854775809}',
    b'{"a": 100000000000000000000000, "b": [1, 2, 12345678901234567890123]}',
    b'{"a": 123456789012345678901234567890.5}',
    b'{"model": "m", "user": "1234567890123456789012"}',  # a digit run in a string: json decides, alike
    b'{"a": "\\ud800", "b": "\\uDFFF\\uD800", "c": "\\ud83d\\ude00"}',  # lone surrogates: json keeps them
    b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate (json: surrogatepass)
    b'\xef\xbb\xbf{"a": 1}',  # a UTF-8 BOM
    '{"a": "\u00e9"}'.encode("utf-16"), '{"a": "\u00e9"}'.encode("utf-32-le"), '{"a": 1}'.encode("utf-16-be"),
    b'{"a": 1, "a": 2}', b'{"a": "\x7f", "b": "\\u0000"}', b' \t{"a": []}\r\n ', b'{"a": "\xc3\xa9", "\\u00e9": 1}',
    b'{"a": true, "b": false, "c": null, "d": {}, "e": [[], {}]}',
    b'{"a": 0.30000000000000004, "b": 1.5E+3, "c": 1e-5, "d": 9.2e18, "e": -9.3e18}',
    b'{"x": ' + b"[" * 1100 + b"]" * 1100 + b"}",  # past orjson's nesting limit
]


def _json_outcome(data: bytes, max_depth: int = 64) -> tuple[str, Any]:
    """What parse_body gave before orjson: json.loads (NaN and Infinity refused), then the depth check."""
    from inferstack.router import requests as module

    try:
        body = module._parse_json(data)
    except RecursionError:
        return "refused", "too_deep"
    except ValueError:
        return "refused", "invalid_json"
    if not isinstance(body, dict):
        return "refused", "invalid_json"
    if module._deeper_than(body, max_depth):
        return "refused", "too_deep"
    return "parsed", body


def _outcome(data: bytes, max_depth: int = 64) -> tuple[str, Any]:
    try:
        return "parsed", parse_body(data, max_depth)
    except RequestError as err:
        return "refused", err.code


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 == 1.0, but an int must stay an int)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return repr(a) == repr(b)  # floats: -0.0 and nan-free bit equality


@pytest.mark.parametrize("data", TRICKY_BODIES)
def test_orjson_shortcut_gives_what_json_gives(data: bytes) -> None:
    expected, got = _json_outcome(data), _outcome(data)
    assert got[0] == expected[0] and _same(got[1], expected[1]), (got, expected)


def test_integers_past_64_bits_stay_integers() -> None:
    body = parse_body(b'{"model": "m", "seed": 18446744073709551616, "x": [-9223372036854775809]}', 64)
    assert body["seed"] == 2**64 and type(body["seed"]) is int
    assert body["x"] == [-(2**63) - 1] and type(body["x"][0]) is int


def test_orjson_shortcut_on_random_numbers() -> None:
    import random

    rng = random.Random(14)
    for _ in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 24))).lstrip("0") or "0"
        number = rng.choice(["", "-"]) + digits
        if rng.random() < 0.5:
            number += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 20)))
        if rng.random() < 0.4:
            number += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.randint(0, 330))
        data = b'{"n": [' + number.encode() + b"]}"
        expected, got = _json_outcome(data), _outcome(data)
        assert got[0] == expected[0] and _same(got[1], expected[1]), (number, got, expected)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**70), max_value=2**70) | st.text(st.characters(blacklist_categories=()), max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=24,
)


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.text(max_size=6), _JSON_VALUES, max_size=5), ascii_only=st.booleans())
def test_any_json_body_is_read_as_json_reads_it(body: dict[str, Any], ascii_only: bool) -> None:
    try:
        data = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    except ValueError:
        return
    expected, got = _json_outcome(data), _outcome(data)
    assert got[0] == expected[0] and _same(got[1], expected[1]), (data, got, expected)


def test_deep_bodies_under_a_high_depth_limit_are_json_s() -> None:
    # A limit near Python's recursion limit: json's RecursionError decides, as before orjson.
    data = b'{"x": ' + b"[" * 990 + b"]" * 990 + b"}"
    assert _outcome(data, 2000) == ("refused", "too_deep")


def test_limits_follow_the_settings() -> None:
    settings = RouterSettings()
    assert (settings.max_json_depth, settings.max_request_bytes) == (64, 8 * 1024 * 1024)
    assert Limits().max_output_tokens == settings.max_output_tokens


# ------------------------------------------------------------- through the router


async def test_router_refuses_before_forwarding(make_plan, router_client, stable_server) -> None:
    from inferstack.standin.app import RECEIVED

    client = await router_client(make_plan(candidate=False))
    received = stable_server.app[RECEIVED]
    for body in ({"model": "support"}, {"model": "support", "messages": "hello"}, {"model": "support", "messages": 42}):
        resp = await client.post("/v1/chat/completions", json=body)
        assert resp.status == 400, body
        error = (await resp.json())["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "messages", error
    resp = await client.post("/v1/chat/completions", data=b'{"model": "support", "messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}")
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "too_deep"
    assert len(received) == 0  # nothing reached the model server
    resp = await client.post("/v1/chat/completions", json={"model": "support", "messages": [USER]})
    assert resp.status == 200 and len(received) == 1


async def test_router_body_limit_is_a_json_413(make_plan, router_client) -> None:
    client = await router_client(make_plan(candidate=False), settings=RouterSettings(upstream_timeout=5, max_request_bytes=1024))
    resp = await client.post("/v1/chat/completions", json={"model": "support", "messages": [{"role": "user", "content": "x" * 2000}]})
    assert resp.status == 413
    assert (await resp.json())["error"] == {
        "message": "the request body is larger than 1024 bytes", "type": "invalid_request_error",
        "code": "request_too_large", "param": None,
    }

    async def chunks():  # no Content-Length: the bound holds while reading
        for _ in range(10):
            yield b" " * 200

    resp = await client.post("/v1/chat/completions", data=chunks())
    assert resp.status == 413 and (await resp.json())["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_match_its_content_encoding_is_a_json_400(
    make_plan, router_client, encoding, caplog
) -> None:
    """Found by the fuzz test: aiohttp's decoding error surfaced from the body read as the middleware's 500."""
    import gzip
    import zlib

    client = await router_client(make_plan(candidate=False))
    body = json.dumps({"model": "support", "messages": [USER]}).encode()
    resp = await client.post("/v1/chat/completions", data=body, headers={"Content-Encoding": encoding})
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"]["code"] == "invalid_body"
    assert resp.headers["Connection"] == "close"  # the parser cannot go on after such a body
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    resp = await client.post("/v1/chat/completions", data=packed, headers={"Content-Encoding": encoding})
    assert resp.status == 200, await resp.text()  # a body that does match its encoding is read as before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text  # nothing "unhandled"


async def test_unknown_paths_and_methods_are_json_too(make_plan, router_client) -> None:
    client = await router_client(make_plan(candidate=False))
    resp = await client.post("/v1/embeddings", json={})
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "invalid_request_error"
    resp = await client.get("/v1/chat/completions")
    assert resp.status == 405 and "POST" in resp.headers["Allow"]
    assert "error" in await resp.json()


async def _raw(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send bytes no HTTP client library would, and read the answer to the end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_requests_aiohttp_refuses_never_log_the_header_lines_they_quote(make_plan, router_client, caplog) -> None:
    """aiohttp logged a refused header line at ERROR, traceback and all: an Authorization line is an API key."""
    caplog.set_level(logging.INFO)
    marker = "isk_MARKER-4f1d2a9c-never-in-a-log"
    client = await router_client(make_plan(candidate=False))
    port = client.server.port
    start = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n"
    for line in (b"Authorization: Bearer " + marker.encode() + b"\x01",  # a control character
                 b"Authorization: Bearer " + marker.encode() + b"k" * 9000):  # a line over 8190 bytes
        answer = await _raw(port, start + line + b"\r\n\r\n", b"{}")
        assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    # A body refused unread (a bad key) that aiohttp then cannot decode while it drains it.
    junk = b"\x1f\x8b" + b"not gzip" * 20_000
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Encoding: gzip\r\n"
            b"Authorization: Bearer " + marker.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(junk))
    answer = await _raw(port, head, junk)
    assert answer.split(b" ", 2)[1] == b"401", answer[:200]
    assert marker not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "aiohttp.server"], caplog.text
    assert "refused a malformed HTTP request" in caplog.text  # still said, in one line
    resp = await client.post("/v1/chat/completions", json={"model": "support", "messages": [USER]})
    assert resp.status == 200  # and the router serves on


def test_the_malformed_request_filter_passes_other_records_and_respects_the_level() -> None:
    import aiohttp.http_exceptions

    from inferstack.router.requests import MalformedRequestLog

    logger = logging.getLogger("test.malformed")
    logger.setLevel(logging.WARNING)
    quiet = MalformedRequestLog(logger)
    other = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "Error handling request from %s", ("peer",),
                              (RuntimeError, RuntimeError("boom"), None))
    assert quiet.filter(other) and other.exc_info is not None  # a real server error keeps its traceback
    bad = aiohttp.http_exceptions.InvalidHeader(b"Authorization: Bearer secret")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "Error handling request from %s", ("peer",),
                               (type(bad), bad, None))
    assert not quiet.filter(record)  # INFO now, and the logger is at WARNING
    assert record.exc_info is None and "secret" not in record.getMessage() and record.levelno == logging.INFO


async def test_a_body_not_received_by_the_deadline_is_a_json_408(make_plan, router_client, make_keys) -> None:
    import dataclasses

    from inferstack.router.app import ROUTER
    from inferstack.router.auth import Authenticator

    assert Limits().read_timeout == 30.0  # the default; --request-read-timeout once main.py plumbs it
    key = "isk_slow-upload-test-key"
    client = await router_client(make_plan(candidate=False), headers={"Authorization": f"Bearer {key}"},
                                 auth=Authenticator("api-keys", make_keys((key, "team-a", "tests", "*"))))
    router = client.server.app[ROUTER]
    router.limits = dataclasses.replace(router.limits, read_timeout=0.3)
    for framing in (b"Content-Length: 100\r\n", b"Transfer-Encoding: chunked\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
                     + b"\r\n" + framing + b"\r\n" + (b"5\r\n" if b"chunked" in framing else b"") + b"{")
        await writer.drain()
        started = asyncio.get_running_loop().time()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # the body never comes
        assert asyncio.get_running_loop().time() - started >= 0.25
        assert head.split(b" ", 2)[1] == b"408" and b"Connection: close" in head, head
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        error = json.loads(await reader.readexactly(length))["error"]
        assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error", error
        writer.close()
    resp = await client.post("/v1/chat/completions", json={"model": "support", "messages": [USER]})
    assert resp.status == 200  # a body sent at once is far inside the deadline
