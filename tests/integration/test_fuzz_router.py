"""Property-based fuzzing of a running router (with the stand-in behind it): hostile bodies and headers.

Properties: no 5xx the router itself caused (the stand-in does not fail here,
so no 502/504 either), the process never dies, and normal requests keep being
answered during the run (one every ``NORMAL_EVERY`` cases) and after it.
Deterministic (``derandomize``) and bounded: a fixed number of examples.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import Proc, Processes, plan, write_plan

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore:Generating overly large repr")]

NORMAL_EVERY = 20
EXAMPLES = 600
NORMAL = {"model": "support", "messages": [{"role": "user", "content": "Where is my parcel?"}]}

FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "n", "temperature", "top_p", "stream",
          "stream_options", "stop", "tools", "tool_choice", "response_format", "seed", "user", "logprobs", "top_logprobs",
          "presence_penalty", "logit_bias", "best_of", "echo", "suffix", "cache_salt", "guided_json"]
ROLES = ["system", "developer", "user", "assistant", "tool", "function", "", "root", "USER"]

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=25
)
parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"])},
                                       optional={"text": json_values, "image_url": json_values}), max_size=4)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES) | json_values},
        optional={"content": st.text(max_size=60) | st.none() | parts | json_values, "name": json_values,
                  "tool_calls": st.lists(json_values, max_size=3), "tool_call_id": json_values},
    ),
    max_size=6,
)


@st.composite
def near_miss(draw: st.DrawFn) -> dict[str, Any]:
    """A real request with some fields replaced by wrong types, odd values, or removed."""
    chat = draw(st.booleans())
    body: dict[str, Any] = dict(NORMAL) if chat else {"model": "support", "prompt": "Where is my parcel?"}
    body["stream"] = draw(st.booleans())
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            body.pop(name, None)
        elif choice == 1:
            body[name] = draw(json_values)
        elif choice == 2 and name == "messages":
            body[name] = draw(messages)
        else:
            body[name] = draw(st.sampled_from([0, 1, -1, 2, 10**9, 0.5, 2.5, "", "x", [], {}, [1], ["a"], True, None]))
    body["__path"] = "/v1/chat/completions" if chat else "/v1/completions"
    return body


@st.composite
def big(draw: st.DrawFn) -> bytes:
    """Huge or deep bodies, all within the size limit (8 MiB)."""
    kind = draw(st.sampled_from(["deep-list", "deep-object", "deep-in-field", "long-content", "many-messages", "wide-list"]))
    depth = draw(st.integers(1, 5000))
    if kind == "deep-list":
        return b"[" * depth + b"]" * depth
    if kind == "deep-object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "deep-in-field":
        return b'{"model": "support", "messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "long-content":
        text = "parcel " * draw(st.sampled_from([1000, 100_000, 1_000_000]))
        return json.dumps({**NORMAL, "messages": [{"role": "user", "content": text}]}).encode()
    if kind == "many-messages":
        return json.dumps({**NORMAL, "messages": [{"role": "user", "content": "hi"}] * draw(st.sampled_from([4096, 4097, 50_000]))}).encode()
    return json.dumps({**NORMAL, "stop": list(range(draw(st.sampled_from([10, 100_000]))))}).encode()


header_text = st.text(alphabet=string.printable.strip("\r\n\x0b\x0c") + "éü€", max_size=200) | st.sampled_from(
    ["x" * 8000, "../../etc", "default", "other", "billing", "\t", "a" * 100]
)
headers = st.dictionaries(
    st.sampled_from(["x-inferstack-slice", "x-user-id", "x-tenant-id", "x-request-id", "x-inferstack-response-id",
                     "content-type", "accept-encoding", "x-forwarded-for"]),
    header_text,
    max_size=4,
)
bodies = (
    near_miss().map(lambda b: (b.pop("__path"), json.dumps(b).encode()))
    | json_values.map(lambda v: ("/v1/chat/completions", json.dumps(v).encode()))
    | st.binary(max_size=200).map(lambda b: ("/v1/completions", b))
    | big().map(lambda b: ("/v1/chat/completions", b))
)


def post(router: Proc, path: str, body: bytes, extra: dict[str, str]) -> tuple[int, bytes]:
    """One request on its own connection; headers go out as UTF-8 bytes, as a hostile client may send them.

    The router may answer and close before the whole body is sent (a header it refuses): the answer is
    still read. 0 means the connection was closed with no answer at all.
    """
    sent = {"Content-Type": "application/json", "Content-Length": str(len(body)), **router.auth, **extra}
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in sent.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", router.port), timeout=30) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head.encode() + body)
        resp = http.client.HTTPResponse(sock)
        try:
            resp.begin()
            return resp.status, resp.read()
        except (ConnectionResetError, http.client.RemoteDisconnected):
            return 0, b""


@pytest.fixture
def router(procs: Processes, tmp_path) -> Iterator[Proc]:  # type: ignore[no-untyped-def]
    stable = procs.standin("model-a")
    path = tmp_path / "plan.json"
    write_plan(path, plan(stable, None, shadowPercent=0))
    yield procs.router(path, "--slices", "billing,shipping")


def normal_request_works(router: Proc) -> None:
    status, data = post(router, "/v1/chat/completions", json.dumps(NORMAL).encode(), {"x-user-id": "u1"})
    assert status == 200, data[:500]
    assert json.loads(data)["choices"][0]["message"]["content"]


def test_fuzzed_bodies_and_headers_get_no_router_5xx(router: Proc) -> None:
    seen = {"cases": 0}
    statuses: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(case=bodies, extra=headers)
    def case(case: tuple[str, bytes], extra: dict[str, str]) -> None:
        path, body = case
        status, data = post(router, path, body, extra)
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, (status, path, body[:300], extra, data[:500])
        assert router.popen.poll() is None, "the router died"
        seen["cases"] += 1
        if seen["cases"] % NORMAL_EVERY == 0:
            normal_request_works(router)

    case()
    print(f"fuzz: {seen['cases']} cases, statuses {dict(sorted(statuses.items()))}")
    normal_request_works(router)
    assert router.popen.poll() is None
    assert seen["cases"] >= EXAMPLES // 2, seen  # the run was not cut short
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0, statuses  # both sides were exercised
