"""vLLM's own metric names, so gates and dashboards written for vLLM work against the stand-in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# vLLM's latency buckets (seconds), abbreviated.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)


class StandinMetrics:
    """One registry per server, so tests can run several stand-ins in one process."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        labels = ["model_name"]
        r = self.registry
        self.e2e_latency = Histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency.", labels, registry=r, buckets=_LATENCY_BUCKETS
        ).labels(model_name)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", labels, registry=r, buckets=_LATENCY_BUCKETS
        ).labels(model_name)
        self.running = Gauge("vllm:num_requests_running", "Requests being generated.", labels, registry=r).labels(model_name)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting for a slot.", labels, registry=r).labels(model_name)
        # prometheus-client appends _total to counters itself.
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", labels, registry=r).labels(model_name)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Generation tokens produced.", labels, registry=r
        ).labels(model_name)
        self._success = Counter(
            "vllm:request_success", "Finished requests.", [*labels, "finished_reason"], registry=r
        )

    def success(self, finished_reason: str) -> None:
        self._success.labels(self.model_name, finished_reason).inc()
