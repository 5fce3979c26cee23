"""A real trace backend for tests: Jaeger v2's all-in-one binary on loopback ports.

    from jaeger import start, spans
    jaeger = start(tmp_path)                  # OTLP receivers + query API, in-memory storage
    try:
        ...  # export spans to jaeger.otlp_http_endpoint (or otlp_grpc_endpoint)
        [trace] = jaeger.find_traces("router", {"gen_ai.request.model": "support"}, deadline_s=10)
        for span in spans(trace): ...
    finally:
        jaeger.stop()

The binary is upstream's, built from the Go module proxy by e2e/jaegerbin/build.sh
(INFERSTACK_JAEGER_BIN runs another). Every listener it opens is on 127.0.0.1 at a
port picked here: the OTLP receivers (HTTP and gRPC) and the jaeger_query extension
(HTTP and gRPC). Jaeger's defaults (13133 health check, 8888 internal metrics, 5778
sampling, 16686 UI, ...) are not used: the config names no other extension or
receiver, and the collector's own metrics and traces are off, so two runs never
clash. The query extension's self-tracing is off too (it would export Jaeger's own
spans to the OTEL_* environment's collector), and OTEL_* variables are not passed on.

Only the standard library: like e2e/cluster.py, it runs before the project is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "e2e" / "jaegerbin" / "build.sh"


def binary(build: bool = False) -> str | None:
    """The Jaeger binary: INFERSTACK_JAEGER_BIN, else the cached build (built first if build=True); None if absent."""
    if env := os.environ.get("INFERSTACK_JAEGER_BIN"):
        return env if Path(env).exists() else None
    args = [str(BUILD)] if build else [str(BUILD), "--cached"]
    proc = subprocess.run(args, stdout=subprocess.PIPE, text=True)
    path = proc.stdout.strip()
    return path if proc.returncode == 0 and path and Path(path).exists() else None


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together while picked, so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def config_yaml(otlp_http: int, otlp_grpc: int, query_http: int, query_grpc: int, max_traces: int = 100_000) -> str:
    """A Jaeger v2 config: memory storage, OTLP in, query API out, every listener on 127.0.0.1."""
    return f"""\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none   # else a Prometheus endpoint on localhost:8888
    traces:
      level: none
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: {max_traces}
  jaeger_query:
    enable_tracing: false   # on by default in v2: it would export Jaeger's own spans via OTEL_* / localhost:4318
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query_http}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}

receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp_http}
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _get_json(url: str, timeout: float = 5) -> tuple[int, Any]:
    """(status, parsed body); status 0 if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, body
    except (OSError, ValueError):
        return 0, None


@dataclass
class Jaeger:
    proc: subprocess.Popen
    workdir: Path
    log_path: Path
    otlp_http_port: int
    otlp_grpc_port: int
    query_http_port: int
    query_grpc_port: int
    _log: Any = field(default=None, repr=False)

    @property
    def otlp_http_endpoint(self) -> str:
        """OTLP/HTTP base URL; an exporter posts to otlp_http_endpoint + '/v1/traces'."""
        return f"http://127.0.0.1:{self.otlp_http_port}"

    @property
    def otlp_traces_url(self) -> str:
        return self.otlp_http_endpoint + "/v1/traces"

    @property
    def otlp_grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.otlp_grpc_port}"

    @property
    def query_url(self) -> str:
        """The query HTTP server: /api/traces, /api/services (the UI's JSON API) and /api/v3/..."""
        return f"http://127.0.0.1:{self.query_http_port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"jaeger exited with {self.proc.returncode}; last lines of {self.log_path}:\n{self.log_tail()}")

    def services(self) -> list[str]:
        status, body = _get_json(self.query_url + "/api/services")
        return (body or {}).get("data") or [] if status == 200 else []

    def find_traces(self, service: str, tags: dict[str, str] | None = None, deadline_s: float = 10.0,
                    operation: str | None = None, limit: int = 20) -> list[dict]:
        """Traces of `service` with a span carrying every tag in `tags`, polled until one matches or
        deadline_s passes (then []). Jaeger's /api/traces JSON: each trace is {traceID, spans, processes}.

        A tag matches a span's attribute, its resource's or scope's attribute, or one of its events'
        attributes, compared as strings ({"n": "3"} finds the int 3); all tags must match in one span.
        """
        params = {"service": service, "limit": str(limit), "lookback": "1h"}
        if tags:
            params["tags"] = json.dumps({k: str(v) for k, v in tags.items()})
        if operation:
            params["operation"] = operation
        deadline = time.monotonic() + deadline_s
        while True:
            self._check_alive()
            now_us = time.time_ns() // 1000
            # The search API reads start/end (microseconds), not lookback (the UI's); end leaves room for clock skew.
            params.update(start=str(now_us - 3600 * 10**6), end=str(now_us + 60 * 10**6))
            status, body = _get_json(self.query_url + "/api/traces?" + urllib.parse.urlencode(params))
            if status == 200 and isinstance(body, dict):
                if body.get("errors"):
                    raise RuntimeError(f"jaeger /api/traces: {body['errors']}")
                if traces := body.get("data") or []:
                    return traces
            elif 400 <= status < 500:
                raise RuntimeError(f"jaeger /api/traces answered {status}: {body}")
            if time.monotonic() >= deadline:
                return []
            time.sleep(0.1)

    @staticmethod
    def spans(trace: dict) -> list[dict]:
        """The module's spans(trace)."""
        return spans(trace)

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Jaeger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spans(trace: dict) -> list[dict]:
    """A /api/traces trace's spans, flattened:

    traceID, spanID, parent (the CHILD_OF reference's spanID, else the first reference's, else None),
    references (Jaeger's [{refType, traceID, spanID}]), operationName, service, startTime (µs),
    duration (µs), tags {key: value} (span kind, status and scope show up here as span.kind,
    otel.status_code, otel.scope.name, ...), process_tags {key: value} (the resource's attributes)
    and events: the span's OTel events (Jaeger's "logs"), each {name, fields {key: value}, timestamp};
    an event's name is Jaeger's "event" field.
    """
    processes = trace.get("processes") or {}
    out = []
    for s in trace.get("spans") or []:
        refs = s.get("references") or []
        parent = next((r["spanID"] for r in refs if r.get("refType") == "CHILD_OF"), refs[0]["spanID"] if refs else None)
        process = processes.get(s.get("processID"), {}) or s.get("process") or {}
        events = []
        for log in s.get("logs") or []:
            fields = {f["key"]: f.get("value") for f in log.get("fields") or []}
            events.append({"name": fields.pop("event", None), "fields": fields, "timestamp": log.get("timestamp")})
        out.append({
            "traceID": s.get("traceID"),
            "spanID": s.get("spanID"),
            "parent": parent,
            "references": refs,
            "operationName": s.get("operationName"),
            "service": process.get("serviceName"),
            "startTime": s.get("startTime"),
            "duration": s.get("duration"),
            "tags": {t["key"]: t.get("value") for t in s.get("tags") or []},
            "process_tags": {t["key"]: t.get("value") for t in process.get("tags") or []},
            "events": events,
        })
    return out


def start(workdir: Path | str, timeout: float = 30, binary_path: str | None = None, attempts: int = 3) -> Jaeger:
    """Start Jaeger with its config and log in workdir; return once its query API and OTLP ports answer.

    The ports are picked free, then bound by Jaeger: should another process take one between the two,
    Jaeger exits and is started again on new ports (up to `attempts` times).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = binary_path or binary()
    if not path:
        raise FileNotFoundError(f"jaeger is not built: run {BUILD}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    last_error: Exception | None = None
    for attempt in range(1, attempts + 1):
        otlp_http, otlp_grpc, query_http, query_grpc = free_ports(4)
        config = workdir / f"jaeger-{attempt}.yaml"
        config.write_text(config_yaml(otlp_http, otlp_grpc, query_http, query_grpc))
        log_path = workdir / f"jaeger-{attempt}.log"
        log = log_path.open("wb")
        proc = subprocess.Popen([path, "--config", f"file:{config}"], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, cwd=workdir)
        jaeger = Jaeger(proc, workdir, log_path, otlp_http, otlp_grpc, query_http, query_grpc, _log=log)
        deadline = time.monotonic() + timeout
        try:
            while True:
                jaeger._check_alive()
                status, _ = _get_json(jaeger.query_url + "/api/services", timeout=1)
                if status == 200 and _port_open(otlp_http) and _port_open(otlp_grpc):
                    return jaeger
                if time.monotonic() > deadline:
                    jaeger.stop()
                    raise TimeoutError(f"jaeger not ready after {timeout}s; last lines of {log_path}:\n{jaeger.log_tail()}")
                time.sleep(0.05)
        except RuntimeError as e:  # exited: a port taken meanwhile is worth another try, anything else is not
            jaeger.stop()
            last_error = e
            if "address already in use" not in str(e):
                raise
    raise RuntimeError(f"jaeger did not start in {attempts} attempts: {last_error}")


if __name__ == "__main__":  # python3 e2e/jaeger.py [workdir]: run one until Ctrl-C
    import sys
    import tempfile

    j = start(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="jaeger-"))
    print(f"jaeger: OTLP/HTTP {j.otlp_http_endpoint}  OTLP/gRPC {j.otlp_grpc_endpoint}  query {j.query_url}  log {j.log_path}")
    try:
        j.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        j.stop()
