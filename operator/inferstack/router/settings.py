"""Router settings, filled from the command line by :mod:`inferstack.router.main`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RouterSettings:
    upstream_timeout: float = 120.0  # seconds: whole answer (non-streamed) or gap between chunks (streamed)
    connect_timeout: float = 5.0
    shadow_queue_limit: int = 256  # mirrors in flight; more are dropped and counted
    slice_header: str = "x-inferstack-slice"
    slices: tuple[str, ...] = ()  # allowlist of slice label values; empty: first 32 seen
    candidate_fallback: bool = True  # retry a candidate connect error once on stable
    max_request_bytes: int = 8 * 1024 * 1024
    max_response_bytes: int = 16 * 1024 * 1024  # non-streamed answers are read whole; bound them
    max_connections: int = 1024  # to all backends together
