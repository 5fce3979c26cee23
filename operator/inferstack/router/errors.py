"""Errors as OpenAI-style JSON, so clients' own error handling works through the router."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web


class UpstreamError(Exception):
    """A backend failure, with the metric ``kind`` and the HTTP status the client gets."""

    def __init__(self, kind: str, status: int, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message


def classify(exc: BaseException) -> UpstreamError:
    """Map a client-side exception talking to a backend to a kind and a status.

    Order matters: connector errors are OSErrors and timeouts are
    asyncio.TimeoutError subclasses in aiohttp.
    """
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamError("timeout", 504, "the model server did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError("connect", 502, f"cannot connect to the model server: {exc.os_error or exc}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return UpstreamError("upstream_disconnect", 502, "the model server closed the connection mid-answer")
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamError("upstream_io", 502, f"error talking to the model server: {exc}")
    return UpstreamError("internal", 500, f"router error: {type(exc).__name__}")


_TYPES = {400: "invalid_request_error", 404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          502: "upstream_error", 503: "service_unavailable",
          504: "timeout", 500: "server_error"}


def error_response(status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "code": code, "param": None}}
    return web.json_response(body, status=status, headers=headers)
