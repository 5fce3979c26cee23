"""Client requests checked before anything is forwarded: size, nesting, and the OpenAI request shape.

:func:`read_request` is called once at the top of the router's handling of
``/v1/chat/completions`` and ``/v1/completions``. It reads the body with its
own bound (a JSON 413 past it) and deadline (a JSON
408 for a client that trickles it, ``Limits.read_timeout``), parses it with a
nesting bound (a 400, never a ``RecursionError``), and checks the fields the
router and a model server rely on, each refusal an OpenAI-style 400 naming the
field in ``param``. Fields it does not know pass through untouched: vLLM has
many extensions, and the model server judges those.

The checks are cheap on purpose: this is on every request's path. Nothing is
copied, and the nesting walk is skipped when the body has too few brackets to
be deep.

Requests the HTTP server itself refuses (router/server.py: bad header bytes,
lines over 8190 bytes) never reach this module. :class:`MalformedRequestLog`
keeps aiohttp's log of such requests (on the admin port, which aiohttp serves)
to one line that quotes none of the request (it quoted the refused header line,
which can be the API key).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger

from inferstack.router.errors import error_response
from inferstack.router.server import BodyError, BodyTooLarge, Request, Response

log = logging.getLogger(__name__)

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(frozen=True)
class Limits:
    """What one request may be; the router's command line sets them."""

    max_body_bytes: int = 8 * 1024 * 1024
    max_depth: int = 64  # JSON nesting: the body object is depth 1
    max_messages: int = 4096  # chat messages, completion prompts, content parts per message
    max_output_tokens: int = 131_072  # ceiling of max_tokens / max_completion_tokens
    max_n: int = 128  # choices per request (OpenAI's own ceiling)
    max_tools: int = 512
    max_stop: int = 64
    # Seconds the handler waits for the whole body, from when it starts reading: a client that trickles its
    # body holds a handler, a connection and a growing buffer; past this it gets a 408 (None: no bound).
    read_timeout: float | None = 30.0


class RequestError(Exception):
    """A refused request: an OpenAI-style ``invalid_request_error`` naming the field."""

    def __init__(self, status: int, message: str, param: str | None, code: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.close = close  # the connection cannot carry another request: answer, then close it

    def response(self) -> Response:
        response = error_response(self.status, self.message, self.code, param=self.param)
        if self.close:
            response.force_close()
        return response


def _refuse(param: str | None, message: str, code: str = "invalid_value") -> RequestError:
    return RequestError(400, message, param, code)


# ------------------------------------------------------------------ reading


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The body, reading no more than ``limit`` bytes of it (past that, a JSON 413) for no longer than
    ``timeout`` seconds in all (past that, a JSON 408: a deadline, not an idle timeout, so a byte now and then
    does not keep a handler forever)."""
    try:
        if request.body_complete:
            # The whole body came with the head (nearly every request): reading cannot wait, so
            # there is no deadline to arm (its timer and context were a few µs of every request).
            return await request.read(limit)
        async with asyncio.timeout(timeout):
            return await request.read(limit)
    except BodyTooLarge:
        raise _too_large(limit) from None
    except TimeoutError:
        # The rest of the body is never read, so the connection cannot carry another request: the answer
        # closes it. What was read so far is dropped with the request.
        raise RequestError(408, f"the request body was not received within {timeout:g} seconds", None,
                           "request_timeout", close=True) from None
    except BodyError:
        # A Content-Encoding that does not match the bytes, or broken chunked framing: the client's fault, so
        # a 400. The parser cannot go on after such a body, so the answer closes the connection.
        raise RequestError(400, "the request body cannot be decoded (check Content-Encoding)", None, "invalid_body",
                           close=True) from None


def _too_large(limit: int) -> RequestError:
    return RequestError(413, f"the request body is larger than {limit} bytes", None, "request_too_large")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# What json.loads(data, parse_constant=_no_constants) builds on every call (a decoder and its
# scanner), made once; _parse_json is that call's body for bytes.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def _parse_json(data: bytes) -> Any:
    return _DECODER.decode(data.decode(json.detect_encoding(data), "surrogatepass"))


# orjson reads a body ~4x faster than json on a small chat body (0.4 vs 1.7 µs) and ~2x on 8 KB, but json's
# result and refusals are the contract, so orjson is only a shortcut to the same dict (tests/unit/router/
# test_requests.py compares them). Whatever orjson refuses goes to json, which decides: NaN and Infinity (json
# refuses them too), lone surrogates, a BOM, UTF-16/32, floats past the double range (json: inf), nesting past
# orjson's 1024. The one input orjson takes differently is an integer past 64 bits, which it turns into a float
# where json keeps the int (a `seed` that is then no integer): such an integer has 19 digits in a row, so a body
# with a run of 19 digits anywhere (strings too: rare) goes to json.
# The run is found in the body's "shape" (every digit "0", "[" and "{" both "[", any other byte " "), which also
# gives the bracket count of the depth check: one translate for both (bytes.count is ~2 µs per 8 KB per call).
_SHAPE = bytes(0x30 if 0x30 <= b <= 0x39 else 0x5B if b in b"[{" else 0x20 for b in range(256))
_DIGIT_RUN = b"0" * 19
# json's depth limit is Python's recursion limit (1000 levels, less the caller's frames): a body orjson takes
# that is deeper than max_depth is refused below with json's message, as long as max_depth is well under that.
_ORJSON_MAX_DEPTH = 512


def _parse_fast(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _parse_json(data)


def parse_body(data: bytes, max_depth: int) -> dict[str, Any]:
    """A JSON object nested at most ``max_depth`` deep (NaN and Infinity are not JSON)."""
    shape = data.translate(_SHAPE)
    try:
        if max_depth < _ORJSON_MAX_DEPTH and _DIGIT_RUN not in shape:
            body = _parse_fast(data)
        else:
            body = _parse_json(data)
    except RecursionError:
        raise _refuse(None, f"the request body is nested deeper than {max_depth} levels", "too_deep") from None
    except ValueError:  # also UnicodeDecodeError, and integers too long to convert
        raise _refuse(None, "the request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise _refuse(None, "the request body must be a JSON object", "invalid_json")
    # A body with fewer brackets than the limit cannot be nested deeper (brackets in strings only overcount).
    if shape.count(b"[") > max_depth and _deeper_than(body, max_depth):
        raise _refuse(None, f"the request body is nested deeper than {max_depth} levels", "too_deep")
    return body


def _deeper_than(body: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if type(value) is dict else value
        for child in children:
            if type(child) is dict or type(child) is list:
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


async def read_request(request: Request, limits: Limits, *, chat: bool) -> dict[str, Any]:
    """The request's body, read, parsed and checked; :class:`RequestError` when it is refused."""
    body = parse_body(await read_body(request, limits.max_body_bytes, limits.read_timeout), limits.max_depth)
    validate(body, limits, chat=chat)
    return body


# ----------------------------------------------------------------- checking


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is an int subclass, and true is no count


def _is_number(value: Any) -> bool:
    return (type(value) is int or type(value) is float) and math.isfinite(value)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _expect(param: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise _refuse(param, f"`{param}` must be {expected}, not {_type_name(value)}", "invalid_type")


def _int_in(param: str, value: Any, low: int, high: int) -> None:
    _expect(param, value, _is_int(value), "an integer")
    if not low <= value <= high:
        raise _refuse(param, f"`{param}` must be between {low} and {high}")


def _number_in(param: str, value: Any, low: float, high: float) -> None:
    _expect(param, value, _is_number(value), "a number")
    if not low <= value <= high:
        raise _refuse(param, f"`{param}` must be between {low:g} and {high:g}")


def _string_list(param: str, value: Any, most: int) -> None:
    _expect(param, value, type(value) is list, "a string or an array of strings")
    if len(value) > most:
        raise _refuse(param, f"`{param}` may have at most {most} items")
    for i, item in enumerate(value):
        _expect(f"{param}[{i}]", item, type(item) is str, "a string")


def _bool(name: str, value: Any, limits: Limits, chat: bool) -> None:
    _expect(name, value, type(value) is bool, "a boolean")


def _object(name: str, value: Any, limits: Limits, chat: bool) -> None:
    _expect(name, value, type(value) is dict, "an object")


def _string(name: str, value: Any, limits: Limits, chat: bool) -> None:
    _expect(name, value, type(value) is str, "a string")


def _tokens(name: str, value: Any, limits: Limits, chat: bool) -> None:
    _int_in(name, value, 1, limits.max_output_tokens)


def _choices(name: str, value: Any, limits: Limits, chat: bool) -> None:
    _int_in(name, value, 1, limits.max_n)


def _penalty(name: str, value: Any, limits: Limits, chat: bool) -> None:
    _number_in(name, value, -2, 2)


def _seed(name: str, value: Any, limits: Limits, chat: bool) -> None:
    _expect(name, value, _is_int(value), "an integer")


def _stop(name: str, value: Any, limits: Limits, chat: bool) -> None:
    if type(value) is not str:
        _string_list(name, value, limits.max_stop)


def _tools(name: str, value: Any, limits: Limits, chat: bool) -> None:
    _expect(name, value, type(value) is list, "an array of objects")
    if len(value) > limits.max_tools:
        raise _refuse(name, f"`{name}` may have at most {limits.max_tools} items")
    for i, tool in enumerate(value):
        _expect(f"{name}[{i}]", tool, type(tool) is dict, "an object")


def _tool_choice(name: str, value: Any, limits: Limits, chat: bool) -> None:
    _expect(name, value, type(value) is str or type(value) is dict, "a string or an object")


def _logprobs(name: str, value: Any, limits: Limits, chat: bool) -> None:
    if chat:
        _expect(name, value, type(value) is bool, "a boolean")
    else:
        _int_in(name, value, 0, 20)


# The usual optional fields and their checks, looked up per field the body has (not per field known).
_OPTIONAL = {
    "max_tokens": _tokens, "max_completion_tokens": _tokens, "n": _choices, "best_of": _choices,
    "temperature": lambda name, value, limits, chat: _number_in(name, value, 0, 2),
    "top_p": lambda name, value, limits, chat: _number_in(name, value, 0, 1),
    "presence_penalty": _penalty, "frequency_penalty": _penalty,
    "stream": _bool, "parallel_tool_calls": _bool, "store": _bool, "echo": _bool,
    "stream_options": _object, "response_format": _object, "logit_bias": _object, "metadata": _object,
    "seed": _seed, "user": _string, "suffix": _string, "stop": _stop, "tools": _tools, "tool_choice": _tool_choice,
    "logprobs": _logprobs, "top_logprobs": lambda name, value, limits, chat: _int_in(name, value, 0, 20),
}


def _check_optional(body: dict[str, Any], limits: Limits, *, chat: bool) -> None:
    """The usual optional fields, when present (null stands for "not set", as the OpenAI API takes it)."""
    for name, value in body.items():
        check = _OPTIONAL.get(name)
        if check is not None and value is not None:
            check(name, value, limits, chat)


def _check_messages(messages: Any, limits: Limits) -> None:
    if messages is None:
        raise _refuse("messages", "`messages` is required", "missing_required_parameter")
    _expect("messages", messages, type(messages) is list, "an array of message objects")
    if not messages:
        raise _refuse("messages", "`messages` must not be empty")
    if len(messages) > limits.max_messages:
        raise _refuse("messages", f"`messages` may have at most {limits.max_messages} items")
    for i, message in enumerate(messages):
        # The usual message (a role and text, nothing else to check) passes without the checks below, which
        # build each field's name up front for their refusals (~0.25 µs a message, every message of a long chat).
        if (type(message) is dict and type(role := message.get("role")) is str and role in CHAT_ROLES
                and type(message.get("content")) is str and message.get("name") is None
                and message.get("tool_call_id") is None and message.get("tool_calls") is None):
            continue
        where = f"messages[{i}]"
        _expect(where, message, type(message) is dict, "an object")
        role = message.get("role")
        _expect(f"{where}.role", role, type(role) is str, "a string")
        if role not in CHAT_ROLES:
            raise _refuse(f"{where}.role", f"`{where}.role` must be one of {', '.join(sorted(CHAT_ROLES))}")
        content = message.get("content")
        if content is None:
            # Only an assistant turn that called tools may carry no content.
            if role != "assistant" or not (message.get("tool_calls") or message.get("function_call")):
                raise _refuse(f"{where}.content", f"`{where}.content` is required", "missing_required_parameter")
        elif type(content) is list:
            if len(content) > limits.max_messages:
                raise _refuse(f"{where}.content", f"`{where}.content` may have at most {limits.max_messages} parts")
            for j, part in enumerate(content):
                _expect(f"{where}.content[{j}]", part, type(part) is dict, "an object")
                kind = part.get("type")
                _expect(f"{where}.content[{j}].type", kind, type(kind) is str, "a string")
        elif type(content) is not str:
            _expect(f"{where}.content", content, False, "a string, an array of content parts or null")
        if message.get("name") is not None:
            _expect(f"{where}.name", message["name"], type(message["name"]) is str, "a string")
        if message.get("tool_call_id") is not None:
            _expect(f"{where}.tool_call_id", message["tool_call_id"], type(message["tool_call_id"]) is str, "a string")
        calls = message.get("tool_calls")
        if calls is not None:
            _expect(f"{where}.tool_calls", calls, type(calls) is list, "an array of objects")
            for j, call in enumerate(calls):
                _expect(f"{where}.tool_calls[{j}]", call, type(call) is dict, "an object")


def _check_prompt(prompt: Any, limits: Limits) -> None:
    if prompt is None:
        raise _refuse("prompt", "`prompt` is required", "missing_required_parameter")
    if type(prompt) is str:
        return
    expected = "a string, an array of strings or an array of token ids"
    _expect("prompt", prompt, type(prompt) is list, expected)
    if not prompt:
        raise _refuse("prompt", "`prompt` must not be empty")
    if len(prompt) > limits.max_messages:
        raise _refuse("prompt", f"`prompt` may have at most {limits.max_messages} items")
    for i, item in enumerate(prompt):
        if type(item) is str:
            continue
        if _is_int(item):
            if item < 0:
                raise _refuse(f"prompt[{i}]", "a token id must not be negative")
            continue
        # A batch of token-id prompts: [[1, 2], [3]].
        _expect(f"prompt[{i}]", item, type(item) is list, "a string, a token id or an array of token ids")
        for token in item:
            _expect(f"prompt[{i}]", token, _is_int(token) and token >= 0, "an array of token ids")


def validate(body: dict[str, Any], limits: Limits, *, chat: bool) -> None:
    """Refuse a body that is not an OpenAI request for its endpoint (chat or completions)."""
    model = body.get("model")
    if model is None:
        raise RequestError(400, "`model` must name a stack: <name> or <namespace>/<name>", "model", "missing_model")
    _expect("model", model, type(model) is str, "a string")
    if not model or len(model) > 512:
        raise RequestError(400, "`model` must name a stack: <name> or <namespace>/<name>", "model", "missing_model")
    if chat:
        _check_messages(body.get("messages"), limits)
    else:
        _check_prompt(body.get("prompt"), limits)
    _check_optional(body, limits, chat=chat)


# ------------------------------------------------------------ aiohttp's log


class MalformedRequestLog(logging.Filter):
    """aiohttp's own log of a request its HTTP parser refuses, made one line that quotes nothing the client sent.

    aiohttp logs such a request at ERROR with a traceback whose message quotes the offending header line
    (``Invalid header value char: b'Authorization: Bearer isk_...\\x00'``, or the first 100 bytes of a line
    over 8190): a client's API key reached the router's log that way. And a body it cannot decode while it
    drains what a handler did not read is logged as an "Unhandled exception", a traceback per request.
    Both are the client's fault and no router error: this turns them into an INFO line with the peer and
    the kind of error only. Any other record (a real server error) passes unchanged.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError | web.RequestPayloadError):
            return True
        if record.msg == "Error handling request from %s" and isinstance(record.args, tuple) and record.args:
            record.msg, record.args = "refused a malformed HTTP request from %s: %s", (record.args[0], type(exc).__name__)
        else:
            record.msg, record.args = "dropped the rest of a request body that cannot be decoded: %s", (type(exc).__name__,)
        record.exc_info = record.exc_text = record.stack_info = None
        if record.levelno > logging.INFO:
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return self.logger.isEnabledFor(record.levelno)  # now INFO: dropped when the log is at WARNING


def quiet_malformed_requests(logger: logging.Logger = server_logger) -> None:
    """Install :class:`MalformedRequestLog` on aiohttp's server log (once; importing this module does it)."""
    if not any(isinstance(f, MalformedRequestLog) for f in logger.filters):
        logger.addFilter(MalformedRequestLog(logger))


# Every router imports this module (router/app.py); its admin port is aiohttp's, and a refused request can come
# before any handler runs.
quiet_malformed_requests()
