"""Talking to a revision's backend: send a request, read or observe its answer.

Streamed answers are passed through chunk by chunk; :class:`SSEObserver`
looks at them on the way for usage and answer text, keeping only bounded state.

This is the path every token of every answer takes, so JSON goes through
orjson (several times faster than the standard library on small events) and
a chunk is passed on as the very bytes object that was read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, overload

import aiohttp
import orjson
from yarl import URL

from inferstack.core.trafficplan import RevisionBundle
from inferstack.router import tracing
from inferstack.router.errors import UpstreamError, classify
from inferstack.router.evaluators import MAX_CHECKED_CHARS
from inferstack.router.upstream import UpstreamClient, UpstreamResponse

_MAX_SSE_LINE = 1024 * 1024  # a longer line is not parsed (and the answer is marked truncated)
_DEFER_BYTES = 16 * 1024  # whole events' JSON an SSEObserver keeps before it parses them together
MAX_TOOL_CALLS = 16  # tool calls kept per answer for the evaluators; more mark the answer truncated


@dataclass
class ToolCallSeen:
    """One tool call of an answer: its name and (a bounded prefix of) its JSON arguments."""

    name: str = ""
    arguments: str = ""
    truncated: bool = False

    def add(self, name: str | None, arguments: str | None) -> None:
        if name:
            self.name = (self.name + name)[:256]
        if arguments:
            room = MAX_CHECKED_CHARS - len(self.arguments)
            self.arguments += arguments[: max(room, 0)]
            self.truncated = self.truncated or len(arguments) > room


@dataclass
class Answer:
    """What the router learnt about one answer."""

    text: str = ""
    truncated: bool = False  # text is a prefix (or a line was too long to parse)
    length: int = 0  # characters of the whole answer text, also past the kept prefix
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: list[ToolCallSeen] = field(default_factory=list)
    id: str = ""  # the model server's id of the answer (gen_ai.response.id)
    model: str = ""  # the model that answered, as the server names it
    finish_reasons: list[str] = field(default_factory=list)  # of the first choice

    def take_tool_calls(self, calls: object) -> None:
        """Collect ``tool_calls`` of a message or of a stream's deltas (merged by their index)."""
        if not isinstance(calls, list):
            return
        for position, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            index = call.get("index", position)
            if not isinstance(index, int) or index < 0 or index >= MAX_TOOL_CALLS:
                self.truncated = True
                continue
            while len(self.tool_calls) <= index:
                self.tool_calls.append(ToolCallSeen())
            fn = call.get("function") or {}
            if isinstance(fn, dict):
                name, arguments = fn.get("name"), fn.get("arguments")
                self.tool_calls[index].add(name if isinstance(name, str) else None, arguments if isinstance(arguments, str) else None)


def loads(data: bytes) -> Any:
    """JSON from bytes; raises ValueError. What orjson refuses but json takes (NaN, UTF-16) goes to json.
    An integer past 64 bits comes back as a float (orjson 3.13 reads it so, where json keeps the int):
    only the router's view of an answer is parsed (text, ids, usage, which :func:`_count` bounds), and
    the client gets the model server's own bytes."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(body: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # an integer past 64 bits, which json writes
        return json.dumps(body).encode()


def ask_usage(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The upstream body of a stream, asking for usage; and whether the client did not ask for it.

    With ``stream_options.include_usage`` the model server ends the stream with one chunk of
    ``choices: []`` and the whole answer's ``usage`` (the OpenAI API's semantics, vLLM's too):
    the router counts tokens from it without parsing anything else for them. A client that did
    not ask must not get that chunk (:class:`SSEObserver` ``strip_usage``). Its other
    ``stream_options`` are kept.
    """
    options = body.get("stream_options")
    options = options if isinstance(options, dict) else {}
    if options.get("include_usage"):
        return body, False
    return {**body, "stream_options": {**options, "include_usage": True}}, True


@lru_cache(maxsize=1024)
def _url(base: str, path: str) -> URL:
    # Parsed once per backend and endpoint, not per request.
    return URL(base.rstrip("/") + path)


@lru_cache(maxsize=64)
def timeout_for(stream: bool, upstream_timeout: float, connect_timeout: float) -> aiohttp.ClientTimeout:
    # A stream may legitimately run for minutes; bound the silence between chunks instead.
    return aiohttp.ClientTimeout(
        total=None if stream else upstream_timeout, sock_connect=connect_timeout, sock_read=upstream_timeout
    )


@overload
async def send(session: UpstreamClient, bundle: RevisionBundle, path: str, body: dict[str, Any], *, request_id: str,
               timeout: aiohttp.ClientTimeout) -> UpstreamResponse: ...
@overload
async def send(session: aiohttp.ClientSession, bundle: RevisionBundle, path: str, body: dict[str, Any], *, request_id: str,
               timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse: ...


async def send(
    session: UpstreamClient | aiohttp.ClientSession,
    bundle: RevisionBundle,
    path: str,
    body: dict[str, Any],
    *,
    request_id: str,
    timeout: aiohttp.ClientTimeout,
) -> UpstreamResponse | aiohttp.ClientResponse:
    """POST ``body`` to the backend; a 5xx or a transport failure raises :class:`UpstreamError`.

    ``session``: the router's :class:`UpstreamClient` (router/upstream.py), or an aiohttp session.
    The caller owns the returned response and must close it.
    """
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
    if bundle.api_key:
        headers["Authorization"] = f"Bearer {bundle.api_key}"
    tracing.inject(headers)  # the model server joins the request's trace (W3C traceparent)
    try:
        if isinstance(session, UpstreamClient):
            response = await session.post(_url(bundle.url, path), dumps(body), headers, timeout)
        else:
            response = await session.post(_url(bundle.url, path), data=dumps(body), headers=headers, timeout=timeout)
    except Exception as exc:
        raise classify(exc) from exc
    if response.status >= 500:
        try:
            detail = (await response.content.read(2048)).decode(errors="replace")
        except Exception:
            detail = ""
        finally:
            response.close()
        # The body may echo the request (its Authorization header too): the log
        # gets it, redacted by the caller; the client a generic message.
        raise UpstreamError("upstream_5xx", 502, "the model server failed to answer",
                            f"HTTP {response.status}: {detail}".strip())
    return response


async def read_bounded(response: UpstreamResponse, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes (no unbounded buffers)."""
    length = response.content_length
    if length is not None and length > limit:
        raise UpstreamError("response_too_large", 502, f"the model server's answer exceeds {limit} bytes")
    buf = bytearray()
    try:
        if length is not None:
            # HTTP/1.1 framing stops the body at its Content-Length: one read, no loop.
            return await response.read()
        async for chunk in response.content.iter_any():
            buf += chunk
            if len(buf) > limit:
                raise UpstreamError("response_too_large", 502, f"the model server's answer exceeds {limit} bytes")
    except UpstreamError:
        raise
    except Exception as exc:
        raise classify(exc) from exc
    return bytes(buf)


def _choice_text(choice: dict[str, Any]) -> str:
    """The choice's text; "" for anything that is not a string where one belongs (a model server's answer
    is not trusted to have the shape it should: an exception here was a 500 for the client)."""
    if "delta" in choice:
        part = choice["delta"]
    elif "message" in choice:
        part = choice["message"]
    else:
        part = choice
    text = part.get("content" if part is not choice else "text") if type(part) is dict else None
    return text if type(text) is str else ""


def _count(value: object) -> int:
    """A token count from a model server: a non-negative integer (an integral float too), else 0 (a string,
    a negative count, a bool: it raised, or made the metrics raise, after the answer was read)."""
    if type(value) is int:
        return value if value >= 0 else 0
    if type(value) is float and value.is_integer() and value >= 0:
        return int(value)
    return 0


def _take_usage(answer: Answer, event: dict[str, Any]) -> None:
    usage = event.get("usage")
    if isinstance(usage, dict):
        answer.prompt_tokens = _count(usage.get("prompt_tokens"))
        answer.completion_tokens = _count(usage.get("completion_tokens"))


def _take_identity(answer: Answer, event: dict[str, Any]) -> None:
    """The answer's id and model, from its first event (every chunk of a stream repeats them)."""
    ident, model = event.get("id"), event.get("model")
    answer.id = ident[:256] if type(ident) is str else ""
    answer.model = model[:256] if type(model) is str else ""


def _take_finish(answer: Answer, reason: object) -> None:
    if reason and type(reason) is str and len(answer.finish_reasons) < 4:
        answer.finish_reasons.append(reason[:64])


def parse_answer(body: bytes) -> Answer:
    """Usage and first-choice text of a non-streamed answer."""
    answer = Answer()
    try:
        event = loads(body)
    except ValueError:
        return answer
    if not isinstance(event, dict):
        return answer
    _take_usage(answer, event)
    _take_identity(answer, event)
    choices = event.get("choices")
    if type(choices) is list and choices and type(choices[0]) is dict:
        _take_finish(answer, choices[0].get("finish_reason"))
        text = _choice_text(choices[0])
        answer.text = text[:MAX_CHECKED_CHARS]
        answer.truncated = len(text) > MAX_CHECKED_CHARS
        answer.length = len(text)
        message = choices[0].get("message")
        if isinstance(message, dict):
            answer.take_tool_calls(message.get("tool_calls"))
    return answer


def _payloads(lines: list[bytes]) -> list[bytes]:
    """The JSON of the ``data:`` lines (not ``[DONE]``, not empty ones)."""
    return [data for line in lines if line.startswith(b"data:") and (data := line[5:].strip()) and data != b"[DONE]"]


def _events(payloads: list[bytes]) -> list[Any]:
    """The events of one read, in one orjson call when they are many (a burst of tokens).

    The array is taken only when it has one value per payload; else each payload is read alone
    and those that are not JSON are skipped, as one at a time would.
    """
    if len(payloads) > 1:
        try:
            events = orjson.loads(b"[" + b",".join(payloads) + b"]")
        except orjson.JSONDecodeError:
            pass
        else:
            if len(events) == len(payloads):
                return events  # type: ignore[no-any-return]
    out = []
    for data in payloads:
        try:
            out.append(loads(data))
        except ValueError:
            continue
    return out


def _usage_chunk(event: Any) -> bool:
    """The chunk ``include_usage`` adds: no choices, the whole answer's usage."""
    return isinstance(event, dict) and event.get("choices") == [] and isinstance(event.get("usage"), dict)


@dataclass
class SSEObserver:
    """Reads SSE events as bytes pass through; never holds more than one partial line.

    It parses every ``data:`` event, because the built-in checks read every answer's text
    (router/checks.py), but as cheaply as it can: the events of one read in one orjson call,
    text gathered per read, and the chunk passed on as the very object that was read.

    ``strip_usage``: the router asked the model server for usage (:func:`ask_usage`) for a client
    that did not, so the usage-only chunk (``choices: []``) is taken out of what the client gets,
    with the blank line that ends it. Only then are partial lines held back until they end (a
    line's start cannot tell whether it is that chunk); an SSE client acts on whole events only,
    so it sees no delay.
    """

    strip_usage: bool = False
    answer: Answer = field(default_factory=Answer)
    _partial: bytearray = field(default_factory=bytearray)
    _text: list[str] = field(default_factory=list)
    _chars: int = 0
    _drop_blank: bool = False  # the usage chunk was dropped at the end of a read: so is the blank line after it
    _deferred: list[bytes] = field(default_factory=list)  # whole events' JSON, parsed together later
    _deferred_bytes: int = 0

    def feed(self, chunk: bytes) -> bytes:
        """Observe ``chunk``; returns what to pass on: ``chunk`` itself, unless stripping."""
        if (not self._partial and not self._drop_blank and chunk.endswith(b"\n\n") and chunk.startswith(b"data:")
                and chunk.find(b"\n") == len(chunk) - 2):
            # One whole event, the shape of nearly every read of a paced stream (a model server
            # writes each token as it comes): the general path's line split, list building and
            # copies, done once per token, were a fair part of the router's CPU per event
            # (issue 14). Same outcome: the event observed, the chunk passed on unless it is
            # the usage chunk being stripped.
            data = chunk[5:-2].strip()
            if not data or data == b"[DONE]":
                return chunk
            if b'"usage"' not in data:
                # Kept to be parsed with the next ones, in one orjson call and one pass of _take
                # (_take_deferred): per token, only this append (issue 14). Bounded by _DEFER_BYTES;
                # an event that may be the usage chunk, which may have to be stripped now, is
                # parsed now.
                self._deferred.append(data)
                self._deferred_bytes += len(data)
                if self._deferred_bytes > _DEFER_BYTES:
                    self._take_deferred()
                return chunk
            if self._deferred:
                self._take_deferred()  # in order: its text comes before this event's
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                try:
                    event = json.loads(data)
                except ValueError:
                    return chunk
            if self._take((event,)) and self.strip_usage:
                return self._strip(chunk)
            return chunk
        if self._deferred:
            self._take_deferred()
        if self._partial:
            self._partial += chunk
            data = bytes(self._partial)
            self._partial.clear()
        else:
            data = chunk
        end = data.rfind(b"\n") + 1
        rest = data[end:]
        passed = b""
        if len(rest) > _MAX_SSE_LINE:
            self.answer.truncated = True  # not parsed; and when stripping, not held either
            passed = rest
        elif rest:
            self._partial += rest
        if not end:
            return passed if self.strip_usage else chunk
        block = data[:end]
        lines = block.split(b"\n")
        lines.pop()  # the empty piece after the last newline
        usage_chunks = self._take(_events(_payloads(lines)))
        if not self.strip_usage:
            return chunk
        if self._drop_blank:
            self._drop_blank = False
            if not lines[0].strip():
                lines.pop(0)
                block = block[block.index(b"\n") + 1:]
        if usage_chunks:
            block = self._strip(block)
        return block + passed if passed else block

    def _strip(self, block: bytes) -> bytes:
        """``block`` (whole lines) without the usage chunk and the blank line ending it.

        Found by searching the bytes for its key rather than walking the lines: a burst of
        tokens can put the whole stream in the read that ends with it. ``"usage"`` with bare
        quotes cannot be inside a JSON string (its quotes would be escaped), so only lines
        with that key are parsed again.
        """
        kept: list[bytes] = []
        start = 0
        at = block.find(b'"usage"')
        while at >= 0:
            line_start = block.rfind(b"\n", 0, at) + 1
            line_end = block.index(b"\n", at)
            line = block[line_start:line_end]
            if any(_usage_chunk(event) for event in _events(_payloads([line]))):
                kept.append(block[start:line_start])
                start = line_end + 1
                if start == len(block):
                    self._drop_blank = True  # its blank line comes with the next read
                else:
                    blank_end = block.index(b"\n", start)
                    if not block[start:blank_end].strip():
                        start = blank_end + 1
            at = block.find(b'"usage"', line_end)
        kept.append(block[start:])
        return b"".join(kept)

    def _take(self, events: Sequence[Any]) -> int:
        """Usage, first-choice text and tool calls of one read's events; returns how many were usage chunks.

        Once per event of every stream: the lookups of ``_take_usage`` and ``_choice_text`` are
        inlined here (what is not a dict where one is expected is skipped).
        """
        answer = self.answer
        texts = []
        usage_chunks = 0
        for event in events:
            if type(event) is not dict:
                continue
            if not answer.id:
                _take_identity(answer, event)
            usage = event.get("usage")
            if usage is not None and type(usage) is dict:
                answer.prompt_tokens = _count(usage.get("prompt_tokens"))
                answer.completion_tokens = _count(usage.get("completion_tokens"))
            choices = event.get("choices")
            if not choices:
                usage_chunks += choices == [] and type(usage) is dict
                continue
            if type(choices) is not list:
                continue
            for choice in choices:
                if type(choice) is not dict or choice.get("index", 0) != 0:
                    continue
                if choice.get("finish_reason") is not None:
                    _take_finish(answer, choice["finish_reason"])
                if "delta" in choice:
                    delta = choice["delta"]
                    if type(delta) is not dict:
                        continue
                    text = delta.get("content")
                    if "tool_calls" in delta:
                        answer.take_tool_calls(delta["tool_calls"])
                elif "message" in choice:
                    message = choice["message"]
                    text = message.get("content") if type(message) is dict else None
                else:
                    text = choice.get("text")
                if text and type(text) is str:
                    texts.append(text)
        if texts:
            # The read's text, kept up to MAX_CHECKED_CHARS in all (inlined: a method call and a min()
            # were a sixth of this per-event function).
            text = texts[0] if len(texts) == 1 else "".join(texts)
            size = len(text)
            answer.length += size
            room = MAX_CHECKED_CHARS - self._chars
            if size <= room:
                self._text.append(text)
                self._chars += size
            else:
                answer.truncated = True
                if room > 0:
                    self._text.append(text[:room])
                    self._chars += room
        return usage_chunks

    def _take_deferred(self) -> None:
        payloads, self._deferred, self._deferred_bytes = self._deferred, [], 0
        self._take(_events(payloads))

    def flush(self) -> bytes:
        """At the end of the stream: observe a last line that had no newline; returns what is
        still to pass on (only when stripping: otherwise it has passed already)."""
        if self._deferred:
            self._take_deferred()
        if not self._partial:
            return b""
        line = bytes(self._partial)
        self._partial.clear()
        usage_chunks = self._take(_events(_payloads([line])))
        if not self.strip_usage:
            return b""
        if self._drop_blank and not line.strip():
            return b""
        return b"" if usage_chunks else line

    def finish(self) -> Answer:
        self.flush()
        self.answer.text = "".join(self._text)
        return self.answer
