"""Property-based fuzzing of a running router (with the stand-in behind it): hostile bodies and headers.

Each case is a body (a near-miss request, random JSON, random bytes, a huge or deep body, or one past the
8 MiB limit, sent with Content-Length or chunked) and a set of headers (an ``Authorization`` that is valid,
missing, malformed, huge or not ASCII, plus random header names and values).

Properties: every case gets an HTTP answer (a connection closed with none is a failure), no 5xx the
router itself caused (the stand-in does not fail here, so no 502/504 either), the process never dies,
and normal requests keep being answered during the run (one every ``NORMAL_EVERY`` cases) and after it.
Every refusal is OpenAI-style JSON, except the few that aiohttp's HTTP parser makes before any router code
runs (a header name that is no token, a control character, a line over 8190 bytes, too many headers, an
``Expect`` it does not know, a Content-Encoding it cannot decode): those cases are marked ``raw`` and may get
its plain-text 400/417. A bad key is a 401, a body past the limit a 413 (``request_too_large``). After
the run the router's log holds neither the key (some cases send it inside a header line the parser refuses,
which aiohttp used to quote) nor any traceback.
Deterministic (``derandomize``) and bounded: a fixed number of examples, well under 30 s.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import socket
import string
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from .harness import Proc, Processes, plan, write_plan

pytestmark = [pytest.mark.timeout(300), pytest.mark.filterwarnings("ignore:Generating overly large repr")]

NORMAL_EVERY = 20
EXAMPLES = 500  # runs in about the time the earlier 600 bodies-only cases took (measured side by side)
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
        return sized_body(kind, draw(st.sampled_from([1000, 100_000, 1_000_000])))
    if kind == "many-messages":
        return sized_body(kind, draw(st.sampled_from([4096, 4097, 50_000])))
    return sized_body(kind, draw(st.sampled_from([10, 100_000])))


@functools.cache
def sized_body(kind: str, n: int) -> bytes:
    """The large bodies, each made once (hypothesis draws them many times; making them was most of the run)."""
    if kind == "long-content":
        return json.dumps({**NORMAL, "messages": [{"role": "user", "content": "parcel " * n}]}).encode()
    if kind == "many-messages":
        return json.dumps({**NORMAL, "messages": [{"role": "user", "content": "hi"}] * n}).encode()
    if kind == "wide-list":
        return json.dumps({**NORMAL, "stop": list(range(n))}).encode()
    # "oversized": a real request of n bytes, past the limit
    shell = json.dumps({**NORMAL, "messages": [{"role": "user", "content": ""}]}).encode()
    return shell.replace(b'"content": ""', b'"content": "' + b"p" * (n - len(shell)) + b'"')


LIMIT = 8 * 1024 * 1024  # the router's default --max-request-bytes
TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"  # what a header name may be made of
# Framing headers stay the harness's own: a wrong Content-Length is a slow upload (test_slow_upload.py).
FRAMING = {"content-length", "transfer-encoding", "host", "connection", "authorization", "te", "trailer",
           "upgrade", "keep-alive", "proxy-connection"}

# Headers aiohttp's parser refuses to see twice (aiohttp.http_parser.SINGLETON_HEADERS).
SINGLETONS = [b"content-length", b"content-location", b"content-range", b"content-type", b"etag", b"host",
              b"max-forwards", b"server", b"transfer-encoding", b"user-agent"]


class Case:
    """One request: a path, a body and how it is framed (a plain class: hypothesis prints its short repr)."""

    def __init__(self, path: str, body: bytes, chunked: bool = False, oversized: bool = False) -> None:
        self.path = path
        self.body = body
        self.chunked = chunked  # Transfer-Encoding: chunked, no Content-Length
        self.oversized = oversized  # past LIMIT: a 413 when the key is good

    def __repr__(self) -> str:
        return f"Case({self.path!r}, {len(self.body)} bytes: {self.body[:200]!r}, chunked={self.chunked})"


class Headers:
    """The headers of one case, as raw bytes. ``auth``: "valid", "invalid" or "absent" (what the router
    should make of it); ``raw``: something aiohttp's parser refuses before the router runs."""

    def __init__(self) -> None:
        self.lines: list[tuple[bytes, bytes]] = []
        self.auth = "valid"
        self.raw = False
        self.encoded = False  # a Content-Encoding the body may not match: a 400 may come before a 413

    def __repr__(self) -> str:
        shown = [(k[:40], v[:80] + (b"...%d bytes" % len(v) if len(v) > 80 else b"")) for k, v in self.lines]
        return f"Headers(auth={self.auth!r}, raw={self.raw}, encoded={self.encoded}, lines={shown!r})"


@st.composite
def oversized(draw: st.DrawFn) -> Case:
    """A real request made larger than the limit, by one byte or by 64 KiB (more only costs time: the router
    stops reading at the limit); with Content-Length or chunked."""
    body = sized_body("oversized", draw(st.sampled_from([LIMIT + 1, LIMIT + 65_536])))
    assert len(body) > LIMIT
    return Case("/v1/chat/completions", body, chunked=draw(st.booleans()), oversized=True)


def as_case(path: str, body: bytes) -> Case:
    return Case(path, body)


small_bodies = (
    near_miss().map(lambda b: as_case(b.pop("__path"), json.dumps(b).encode()))
    | json_values.map(lambda v: as_case("/v1/chat/completions", json.dumps(v).encode()))
    | st.binary(max_size=200).map(lambda b: as_case("/v1/completions", b))
)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Mostly small bodies; some huge or deep ones; about one in twelve past the size limit."""
    kind = draw(st.sampled_from(["small"] * 8 + ["big"] * 3 + ["oversized"]))
    if kind == "oversized":
        return draw(oversized())
    case = draw(small_bodies) if kind == "small" else Case("/v1/chat/completions", draw(big()))
    case.chunked = draw(st.sampled_from([False] * 4 + [True]))
    return case


header_text = st.text(alphabet=string.printable.strip("\r\n\x0b\x0c") + "éü€", max_size=200) | st.sampled_from(
    ["x" * 8000, "../../etc", "default", "other", "billing", "\t", "a" * 100, "ünïcödé ☃ 😀"]
)
KNOWN_NAMES = ["x-inferstack-slice", "x-user-id", "x-tenant-id", "x-request-id", "x-inferstack-response-id",
               "content-type", "accept-encoding", "x-forwarded-for", "x-forwarded-user", "cookie", "accept",
               "user-agent", "traceparent", "x-inferstack-cache", "openai-organization"]


@st.composite
def authorization(draw: st.DrawFn, key: str) -> tuple[bytes | None, str, bool]:
    """(value or None, what the router should make of it, whether aiohttp's parser refuses it)."""
    kind = draw(st.sampled_from(["valid"] * 6 + ["absent", "random", "malformed", "malformed", "non-ascii", "huge"]))
    if kind == "valid":
        value = draw(st.sampled_from([f"Bearer {key}", f"bearer {key}", f"BEARER   {key}", f"Bearer {key}\t "]))
        return value.encode(), "valid", False
    if kind == "absent":
        return None, "absent", False
    if kind == "random":
        return draw(header_text).encode(), "invalid", False
    if kind == "malformed":
        value = draw(st.sampled_from([
            "Bearer", "Bearer ", "Bearer\t", "Basic dXNlcjpwYXNz", key, f"Token {key}", f"Bearer {key}x", f"Bearer {key[:-1]}",
            f"Bearer {key.upper()}", f"Bearer {key} {key}", f"Bearer {key},Bearer {key}", f"Bearer  \"{key}\"",
            "Bearer " + "a" * 513, "Bearer " + key * 10, "Bearer isk_", "Bearer null", "Bearer undefined", "Bearer %00",
            f"Bearer {key}\x00", f"Bearer {key}\x1b[0m", f"Bearer {key}" + "k" * 9000,  # the parser's: the key in its error
        ]))  # fmt: skip
        raw = "\x00" in value or "\x1b" in value or len(value) > 8100
        return value.encode(), "invalid", raw
    if kind == "non-ascii":
        # No control characters (bad-value has those) nor spaces (str.strip would take them off the key).
        text = draw(st.text(st.characters(min_codepoint=0x80, exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
                            min_size=1, max_size=60))
        value = draw(st.sampled_from([f"Bearer {text}", f"Bearer {key}{text}", f"{text} {key}"])).encode("utf-8", "surrogatepass")
        if draw(st.booleans()):
            value = b"Bearer isk_\xff\xfe\x80latin-1 " + key.encode()  # not UTF-8 at all
        # A control character (C0 but tab, or DEL) in a header value is refused by aiohttp's parser.
        raw = any((b < 0x20 and b != 0x09) or b == 0x7F for b in value)
        return value, "invalid", raw
    # Huge: up to aiohttp's field limit a 401, past it its parser's 400.
    size = draw(st.sampled_from([600, 4000, 8000, 8200, 70_000]))
    return b"Bearer " + b"k" * size, "invalid", size > 8100


@st.composite
def header_sets(draw: st.DrawFn, key: str) -> Headers:
    out = Headers()
    value, out.auth, out.raw = draw(authorization(key))
    if value is not None:
        out.lines.append((b"Authorization", value))
    # Mostly headers the parser takes, so most cases reach the router; about one in four is for the parser.
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["known"] * 10 + ["random"] * 6 + ["bad-name", "bad-value", "encoding", "encoding", "expect"]))
        if kind in ("known", "random"):
            name = draw(st.sampled_from(KNOWN_NAMES) if kind == "known" else st.text(TOKEN, min_size=1, max_size=40))
            if name.lower() in FRAMING or name.lower() in ("expect", "content-encoding"):
                continue
            out.lines.append((name.encode(), draw(header_text).encode()))
        elif kind == "bad-name":  # not a token: space, colon, separators, non-ASCII, empty
            name = draw(st.sampled_from(["bad name", "", "x:y", "(x)", "x/y", "héader", "x\x00y", "{}", "a\tb"]))
            if name.startswith("x:"):  # "x:y: v" is header x with value "y: v", which is fine
                out.lines.append((name.encode(), b"v"))
                continue
            out.lines.append((name.encode(), b"v"))
            out.raw = True
        elif kind == "bad-value":  # a control character, or a value past the parser's limit
            value = draw(st.sampled_from([b"a\x00b", b"\x7f", b"a\x01", b"\x1b[31m", b"v" * 9000]))
            out.lines.append((b"x-junk", value))
            out.raw = True
        elif kind == "encoding":
            encoding = draw(st.sampled_from(["gzip", "deflate", "identity", "x-junk", "gzip, deflate", "br", "zstd"]))
            out.lines.append((b"Content-Encoding", encoding.encode()))
            out.encoded = out.encoded or encoding not in ("identity", "x-junk")
            # The parser refuses br and zstd unless their libraries are installed, and decodes the others
            # itself: a body that does not decode is its plain-text 400 when the error comes while it parses
            # (a deflate stream cut short), the router's JSON invalid_body when it comes while the router reads.
            out.raw = out.raw or out.encoded
        else:
            expect = draw(st.sampled_from(["100-continue", "100-Continue", "junk", "200-ok"]))
            out.lines.append((b"Expect", expect.encode()))
            out.raw = out.raw or expect.lower() != "100-continue"  # aiohttp answers 417 before the router
    if draw(st.integers(0, 40)) == 17:  # more headers than aiohttp's 128 (not 0: hypothesis favours it)
        out.lines += [(b"x-many-%d" % i, b"v") for i in range(150)]
        out.raw = True
    names = [k.lower() for k, _ in out.lines]
    if any(names.count(n) > 1 for n in SINGLETONS):  # aiohttp refuses a second Content-Type, User-Agent, ...
        out.raw = True
    return out


def post(router: Proc, case: Case, headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes, dict[str, str]]:
    """One request on its own connection, written as raw bytes, as a hostile client may send them.

    The router may answer and close before the whole body is sent (a header it refuses): the answer is
    still read. 0 means the connection was closed with no answer at all.
    """
    framing = [(b"Transfer-Encoding", b"chunked")] if case.chunked else [(b"Content-Length", b"%d" % len(case.body))]
    lines = [(b"Host", b"127.0.0.1"), (b"Connection", b"close"), *framing, *headers]
    if not any(k.lower() == b"content-type" for k, _ in headers):
        lines.insert(2, (b"Content-Type", b"application/json"))
    head = b"POST " + case.path.encode() + b" HTTP/1.1\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in lines) + b"\r\n"
    if case.chunked:
        step = 256 * 1024
        parts = [b"%x\r\n%s\r\n" % (len(case.body[i:i + step]), case.body[i:i + step]) for i in range(0, len(case.body), step)]
        payload = b"".join(parts) + b"0\r\n\r\n"
    else:
        payload = case.body
    with socket.create_connection(("127.0.0.1", router.port), timeout=30) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + payload)
        resp = http.client.HTTPResponse(sock)
        try:
            resp.begin()
            return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
        except (ConnectionResetError, http.client.RemoteDisconnected):
            return 0, b"", {}


def openai_error(data: bytes) -> dict[str, Any] | None:
    """The ``error`` object of an OpenAI-style error body, or None."""
    try:
        error = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return error if isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error else None


@pytest.fixture
def router(procs: Processes, tmp_path) -> Iterator[Proc]:  # type: ignore[no-untyped-def]
    stable = procs.standin("model-a")
    path = tmp_path / "plan.json"
    write_plan(path, plan(stable, None, shadowPercent=0))
    yield procs.router(path, "--slices", "billing,shipping")


def normal_request_works(router: Proc) -> None:
    status, data, _ = post(router, Case("/v1/chat/completions", json.dumps(NORMAL).encode()),
                           [(b"Authorization", f"Bearer {router.key}".encode()), (b"x-user-id", b"u1")])
    assert status == 200, data[:500]
    assert json.loads(data)["choices"][0]["message"]["content"]


def check(status: int, data: bytes, got: dict[str, str], case: Case, headers: Headers) -> None:
    """The properties of one answer (see the module docstring)."""
    assert status != 0, "the router closed the connection with no HTTP answer"
    assert status < 500, "a 5xx the router caused"
    if status < 400:
        assert headers.auth == "valid" and not case.oversized, "served a request it should have refused"
        return
    error = openai_error(data)
    if headers.raw and error is None:
        assert status in (400, 417, 431), "aiohttp's parser refuses with 400, 417 or 431"
        return
    assert error is not None, "a refusal that is not OpenAI-style JSON"
    assert got.get("content-type", "").startswith("application/json")
    if headers.auth != "valid":
        assert status == 401 and error["code"] == "invalid_api_key", "a bad or missing key is a 401"
        assert got.get("www-authenticate") == "Bearer"
    elif case.oversized:
        expected = {413, 400} if headers.encoded else {413}  # an undecodable chunked body may fail first
        assert status in expected and error["code"] in ("request_too_large", "invalid_body"), "past the limit: a 413"


def test_fuzzed_bodies_and_headers_get_no_router_5xx(router: Proc, procs: Processes) -> None:
    seen = {"cases": 0}
    statuses: dict[int, int] = {}
    started = time.monotonic()

    def keyed(auth: str = "valid") -> Headers:
        out = Headers()
        out.auth = auth
        if auth == "valid":
            out.lines.append((b"Authorization", f"Bearer {router.key}".encode()))
        return out

    # Each side the final check demands, once for certain (which cases the generator draws can differ
    # between runs of the whole tier), then the generated cases.
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                     HealthCheck.large_base_example])
    @given(case=cases(), headers=header_sets(router.key))
    @example(case=Case("/v1/chat/completions", json.dumps(NORMAL).encode()), headers=keyed())
    @example(case=Case("/v1/chat/completions", b'{"model": "support", "messages": 42}'), headers=keyed())
    @example(case=Case("/v1/chat/completions", json.dumps(NORMAL).encode()), headers=keyed("absent"))
    @example(case=Case("/v1/chat/completions", sized_body("oversized", LIMIT + 1), oversized=True), headers=keyed())
    def one(case: Case, headers: Headers) -> None:
        status, data, got = post(router, case, headers.lines)
        statuses[status] = statuses.get(status, 0) + 1
        where = (status, case.path, len(case.body), case.body[:200], case.chunked, headers, data[:300])
        check(status, data, got, case, headers)
        assert router.popen.poll() is None, ("the router died", where)
        seen["cases"] += 1
        if seen["cases"] % NORMAL_EVERY == 0:
            normal_request_works(router)

    one()
    elapsed = time.monotonic() - started
    print(f"fuzz: {seen['cases']} cases in {elapsed:.1f}s, statuses {dict(sorted(statuses.items()))}")
    normal_request_works(router)
    assert router.popen.poll() is None
    assert seen["cases"] >= EXAMPLES // 2, seen  # the run was not cut short
    for status in (200, 400, 401, 413):  # every side was exercised: served, refused body, refused key, too large
        assert statuses.get(status, 0) > 0, statuses
    # aiohttp quoted a refused header line in its log, the key with it; and no traceback for a client's junk.
    log = (procs.logs / f"router-{router.port}.log").read_text(errors="replace")
    assert router.key not in log
    assert "Traceback" not in log, log[-3000:]
