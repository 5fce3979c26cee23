"""Router settings, filled from the command line by :mod:`inferstack.router.main`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RouterSettings:
    upstream_timeout: float = 120.0  # seconds: whole answer (non-streamed) or gap between chunks (streamed)
    connect_timeout: float = 5.0
    shadow_queue_limit: int = 256  # mirrors in flight; more are dropped and counted
    slice_header: str = "x-inferstack-slice"
    slices: tuple[str, ...] = ()  # allowlist of slice label values; others "other", none at all "default"
    candidate_fallback: bool = True  # retry a candidate connect error once on stable
    max_request_bytes: int = 8 * 1024 * 1024  # a larger body is a JSON 413 (router/requests.py)
    request_read_timeout: float = 30.0  # seconds to receive a whole request body; past it a JSON 408
    max_json_depth: int = 64  # a body nested deeper is a 400
    max_output_tokens: int = 131_072  # ceiling of a request's max_tokens / max_completion_tokens
    cache_max_bytes: int = 64 * 1024 * 1024  # all response caches of this router together
    cache_max_entry_bytes: int = 256 * 1024  # a larger answer is not cached
    max_concurrent_streams: int = 1024  # client-facing streams at once; more get a 429
    stream_write_timeout: float = 30.0  # seconds a streamed write may wait for a client that stopped reading
    max_response_bytes: int = 16 * 1024 * 1024  # non-streamed answers are read whole; bound them
    max_connections: int = 1024  # to all backends together
    store_max_connections: int = 4  # per vector store (one DSN), shared by every stack that names it
    judge_queue_limit: int = 256  # judge jobs waiting; more are dropped and counted
    judge_workers: int = 8  # judge calls in flight at once (per router replica)
    # Keys that sign response ids (the first signs, all verify); every replica must
    # share them. Empty: a random key of this process (feedback only on this replica).
    feedback_keys: tuple[bytes, ...] = field(default=(), repr=False)
    feedback_seen_limit: int = 65_536  # response ids remembered to refuse duplicate feedback
    # Client authentication (router/auth.py): api-keys (default), trusted-proxy or none (development only).
    auth: str = "api-keys"
    trusted_proxy_cidrs: tuple[str, ...] = ()  # trusted-proxy: peers whose tenant header is believed
    trusted_proxy_tenant_header: str = ""
    trusted_proxy_record_content_header: str = ""  # trusted-proxy: the user's content-recording choice; "": none
    max_keys_per_namespace: int = 1000
    # Traces (router/tracing.py): OTLP/HTTP endpoint of a collector; None: no tracing at all.
    otlp_endpoint: str | None = None
    trace_sample_rate: float = 0.1  # share of requests traced, decided by the router (not by a client's traceparent)
    audit_log: bool = False  # one JSON line per request on stdout (router/audit.py); the chart turns it on
