"""The stand-in's OpenAI-compatible HTTP server (aiohttp): the model stand-in, or with ``judge`` the judge stand-in.

Both are the same server (auth, model check, injected failures, metrics,
streaming, ``RECEIVED``); only the text differs: the fixture's answer to the
question, or the judge's verdict on a judge prompt (``judge.py``).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inferstack.standin import embeddings, fixtures, judge
from inferstack.standin.metrics import StandinMetrics


@dataclass(frozen=True)
class StandinSettings:
    served_model: str = "standin"
    latency_ms: float = 0.0  # added before a non-streamed answer
    ttft_ms: float = 0.0  # added before the first streamed chunk
    tokens_per_second: float = 0.0  # 0: stream as fast as possible
    fail_rate: float = 0.0  # share of requests answered with HTTP 500
    max_num_seqs: int = 256  # like vLLM: more concurrent requests wait
    api_key: str | None = None  # like vLLM's --api-key: /v1 requests need this bearer token
    judge: bool = False  # answer judge prompts with verdicts (judge.py) instead of answering questions
    judge_position_bias: bool = False  # a judge that says [[A]] where it should say [[C]]
    embedding_dimension: int = 64  # /v1/embeddings vector length, unless the request asks for `dimensions`


SETTINGS: web.AppKey[StandinSettings] = web.AppKey("settings", StandinSettings)
METRICS: web.AppKey[StandinMetrics] = web.AppKey("metrics", StandinMetrics)
SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("slots", asyncio.Semaphore)
# The last bodies received, so tests can see exactly what the router forwarded
# (in process, or over HTTP: GET /debug/received).
RECEIVED: web.AppKey[deque[dict[str, Any]]] = web.AppKey("received", deque)
# The W3C traceparent of each chat/completions request ("" when none), so tests can see the
# router passed its trace on (GET /debug/traceparents).
TRACEPARENTS: web.AppKey[deque[str]] = web.AppKey("traceparents", deque)


def _error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "code": code}}, status=status)


async def _models(request: web.Request) -> web.Response:
    model = request.app[SETTINGS].served_model
    return web.json_response(
        {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "inferstack-standin"}]}
    )


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="")


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _received(request: web.Request) -> web.Response:
    received: deque[dict[str, Any]] = request.app[RECEIVED]
    return web.json_response(list(received))


async def _traceparents(request: web.Request) -> web.Response:
    values: deque[str] = request.app[TRACEPARENTS]
    return web.json_response(list(values))


async def _embeddings(request: web.Request) -> web.Response:
    """OpenAI's ``/v1/embeddings``, as vLLM serves it for an embedding model."""
    settings = request.app[SETTINGS]
    if settings.api_key and request.headers.get("Authorization") != f"Bearer {settings.api_key}":
        return _error(401, "invalid or missing API key", "AuthenticationError")
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return _error(400, "request body is not JSON", "BadRequestError")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object", "BadRequestError")
    request.app[RECEIVED].append(body)
    if body.get("model") != settings.served_model:
        return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError", "model_not_found")
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return _error(400, "`input` must be a string or a non-empty array of strings", "BadRequestError")
    dimension = body.get("dimensions") or settings.embedding_dimension
    if type(dimension) is not int or not 1 <= dimension <= embeddings.MAX_DIMENSION:
        return _error(400, f"`dimensions` must be an integer from 1 to {embeddings.MAX_DIMENSION}", "BadRequestError")
    if settings.fail_rate and random.random() < settings.fail_rate:
        return _error(500, "injected failure (--fail-rate)", "InternalServerError")
    if settings.latency_ms:
        await asyncio.sleep(settings.latency_ms / 1000)
    tokens = sum(len(t.split()) for t in texts)
    data = [{"object": "embedding", "index": i, "embedding": embeddings.embed(t, dimension)} for i, t in enumerate(texts)]
    return web.json_response({"object": "list", "data": data, "model": settings.served_model,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def _completions(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    metrics = request.app[METRICS]
    if settings.api_key and request.headers.get("Authorization") != f"Bearer {settings.api_key}":
        return _error(401, "invalid or missing API key", "AuthenticationError")
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return _error(400, "request body is not JSON", "BadRequestError")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object", "BadRequestError")
    request.app[RECEIVED].append(body)
    request.app[TRACEPARENTS].append(request.headers.get("traceparent", ""))
    if body.get("model") != settings.served_model:
        return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError", "model_not_found")
    try:
        text = judge.verdict(body, position_bias=settings.judge_position_bias) if settings.judge else fixtures.answer_request(body)
    except judge.NotAJudgePrompt as exc:
        return _error(400, str(exc), "BadRequestError")
    if settings.fail_rate and random.random() < settings.fail_rate:
        return _error(500, "injected failure (--fail-rate)", "InternalServerError")

    slots = request.app[SLOTS]
    metrics.waiting.inc()
    async with slots:
        metrics.waiting.dec()
        metrics.running.inc()
        try:
            return await _generate(request, body, text, settings, metrics)
        finally:
            metrics.running.dec()


async def _generate(
    request: web.Request, body: dict[str, Any], text: str, settings: StandinSettings, metrics: StandinMetrics
) -> web.StreamResponse:
    started = time.perf_counter()
    chat = request.path.endswith("/chat/completions")
    n_prompt = fixtures.prompt_tokens(body)
    pieces = fixtures.split_tokens(text)
    usage = {"prompt_tokens": n_prompt, "completion_tokens": len(pieces), "total_tokens": n_prompt + len(pieces)}
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    metrics.prompt_tokens.inc(n_prompt)

    if not body.get("stream"):
        delay = settings.latency_ms / 1000
        if settings.tokens_per_second:
            delay += len(pieces) / settings.tokens_per_second
        if delay:
            await asyncio.sleep(delay)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        metrics.ttft.observe(time.perf_counter() - started)
        metrics.generation_tokens.inc(len(pieces))
        metrics.e2e_latency.observe(time.perf_counter() - started)
        metrics.success("stop")
        return web.json_response(
            {"id": rid, "object": obj, "created": created, "model": settings.served_model, "choices": [choice], "usage": usage}
        )

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    chunk_obj = "chat.completion.chunk" if chat else "text_completion"

    async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
        event = {"id": rid, "object": chunk_obj, "created": created, "model": settings.served_model, "choices": choices}
        event.update(extra)
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")

    if settings.ttft_ms:
        await asyncio.sleep(settings.ttft_ms / 1000)
    metrics.ttft.observe(time.perf_counter() - started)
    if chat:
        await send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    for piece in pieces:
        if settings.tokens_per_second:
            await asyncio.sleep(1 / settings.tokens_per_second)
        delta: dict[str, Any] = {"delta": {"content": piece}} if chat else {"text": piece}
        await send([{"index": 0, **delta, "finish_reason": None}])
        metrics.generation_tokens.inc()
    last: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
    await send([{"index": 0, **last, "finish_reason": "stop"}])
    if (body.get("stream_options") or {}).get("include_usage"):
        await send([], usage=usage)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    metrics.e2e_latency.observe(time.perf_counter() - started)
    metrics.success("stop")
    return response


# vLLM (uvicorn) sets no request-size limit; aiohttp's default, 1 MiB, refused in plain text what the router
# forwards (up to its own --max-request-bytes, 8 MiB, plus the bundle's prompt), which vLLM would take.
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def build_app(settings: StandinSettings) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[SETTINGS] = settings
    app[METRICS] = StandinMetrics(settings.served_model)
    app[SLOTS] = asyncio.Semaphore(settings.max_num_seqs)
    app[RECEIVED] = deque(maxlen=100)
    app[TRACEPARENTS] = deque(maxlen=100)
    app.router.add_post("/v1/chat/completions", _completions)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/debug/received", _received)
    app.router.add_get("/debug/traceparents", _traceparents)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    return app
