"""``inferstack-router``: the command line of the data plane."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from inferstack.eventloop import event_loop
from inferstack.router.app import build_app, serve
from inferstack.router.auth import AUTH_MODES, DEFAULT_MAX_KEYS_PER_NAMESPACE, Authenticator, KeySource
from inferstack.router.feedback import keys_from
from inferstack.router.keysource import FileKeySource, KubeKeySource
from inferstack.router.metrics import RouterMetrics
from inferstack.router.plansource import FilePlanSource, PlanSource
from inferstack.router.settings import RouterSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="inferstack-router", description="OpenAI-compatible router that applies traffic plans.")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080, help="The OpenAI API (clients).")
    p.add_argument("--metrics-port", type=int, default=9091, help="/metrics, /healthz and /readyz (kubelet, Prometheus); 0: off.")
    p.add_argument("--metrics-host", help="Address of --metrics-port; default: --host.")
    auth = p.add_argument_group("client authentication (docs/router.md, \"Authentication\")")
    auth.add_argument("--auth", choices=AUTH_MODES, default="api-keys",
                      help="api-keys: Authorization: Bearer <key> from key Secrets; trusted-proxy: the user from a header "
                      "set by a proxy in --trusted-proxy-cidrs; none: no authentication and no tenant (development only).")
    auth.add_argument("--api-key-file", help="Keys from this JSON file instead of key Secrets (local runs and tests).")
    auth.add_argument("--api-key-namespaces", default="",
                      help="Comma-separated namespaces whose key Secrets are listed and watched, one watch each (the "
                      "router then needs list/watch on Secrets there only). Default: --namespace, else all namespaces.")
    auth.add_argument("--max-keys-per-namespace", type=int, default=DEFAULT_MAX_KEYS_PER_NAMESPACE,
                      help="Key Secrets honoured per namespace; more are ignored and counted.")
    auth.add_argument("--trusted-proxy-cidrs", default="", help="trusted-proxy: comma-separated networks of the proxy (required).")
    auth.add_argument("--trusted-proxy-tenant-header", default="", help="trusted-proxy: header naming the user, e.g. x-forwarded-user (required).")
    auth.add_argument("--trusted-proxy-record-content-header", default="",
                      help="trusted-proxy: header in which the proxy says whether its user allows the recording of message "
                      "contents (anything but \"true\" opts out; absent: the stack decides), e.g. x-record-content.")
    src = p.add_argument_group("plan sources (the Kubernetes API unless --plan-file is given)")
    src.add_argument("--plan-file", help="A plan JSON file or a directory of them, polled (local runs and tests).")
    src.add_argument("--plan-poll-interval", type=float, default=0.5, help="Seconds between --plan-file polls.")
    src.add_argument("--kubeconfig", help="Kubeconfig file; default: in-cluster config, else ~/.kube/config.")
    src.add_argument("--in-cluster", action="store_true", help="Use the pod's service account (the default inside a pod).")
    src.add_argument("--namespace", help="Watch plans in this namespace only; default: all namespaces.")
    src.add_argument(
        "--count-legacy-plans", action="store_true",
        help="Also watch the metadata of ConfigMaps labelled inferstack.dev/traffic-plan (the old plan kind), only to log "
        "and count them as ignored (plans_ignored_total{reason=\"configmap\"}); needs list/watch on configmaps.",
    )  # fmt: skip
    p.add_argument("--shadow-queue-limit", type=int, default=256, help="Mirrored requests in flight before new ones are dropped.")
    p.add_argument("--judge-queue-limit", type=int, default=256, help="Judge jobs waiting before new ones are dropped.")
    p.add_argument("--judge-workers", type=int, default=8, help="Judge calls in flight at once.")
    p.add_argument("--upstream-timeout", type=float, default=120.0, help="Seconds for a whole answer, or between streamed chunks.")
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--slice-header", default="x-inferstack-slice", help="Request header naming the traffic slice.")
    p.add_argument("--slices", default="", help="Comma-separated slice allowlist; others become 'other'.")
    lim = p.add_argument_group("limits (hostile input never grows memory or label values)")
    lim.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024, help="Largest request body; more is a 413.")
    lim.add_argument("--request-read-timeout", type=float, default=30.0,
                     help="Seconds to receive a whole request body (a deadline, not an idle timeout); past it a JSON 408.")
    lim.add_argument("--max-json-depth", type=int, default=64, help="Deepest JSON nesting of a request body; deeper is a 400.")
    lim.add_argument("--max-output-tokens", type=int, default=131_072, help="Ceiling of max_tokens / max_completion_tokens.")
    lim.add_argument("--cache-max-bytes", type=int, default=64 * 1024 * 1024,
                     help="Bytes held by all response caches of this router together (least recently used evicted first).")
    lim.add_argument("--cache-max-entry-bytes", type=int, default=256 * 1024, help="A larger answer is not cached.")
    lim.add_argument("--max-concurrent-streams", type=int, default=1024, help="Client-facing streams at once; more get a 429.")
    lim.add_argument("--stream-write-timeout", type=float, default=30.0,
                     help="Seconds a streamed write may wait for a client that stopped reading before it is disconnected.")
    p.add_argument("--store-max-connections", type=int, default=4,
                   help="Connections per vector store (one DSN), shared by the stacks that name it.")
    p.add_argument("--no-candidate-fallback", action="store_true", help="Do not retry candidate connect errors on stable.")
    p.add_argument(
        "--feedback-key-file",
        help="File with the key(s) that sign response ids, one per line (the first signs); shared by every replica. "
        "Default: $INFERSTACK_FEEDBACK_KEY, else a random key of this process.",
    )
    p.add_argument("--feedback-seen-limit", type=int, default=65_536, help="Response ids remembered to refuse duplicate feedback.")
    obs = p.add_argument_group("traces and audit log (docs/router.md, \"Traces and audit log\")")
    obs.add_argument("--otlp-endpoint", default=None,
                     help="Send OpenTelemetry traces (OTLP over HTTP) to this collector, e.g. http://otel-collector:4318. "
                     "Default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, $OTEL_EXPORTER_OTLP_ENDPOINT, else no tracing.")
    obs.add_argument("--trace-sample-rate", type=float, default=0.1,
                     help="Share of requests traced (0..1), decided by the router whatever a client's traceparent says.")
    obs.add_argument("--audit-log", action="store_true", help="Write one JSON line per request (and per later evaluation) to stdout.")
    p.add_argument("--shutdown-timeout", type=float, default=30.0, help="Seconds to drain in-flight streams on SIGTERM.")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> RouterSettings:
    return RouterSettings(
        upstream_timeout=args.upstream_timeout,
        connect_timeout=args.connect_timeout,
        shadow_queue_limit=args.shadow_queue_limit,
        judge_queue_limit=args.judge_queue_limit,
        judge_workers=args.judge_workers,
        store_max_connections=args.store_max_connections,
        slice_header=args.slice_header,
        slices=tuple(s.strip() for s in args.slices.split(",") if s.strip()),
        candidate_fallback=not args.no_candidate_fallback,
        max_request_bytes=args.max_request_bytes,
        request_read_timeout=args.request_read_timeout,
        max_json_depth=args.max_json_depth,
        max_output_tokens=args.max_output_tokens,
        cache_max_bytes=args.cache_max_bytes,
        cache_max_entry_bytes=args.cache_max_entry_bytes,
        max_concurrent_streams=args.max_concurrent_streams,
        stream_write_timeout=args.stream_write_timeout,
        feedback_keys=keys_from(args.feedback_key_file),
        feedback_seen_limit=args.feedback_seen_limit,
        auth=args.auth,
        trusted_proxy_cidrs=tuple(c.strip() for c in args.trusted_proxy_cidrs.split(",") if c.strip()),
        trusted_proxy_tenant_header=args.trusted_proxy_tenant_header.strip(),
        trusted_proxy_record_content_header=args.trusted_proxy_record_content_header.strip(),
        max_keys_per_namespace=args.max_keys_per_namespace,
        otlp_endpoint=otlp_endpoint(args.otlp_endpoint),
        trace_sample_rate=args.trace_sample_rate,
        audit_log=args.audit_log,
    )


def otlp_endpoint(flag: str | None) -> str | None:
    """The flag, else the OpenTelemetry SDK's own variables (a traces endpoint is used as given)."""
    if flag:
        return flag
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


def sources_from(args: argparse.Namespace, metrics: RouterMetrics) -> list[PlanSource]:
    if args.plan_file:
        return [FilePlanSource(args.plan_file, metrics, interval=args.plan_poll_interval)]
    from inferstack.router.kubesource import KubePlanSource  # the kubernetes client is slow to import

    return [KubePlanSource(metrics, namespace=args.namespace, kubeconfig=args.kubeconfig, in_cluster=args.in_cluster,
                           legacy_configmaps=args.count_legacy_plans)]


def key_sources_from(args: argparse.Namespace, auth: Authenticator) -> list[KeySource]:
    if auth.mode != "api-keys":
        return []
    if args.api_key_file:
        return [FileKeySource(args.api_key_file, auth.keys, interval=args.plan_poll_interval)]
    return [KubeKeySource(auth.keys, namespace=ns, kubeconfig=args.kubeconfig, in_cluster=args.in_cluster)
            for ns in key_namespaces(args)]


def key_namespaces(args: argparse.Namespace) -> list[str | None]:
    """The namespaces whose key Secrets are watched, one source each; ``[None]``: every namespace."""
    listed: list[str | None] = list(dict.fromkeys(ns.strip() for ns in args.api_key_namespaces.split(",") if ns.strip()))
    if listed and args.namespace:
        raise ValueError("--api-key-namespaces and --namespace: --namespace already limits the key Secrets to its namespace")
    return listed or [args.namespace]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not 0.0 <= args.trace_sample_rate <= 1.0:
        raise SystemExit("inferstack-router: --trace-sample-rate must be within 0..1")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    metrics = RouterMetrics()
    settings = settings_from(args)
    try:
        auth = Authenticator.from_settings(settings, metrics.registry)
    except ValueError as exc:
        raise SystemExit(f"inferstack-router: {exc}") from None
    try:
        auth.sources = key_sources_from(args, auth)
    except ValueError as exc:
        raise SystemExit(f"inferstack-router: {exc}") from None
    app = build_app(settings=settings, sources=sources_from(args, metrics), metrics=metrics, auth=auth)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, args.host, args.port, admin_host=args.metrics_host or args.host, admin_port=args.metrics_port,
                    shutdown_timeout=args.shutdown_timeout, stop=stop)

    with asyncio.Runner(loop_factory=event_loop) as runner:
        runner.run(run())

if __name__ == "__main__":
    main()
