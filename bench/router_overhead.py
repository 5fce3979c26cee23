"""Router overhead: the same load against a stand-in directly and through the router.

Starts a stand-in (stable), a second stand-in (shadow target) and a router as
subprocesses on loopback, then for each mode (direct; through the router,
with ``--auth none``; through a second router that checks an API key on every
request, ``+auth``, as every production router does; the router running four declared rule-check evaluators on every answer; the same
plus a rubric LLM judge on 10 % of answers, served by a judge stand-in
(``inferstack-standin --judge``); the router mirroring every request to a
shadow) drives (a) a fixed open-loop rate
and (b) closed-loop maximum throughput, and prints one table:
latency p50/p99, latency added by the router, achieved req/s, and the router
process's CPU seconds per request (from /proc/<pid>/stat) turned into req/s
per core.

    .venv/bin/python bench/router_overhead.py --duration 10 --rate 500

The load generator shares the machine's cores with the processes it measures;
the CPU column counts the router process only, which is what sizes replicas.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from inferstack.core.apikeys import generate_key, key_digest

QUESTION = {"role": "user", "content": "Where is my parcel?"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
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
    # Fields 14 and 15 of /proc/<pid>/stat: utime and stime in clock ticks.
    # The command name (field 2) may contain spaces, so split after its ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Result:
    mode: str
    load: str
    latencies: list[float]
    errors: int
    elapsed: float
    cpu: float | None  # router CPU seconds during the run
    judge: dict[str, float] | None = None  # judge samples, drops, errors during the run

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed


async def one_request(session: aiohttp.ClientSession, url: str, body: bytes, stream: bool) -> float | None:
    started = time.perf_counter()
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            # Read to the end either way: a stream's latency is until its last chunk.
            async for _ in resp.content.iter_any():
                pass
            if resp.status != 200:
                return None
    except aiohttp.ClientError:
        return None
    return time.perf_counter() - started


async def fixed_rate(url: str, body: bytes, stream: bool, rate: float, duration: float,
                     headers: dict[str, str] | None = None) -> tuple[list[float], int, float]:
    """Open loop: request i starts at i/rate whatever happened before (no coordinated omission)."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async def fire() -> None:
            nonlocal errors
            latency = await one_request(session, url, body, stream)
            if latency is None:
                errors += 1
            else:
                latencies.append(latency)

        tasks = []
        start = time.perf_counter()
        total = int(rate * duration)
        for i in range(total):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fire()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


async def max_throughput(url: str, body: bytes, stream: bool, concurrency: int, duration: float,
                         headers: dict[str, str] | None = None) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                latency = await one_request(session, url, body, stream)
                if latency is None:
                    errors += 1
                else:
                    latencies.append(latency)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


# The declared rule checks a stack might run on every answer (router/evaluators.py).
EVALUATION = {
    "slices": ["billing", "shipping", "general"],
    "evaluators": [
        {"name": "no-refusal", "rule": {"refusal": {}}},
        {"name": "cites-policy", "rule": {"mustMatch": "(?i)refund (window|policy)"}},
        {"name": "no-promises", "rule": {"mustNotMatch": "(?i)guarantee[ds]?"}},
        {"name": "brief", "rule": {"maxLength": 2000}},
    ],
}


# A rubric judge on 10 % of answers (chosen by request id), off the request path (router/judge.py).
# Its budget is high enough that every sampled answer is judged at the bench's rates.
JUDGE_RATE = 0.1


def judge_evaluator(judge_url: str) -> dict:
    return {"name": "quality", "judge": {
        "mode": "Rubric", "endpoint": {"url": judge_url + "/v1", "model": "judge"},
        "criteria": "Correct, helpful and polite answers to support questions.",
        "sampleRate": JUDGE_RATE, "maxCallsPerMinute": 100_000, "timeout": "5s",
    }}


def write_plan(path: Path, stable_url: str, shadow_url: str, shadow: bool, serial: int, evaluators: bool = False,
               judge_url: str | None = None) -> None:
    plan = {
        "stack": "bench",
        "namespace": "bench",
        "serial": serial,
        "shadowPercent": 100 if shadow else 0,
        "stable": {"revision": "rev-a", "url": stable_url, "servedModel": "model-a", "cacheNamespace": "bench.rev-a",
                   "systemPrompt": "You are the support assistant."},
        "candidate": {"revision": "rev-b", "url": shadow_url, "servedModel": "model-b", "cacheNamespace": "bench.rev-b",
                      "systemPrompt": "You are the support assistant."},
    }
    if evaluators:
        plan["evaluation"] = EVALUATION
    if judge_url is not None:
        plan["evaluation"] = {**EVALUATION, "evaluators": [*EVALUATION["evaluators"], judge_evaluator(judge_url)]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(plan))
    os.replace(tmp, path)


def wait_serial(router_url: str, serial: int) -> None:
    deadline = time.monotonic() + 10
    needle = f'inferstack_router_plan_serial{{namespace="bench",stack="bench"}} {float(serial)}'
    while needle not in urllib.request.urlopen(router_url + "/metrics", timeout=2).read().decode():
        if time.monotonic() > deadline:
            raise SystemExit("router did not load the plan")
        time.sleep(0.05)


def judge_counts(router_url: str) -> dict[str, float]:
    """The router's judge counters, summed over labels: samples recorded, jobs dropped, calls failed."""
    text = urllib.request.urlopen(router_url + "/metrics", timeout=2).read().decode()
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


def wait_judged(router_url: str, timeout: float = 30.0, quiet: float = 1.0) -> None:
    """Until the judge counters have not moved for ``quiet`` seconds (the queue has drained)."""
    deadline = time.monotonic() + timeout
    last, since = judge_counts(router_url), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.1)
        now = judge_counts(router_url)
        if now != last:
            last, since = now, time.monotonic()


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=log.open("wb"), stderr=subprocess.STDOUT)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="Seconds per measurement.")
    p.add_argument("--rate", type=float, default=500.0, help="Fixed open-loop rate in req/s.")
    p.add_argument("--concurrency", type=int, default=32, help="Workers for the max-throughput runs.")
    p.add_argument("--skip-max", action="store_true", help="Only the fixed-rate runs.")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="router-bench-"))
    ports = {name: free_port() for name in ("stable", "shadow", "judge", "router", "router-metrics", "auth", "auth-metrics")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    # The "+auth" rows go to a second router that checks an API key on every request
    # (--auth api-keys, the default); the other rows' router runs with --auth none.
    key = generate_key()
    keys_path = work / "keys.json"
    keys_path.write_text(json.dumps([{"namespace": "bench", "name": "bench", "sha256": key_digest(key).hex(),
                                      "tenant": "bench", "stacks": "*"}]))  # fmt: skip
    plan_path = work / "plan.json"
    write_plan(plan_path, urls["stable"], urls["shadow"], shadow=False, serial=1)
    procs = [
        spawn(["inferstack.standin.main", "--port", str(ports["stable"]), "--served-model", "model-a",
               "--max-num-seqs", "4096"], work / "stable.log"),
        spawn(["inferstack.standin.main", "--port", str(ports["shadow"]), "--served-model", "model-b",
               "--max-num-seqs", "4096"], work / "shadow.log"),
        spawn(["inferstack.standin.main", "--judge", "--port", str(ports["judge"]), "--served-model", "judge",
               "--max-num-seqs", "4096"], work / "judge.log"),
    ]
    routers = {
        name: spawn(["inferstack.router.main", "--host", "127.0.0.1", "--port", str(ports[name]),
                     "--metrics-port", str(ports[f"{name}-metrics"]), *auth,
                     "--plan-file", str(plan_path), "--plan-poll-interval", "0.1", "--log-level", "ERROR",
                     "--shadow-queue-limit", "256"], work / f"{name}.log")
        for name, auth in (("router", ["--auth", "none"]), ("auth", ["--auth", "api-keys", "--api-key-file", str(keys_path)]))
    }  # fmt: skip
    procs.extend(routers.values())
    try:
        wait_http(urls["stable"] + "/health")
        wait_http(urls["shadow"] + "/health")
        wait_http(urls["judge"] + "/health")
        wait_http(urls["router-metrics"] + "/readyz")
        wait_http(urls["auth-metrics"] + "/readyz")
        results = run_all(args, urls, plan_path, {name: r.pid for name, r in routers.items()}, key)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
    print_table(results, args)


def run_all(args: argparse.Namespace, urls: dict[str, str], plan_path: Path, pids: dict[str, int], key: str) -> list[Result]:
    results: list[Result] = []
    serial = 1
    loads = [("rate", f"{args.rate:g}/s")] + ([] if args.skip_max else [("max", f"max c={args.concurrency}")])
    for stream in (False, True):
        for target, shadow, evaluators, judged in (
            ("direct", False, False, False), ("router", False, False, False), ("auth", False, False, False),
            ("router", False, True, False), ("router", False, True, True), ("router", True, False, False),
        ):
            serial += 1
            write_plan(plan_path, urls["stable"], urls["shadow"], shadow=shadow, serial=serial, evaluators=evaluators,
                       judge_url=urls["judge"] if judged else None)
            wait_serial(urls["router-metrics"], serial)
            wait_serial(urls["auth-metrics"], serial)
            base = urls["stable"] if target == "direct" else urls[target]
            model = "model-a" if target == "direct" else "bench"
            body = json.dumps({"model": model, "messages": [QUESTION], "stream": stream}).encode()
            headers = {"Authorization": f"Bearer {key}"} if target == "auth" else None
            router_pid = pids.get(target)
            mode = f"{'router' if target == 'auth' else target} {'stream' if stream else 'non-stream'}" + (
                " +auth" if target == "auth" else "") + (" shadow" if shadow else "") + (
                " +4 rule checks" if evaluators else ""
            ) + (f" +judging {JUDGE_RATE:.0%}" if judged else "")
            for kind, label in loads:
                # Warm-up: connections, code paths, metric series.
                asyncio.run(max_throughput(base + "/v1/chat/completions", body, stream, 4, 0.5, headers))
                if judged:
                    wait_judged(urls["router-metrics"])  # the warm-up's judge calls are not this row's
                judge_before = judge_counts(urls["router-metrics"]) if judged else None
                cpu_before = cpu_seconds(router_pid) if router_pid else 0.0
                if kind == "rate":
                    lat, err, elapsed = asyncio.run(fixed_rate(base + "/v1/chat/completions", body, stream, args.rate,
                                                               args.duration, headers))
                else:
                    lat, err, elapsed = asyncio.run(max_throughput(base + "/v1/chat/completions", body, stream,
                                                                   args.concurrency, args.duration, headers))
                if judge_before is not None:
                    # The judge's calls finish off the request path: wait for the queue to drain so
                    # their CPU is counted in this row, then count what was judged, dropped or failed.
                    wait_judged(urls["router-metrics"])
                cpu = cpu_seconds(router_pid) - cpu_before if router_pid else None
                result = Result(mode, label, lat, err, elapsed, cpu)
                if judge_before is not None:
                    after = judge_counts(urls["router-metrics"])
                    result.judge = {k: after[k] - judge_before[k] for k in after}
                results.append(result)
                print(f"  done: {mode:28} {label:12} {result.rps:8.0f} req/s, {err} errors", file=sys.stderr, flush=True)
    return results


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    direct = {(r.mode.split()[1], r.load): r for r in results if r.mode.startswith("direct")}
    print(f"\nduration {args.duration:g}s per row, {os.cpu_count()} cores shared by load generator, router and stand-ins\n")
    print("| mode | load | p50 ms | p99 ms | +p50 ms | +p99 ms | req/s | errors | router CPU ms/req | req/s per core |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        p50, p99 = percentile(r.latencies, 50) * 1000, percentile(r.latencies, 99) * 1000
        base = direct[(r.mode.split()[1], r.load)]
        if r.mode.startswith("router"):
            added50 = f"{p50 - percentile(base.latencies, 50) * 1000:+.2f}"
            added99 = f"{p99 - percentile(base.latencies, 99) * 1000:+.2f}"
        else:
            added50 = added99 = "-"
        if r.cpu is not None and r.latencies:
            per_req = r.cpu / len(r.latencies)
            cpu_cols = f"{per_req * 1000:.3f} | {1 / per_req:,.0f}" if per_req > 0 else "0 | -"
        else:
            cpu_cols = "- | -"
        print(f"| {r.mode} | {r.load} | {p50:.2f} | {p99:.2f} | {added50} | {added99} | {r.rps:,.0f} | {r.errors} | {cpu_cols} |")
    judged = [r for r in results if r.judge is not None]
    if judged:
        print("\nJudging rows (the judge runs off the request path; its CPU is in the row's router CPU):\n")
        print("| mode | load | answers | judged | judged % | dropped | judge errors |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in judged:
            assert r.judge is not None
            share = r.judge["samples"] / len(r.latencies) * 100 if r.latencies else float("nan")
            print(f"| {r.mode} | {r.load} | {len(r.latencies)} | {r.judge['samples']:.0f} | {share:.1f} | "
                  f"{r.judge['dropped']:.0f} | {r.judge['errors']:.0f} |")


if __name__ == "__main__":
    main()
