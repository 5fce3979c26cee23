"""Talking to a revision's backend: send a request, read or observe its answer.

Streamed answers are passed through chunk by chunk; :class:`SSEObserver`
looks at them on the way for usage and answer text, keeping only bounded state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from inferstack.core.trafficplan import RevisionBundle
from inferstack.router.errors import UpstreamError, classify
from inferstack.router.evaluators import MAX_CHECKED_CHARS

_MAX_SSE_LINE = 1024 * 1024  # a longer line is not parsed (and the answer is marked truncated)
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


def timeout_for(stream: bool, upstream_timeout: float, connect_timeout: float) -> aiohttp.ClientTimeout:
    # A stream may legitimately run for minutes; bound the silence between chunks instead.
    return aiohttp.ClientTimeout(
        total=None if stream else upstream_timeout, sock_connect=connect_timeout, sock_read=upstream_timeout
    )


async def send(
    session: aiohttp.ClientSession,
    bundle: RevisionBundle,
    path: str,
    body: dict[str, Any],
    *,
    request_id: str,
    timeout: aiohttp.ClientTimeout,
) -> aiohttp.ClientResponse:
    """POST ``body`` to the backend; a 5xx or a transport failure raises :class:`UpstreamError`.

    The caller owns the returned response and must release or close it.
    """
    headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
    if bundle.api_key:
        headers["Authorization"] = f"Bearer {bundle.api_key}"
    try:
        response = await session.post(bundle.url.rstrip("/") + path, data=json.dumps(body), headers=headers, timeout=timeout)
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


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes (no unbounded buffers)."""
    buf = bytearray()
    try:
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
    if "delta" in choice:
        return (choice.get("delta") or {}).get("content") or ""
    if "message" in choice:
        return (choice.get("message") or {}).get("content") or ""
    return choice.get("text") or ""


def _take_usage(answer: Answer, event: dict[str, Any]) -> None:
    usage = event.get("usage")
    if isinstance(usage, dict):
        answer.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        answer.completion_tokens = int(usage.get("completion_tokens") or 0)


def parse_answer(body: bytes) -> Answer:
    """Usage and first-choice text of a non-streamed answer."""
    answer = Answer()
    try:
        event = json.loads(body)
    except ValueError:
        return answer
    if not isinstance(event, dict):
        return answer
    _take_usage(answer, event)
    choices = event.get("choices") or []
    if choices and isinstance(choices[0], dict):
        text = _choice_text(choices[0])
        answer.text = text[:MAX_CHECKED_CHARS]
        answer.truncated = len(text) > MAX_CHECKED_CHARS
        answer.length = len(text)
        message = choices[0].get("message")
        if isinstance(message, dict):
            answer.take_tool_calls(message.get("tool_calls"))
    return answer


@dataclass
class SSEObserver:
    """Reads SSE events as bytes pass through; never holds more than one partial line."""

    answer: Answer = field(default_factory=Answer)
    _partial: bytearray = field(default_factory=bytearray)
    _text: list[str] = field(default_factory=list)
    _chars: int = 0

    def feed(self, chunk: bytes) -> None:
        self._partial += chunk
        if b"\n" not in chunk:
            if len(self._partial) > _MAX_SSE_LINE:
                self._partial.clear()
                self.answer.truncated = True
            return
        *lines, rest = bytes(self._partial).split(b"\n")
        self._partial = bytearray(rest)
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:"):
            return
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        _take_usage(self.answer, event)
        for choice in event.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._add_text(_choice_text(choice))
                delta = choice.get("delta")
                if isinstance(delta, dict) and "tool_calls" in delta:
                    self.answer.take_tool_calls(delta["tool_calls"])

    def _add_text(self, text: str) -> None:
        if not text:
            return
        self.answer.length += len(text)
        room = MAX_CHECKED_CHARS - self._chars
        if room <= 0:
            self.answer.truncated = True
            return
        self._text.append(text[:room])
        self._chars += min(len(text), room)
        if len(text) > room:
            self.answer.truncated = True

    def finish(self) -> Answer:
        if self._partial:
            self._line(bytes(self._partial))
            self._partial.clear()
        self.answer.text = "".join(self._text)
        return self.answer
