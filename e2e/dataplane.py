"""The data plane around the local control plane: stand-in model server, router, operator, load.

Used by the e2e tests, the demo and the benchmarks, so all three run the same
real processes the same way:

* one vLLM stand-in (no GPU here) on a loopback port. Every revision's
  backend URL points at it (``backendUrlTemplate``); what differs between
  revisions is what the router sends, i.e. the revision's system prompt, so
  a bad prompt gives measurably worse answers on one slice;
* the router, watching traffic plans through the real API server;
* the operator, with Prometheus (started by ``e2e/cluster.py up``) as its
  gate source;
* optionally (``judge=True``) a judge stand-in (``inferstack-standin --judge``)
  at ``judge_url``, which judges answers by the stand-in's fixture table;
* Prometheus scrape targets written to the harness's file_sd directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"

# Slice mix of the generated traffic: billing is small, so a candidate that
# fails only billing still passes an aggregate comparison.
SLICE_QUESTIONS = {
    "billing": ["How do I get a refund?", "Why was I charged twice?", "Can I change my payment method?"],
    "shipping": ["Where is my parcel?", "Do you ship to Canada?", "Can I change the delivery address?"],
    "general": ["What are your opening hours?", "How do I reset my password?", "Who are you?"],
}
SLICE_WEIGHTS = {"billing": 0.04, "shipping": 0.36, "general": 0.60}


def load_env() -> None:
    """Take KUBECONFIG, the built binaries and Prometheus from .run/env (written by `make cluster-up`)."""
    env_file = Path(os.environ.get("INFERSTACK_RUN_DIR", REPO / ".run")) / "env"
    if not env_file.exists():
        return
    for line in env_file.read_text().splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        os.environ.setdefault(k, v)
    if os.environ.get("INFERSTACK_BIN") and os.environ["INFERSTACK_BIN"] not in os.environ["PATH"]:
        os.environ["PATH"] = f"{os.environ['INFERSTACK_BIN']}:{os.environ['PATH']}"


def kubectl(*args: str, input: str | None = None, timeout: float = 120) -> str:
    """kubectl's stdout; a failure raises with kubectl's own message."""
    proc = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def wait_established(*crds: str, timeout: float = 30) -> None:
    """Until every named CRD is Established. Not `kubectl wait --for=condition=Established`:
    on a CRD created a moment ago, before the API server wrote any condition, that
    fails at once ("<nil> is of the type <nil>") instead of waiting."""

    def established(crd: str) -> bool:
        proc = subprocess.run(
            ["kubectl", "get", "crd", crd, "-o", 'jsonpath={.status.conditions[?(@.type=="Established")].status}'],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return proc.returncode == 0 and proc.stdout.strip() == "True"

    wait_for(f"CRDs {', '.join(crds)} Established", lambda: all(established(c) for c in crds), timeout=timeout)


class TcpGate:
    """A TCP forwarder to one local port that a test can close and open again, on its own port.

    The rollout e2e takes Prometheus down for its operator alone this way: the harness's
    Prometheus is shared by the tests that run beside it (`make test` runs modules side by
    side), and stopping it failed theirs. ``down()`` stops listening and cuts the open
    connections (a client gets "connection refused", as from a stopped server); ``up()``
    listens on the same port again.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def start(self) -> TcpGate:
        self._thread.start()
        self.up()
        return self

    def up(self) -> None:
        async def listen() -> None:
            if self._server is None:
                self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

        self._run(listen())

    def down(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None
            for writer in list(self._open):
                writer.transport.abort()

        self._run(close())

    def stop(self) -> None:
        self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()  # one side ended: so does the other

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._open -= {writer, up_writer}


@dataclass
class Proc:
    """A child process with its log file; stopped on exit."""

    name: str
    args: list[str]
    log_dir: Path
    ready_url: str | None = None
    proc: subprocess.Popen | None = None
    starts: int = 0

    def start(self, timeout: float = 30) -> Proc:
        self.starts += 1
        log = open(self.log_dir / f"{self.name}-{self.starts}.log", "wb")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if self.ready_url:
            wait_for(f"{self.name} at {self.ready_url}", lambda: self._alive() and http_ok(self.ready_url or ""), timeout)
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_dir}")
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def scrape_targets(name: str, targets: list[str]) -> None:
    """Tell the harness's Prometheus to scrape these host:port targets (file_sd, picked up at once)."""
    directory = Path(os.environ["INFERSTACK_PROMETHEUS_TARGETS"])
    tmp = directory / f".{name}.json.tmp"
    tmp.write_text(json.dumps([{"targets": targets, "labels": {"component": name}}]))
    tmp.replace(directory / f"{name}.json")  # atomic: Prometheus never reads half a file


def prometheus_query(query: str) -> list[dict]:
    url = os.environ["INFERSTACK_PROMETHEUS_URL"] + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())["data"]["result"]


_KEYS: dict[str, str] = {}  # namespace -> the API key made for it by create_api_key


def create_api_key(namespace: str, name: str = "e2e-client", tenant: str = "e2e", stacks: str = "*") -> str:
    """A new API key of ``tenant`` for ``stacks`` of ``namespace``: its Secret (hash only) is applied, the key returned."""
    from inferstack.core.apikeys import generate_key, key_secret

    key = generate_key()
    kubectl("apply", "-f", "-", input=json.dumps(key_secret(name, namespace, key, tenant, stacks)))
    return key


def key_accepted(router_url: str, key: str) -> bool:
    """Whether the router knows ``key`` (its watch has seen the Secret)."""
    request = urllib.request.Request(f"{router_url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass
class DataPlane:
    """Stand-in + router (+ operator) for one namespace, with Prometheus scraping them."""

    log_dir: Path
    namespace: str | None = None  # a namespace, or a glob such as "e2e-*" (operator only)
    served_model: str = "Qwen/Qwen2.5-7B-Instruct"
    resync_seconds: float = 1.0
    standin_port: int = field(default_factory=free_port)
    router_port: int = field(default_factory=free_port)
    router_metrics_port: int = field(default_factory=free_port)  # /metrics, /healthz, /readyz: not the clients' port
    operator_metrics_port: int = field(default_factory=free_port)
    judge: bool = False  # also run a judge stand-in at judge_url
    judge_position_bias: bool = False  # the judge says [[A]] where it should say [[C]]
    judge_model: str = "standin-judge"
    judge_port: int = field(default_factory=free_port)
    router_args: tuple[str, ...] = ()  # more router flags (e.g. --otlp-endpoint for the tracing e2e)
    prometheus_url: str | None = None  # the operator's; default the harness's ($INFERSTACK_PROMETHEUS_URL)
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    @property
    def router_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.router_metrics_port}"

    def key_for(self, namespace: str) -> str:
        """An API key for every stack of ``namespace`` (made once per namespace, in a key Secret,
        as a user would), returned once this router accepts it."""
        key = _KEYS.get(namespace) or _KEYS.setdefault(namespace, create_api_key(namespace))
        wait_for(f"the router to accept the API key of {namespace}", lambda: key_accepted(self.router_url, key), timeout=30)
        return key

    @property
    def judge_url(self) -> str:
        """The judge's base URL, for an LLMJudge endpoint (``url``; ``model`` is ``judge_model``)."""
        return f"http://127.0.0.1:{self.judge_port}"

    def operator_config(self) -> Path:
        path = self.log_dir / "operator-config.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "backendUrlTemplate": f"http://127.0.0.1:{self.standin_port}",
                    "prometheusUrl": self.prometheus_url or os.environ["INFERSTACK_PROMETHEUS_URL"],
                    "prometheusTimeoutSeconds": 2.0,
                    # Prometheus scrapes every second here (cluster.py): 4 scrapes.
                    "minAnalysisWindowSeconds": 4,
                    "resyncSeconds": self.resync_seconds,
                }
            )
        )
        return path

    def start(self, operator: bool = True) -> DataPlane:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs["standin"] = Proc(
            "standin",
            [str(VENV_BIN / "inferstack-standin"), "--host", "127.0.0.1", "--port", str(self.standin_port),
             "--served-model", self.served_model, "--latency-ms", "5", "--ttft-ms", "2"],
            self.log_dir, f"http://127.0.0.1:{self.standin_port}/health",
        ).start()  # fmt: skip
        if self.judge:
            self.start_judge()
        # The router watches one namespace or all; a glob is for the operator only.
        ns_args = ["--namespace", self.namespace] if self.namespace and "*" not in self.namespace else []
        self.procs["router"] = Proc(
            "router",
            [str(VENV_BIN / "inferstack-router"), "--host", "127.0.0.1", "--port", str(self.router_port),
             "--metrics-port", str(self.router_metrics_port), "--auth", "api-keys",
             "--kubeconfig", os.environ["KUBECONFIG"], "--slices", ",".join(SLICE_QUESTIONS), "--count-legacy-plans", *ns_args, *self.router_args],
            self.log_dir, f"{self.router_metrics_url}/healthz",
        ).start()  # fmt: skip
        self.write_scrape_targets()
        if operator:
            self.start_operator()
        return self

    def start_operator(self) -> Proc:
        ns_args = ["--namespace", self.namespace] if self.namespace else []
        proc = self.procs.get("operator") or Proc(
            "operator",
            [str(VENV_BIN / "inferstack-operator"), "--kubeconfig", os.environ["KUBECONFIG"],
             "--config", str(self.operator_config()), "--metrics-host", "127.0.0.1",
             "--metrics-port", str(self.operator_metrics_port), *ns_args],
            self.log_dir, f"http://127.0.0.1:{self.operator_metrics_port}/metrics",
        )  # fmt: skip
        self.procs["operator"] = proc
        return proc.start()

    def write_scrape_targets(self) -> None:
        """Point the harness's Prometheus at this data plane's metrics (the router's metrics port, not its clients')."""
        judge_target = [f"127.0.0.1:{self.judge_port}"] if self.judge else []
        scrape_targets(
            f"dataplane-{self.router_port}",
            [f"127.0.0.1:{self.router_metrics_port}", f"127.0.0.1:{self.standin_port}", *judge_target],
        )

    def serves(self, key: str) -> bool:
        """Whether the router has the plan of stack ``key`` (namespace/name): a stack can be Ready a moment before."""
        auth = {"Authorization": f"Bearer {self.key_for(key.partition('/')[0])}"}
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{self.router_url}/v1/models", headers=auth), timeout=2) as r:
                return any(m.get("root") == key for m in json.loads(r.read())["data"])
        except OSError:
            return False

    def start_judge(self) -> Proc:
        """Start (or restart, on the same port) the judge stand-in."""
        bias = ["--judge-position-bias"] if self.judge_position_bias else []
        proc = self.procs.get("judge") or Proc(
            "judge",
            [str(VENV_BIN / "inferstack-standin"), "--judge", "--host", "127.0.0.1", "--port", str(self.judge_port),
             "--served-model", self.judge_model, *bias],
            self.log_dir, f"{self.judge_url}/health",
        )  # fmt: skip
        self.procs["judge"] = proc
        if proc.proc is not None and proc.proc.poll() is None:
            return proc  # already serving: a second one could not bind the port, and the first would leak
        return proc.start()

    def stop_judge(self) -> None:
        """Take the judge down (its calls then fail to connect) until ``start_judge``."""
        if "judge" in self.procs:
            self.procs["judge"].stop()

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        target = Path(os.environ["INFERSTACK_PROMETHEUS_TARGETS"]) / f"dataplane-{self.router_port}.json"
        target.unlink(missing_ok=True)

    def __enter__(self) -> DataPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class LoadResult:
    sent: int = 0
    failed: int = 0
    by_revision: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)


class Load:
    """Steady chat traffic through the router from many users, in a background thread.

    Every request carries a user id (sticky assignment) and a slice header.
    Failures are counted, never raised: tests assert on them.
    """

    def __init__(self, router_url: str, stack: str, rate: float = 40, users: int = 400, seed: int = 7, *, api_key: str) -> None:
        self.router_url, self.stack, self.rate, self.users = router_url, stack, rate, users
        self.auth = {"Authorization": f"Bearer {api_key}"}
        self.result = LoadResult()
        self._stop = threading.Event()
        self._rng = random.Random(seed)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _request(self) -> tuple[dict[str, str], dict[str, Any]]:
        slice_ = self._rng.choices(list(SLICE_WEIGHTS), weights=list(SLICE_WEIGHTS.values()))[0]
        question = self._rng.choice(SLICE_QUESTIONS[slice_])
        headers = {**self.auth, "x-user-id": f"user-{self._rng.randrange(self.users)}", "x-inferstack-slice": slice_}
        body = {"model": self.stack, "messages": [{"role": "user", "content": question}], "max_tokens": 64}
        return headers, body

    async def _run(self) -> None:
        import aiohttp

        interval = 1.0 / self.rate
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            pending: set[asyncio.Task] = set()
            next_at = time.monotonic()
            while not self._stop.is_set():
                headers, body = self._request()
                task = asyncio.create_task(self._one(session, headers, body))
                pending.add(task)
                task.add_done_callback(pending.discard)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if pending:
                await asyncio.wait(pending, timeout=30)

    async def _one(self, session, headers: dict[str, str], body: dict[str, Any]) -> None:
        self.result.sent += 1
        try:
            async with session.post(f"{self.router_url}/v1/chat/completions", json=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    self.result.failed += 1
                    self.result.errors[f"http {resp.status}"] += 1
                else:
                    self.result.by_revision[resp.headers.get("x-inferstack-revision", "?")] += 1
        except Exception as e:  # counted, the test decides
            self.result.failed += 1
            self.result.errors[type(e).__name__] += 1


class PlanRecorder:
    """Records every version of a stack's TrafficPlan, from a watch on the real API server.

    Each entry is (serial, stable, candidate, candidate weight, shadow percent):
    the sequence of steps the router was told, in order, each exactly once.
    """

    def __init__(self, namespace: str, stack: str) -> None:
        from kubernetes import client, config, watch

        self.namespace, self.name = namespace, f"{stack}-traffic"
        self.api = client.CustomObjectsApi(config.new_client_from_config(os.environ["KUBECONFIG"]))
        self.watch = watch.Watch()
        self.plans: list[tuple[int, str, str | None, int, int]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while True:
            try:
                for ev in self.watch.stream(
                    self.api.list_namespaced_custom_object, "inferstack.dev", "v1alpha1", self.namespace, "trafficplans",
                    field_selector=f"metadata.name={self.name}", timeout_seconds=300,
                ):  # fmt: skip
                    if ev["type"] in ("ADDED", "MODIFIED") and (spec := ev["raw_object"].get("spec")):
                        self._record(spec)
                return
            except (ApiException, OSError):
                time.sleep(0.2)
            except Exception:  # the watch was stopped
                return

    def _record(self, plan: dict[str, Any]) -> None:
        cand = plan.get("candidate") or {}
        entry = (plan["serial"], plan["stable"]["revision"], cand.get("revision"), plan.get("candidateWeight", 0), plan.get("shadowPercent", 0))
        if not self.plans or self.plans[-1][0] != entry[0]:
            self.plans.append(entry)

    def steps(self) -> list[tuple[str, str | None, int, int]]:
        return [p[1:] for p in self.plans]

    def __enter__(self) -> PlanRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watch.stop()
