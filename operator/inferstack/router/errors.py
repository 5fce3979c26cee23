"""Errors as OpenAI-style JSON, so clients' own error handling works through the router."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp

from inferstack.router.server import Response


class UpstreamError(Exception):
    """A backend failure, with the metric ``kind`` and the HTTP status the client gets.

    ``message`` is what the client is told: generic, never a model server's
    body nor an internal address. ``detail`` is for the router's log only (the
    caller redacts the endpoint's token from it: :func:`redact`).
    """

    def __init__(self, kind: str, status: int, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message
        self.detail = detail or message


def redact(text: str, *secrets: str | None) -> str:
    """``text`` for a log line: each secret (and its base64 form) replaced, control characters escaped."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
            text = text.replace(base64.b64encode(secret.encode()).decode(), "<redacted>")
    return text.encode("unicode_escape").decode("ascii")


def classify(exc: BaseException) -> UpstreamError:
    """Map a client-side exception talking to a backend to a kind and a status.

    Order matters: connector errors are OSErrors and timeouts are
    asyncio.TimeoutError subclasses in aiohttp.
    """
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamError("timeout", 504, "the model server did not answer in time", repr(exc))
    if isinstance(exc, aiohttp.ClientConnectorError):
        # The address stays in the log: clients learn nothing of the cluster's insides.
        return UpstreamError("connect", 502, "cannot connect to the model server", f"{exc.os_error or exc}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return UpstreamError("upstream_disconnect", 502, "the model server closed the connection mid-answer", repr(exc))
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamError("upstream_io", 502, "error talking to the model server", repr(exc))
    return UpstreamError("internal", 500, "router error", repr(exc))


_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error", 404: "invalid_request_error",
          408: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 502: "upstream_error", 503: "service_unavailable",
          504: "timeout", 500: "server_error"}


def error_response(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, *, param: str | None = None,
) -> Response:
    body = {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "code": code, "param": param}}
    return json_response(body, status, headers)


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data).encode(), status, headers, content_type="application/json; charset=utf-8")
