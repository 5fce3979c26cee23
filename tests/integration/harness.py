"""Integration harness: real router and stand-in processes on loopback ports.

Every wait polls with a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferstack.core.apikeys import generate_key, key_digest

# free_port and http_ok are the e2e harness's; integration tests need no cluster, only these.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "e2e"))
from dataplane import free_port, http_ok


def wait_until(what: str, check: Callable[[], bool], timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not ready after {timeout}s")
        time.sleep(0.05)


@dataclass
class Proc:
    url: str
    port: int
    popen: subprocess.Popen
    metrics_url: str = ""  # a router's /metrics, /healthz, /readyz port
    keys: dict[str, str] = field(default_factory=dict)  # a router's API keys: namespace -> key for its every stack

    @property
    def key(self) -> str:
        return next(iter(self.keys.values()))

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    @property
    def metrics_target(self) -> str:
        return self.metrics_url.removeprefix("http://")


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen] = []
        self.keys: dict[str, str] = {}  # namespace -> API key, shared by this test's routers

    def spawn(self, name: str, module: str, args: list[str], code: str | None = None) -> subprocess.Popen:
        """``python -m module args``, or ``python -c code args`` when ``code`` is given."""
        log = (self.logs / f"{name}.log").open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = ["-c", code] if code is not None else ["-m", module]
        popen = subprocess.Popen([sys.executable, *command, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        self.started.append(popen)
        return popen

    def standin(self, model: str, *extra: str) -> Proc:
        port = free_port()
        popen = self.spawn(f"standin-{model}-{port}", "inferstack.standin.main",
                           ["--port", str(port), "--served-model", model, *extra])
        url = f"http://127.0.0.1:{port}"
        wait_until(f"standin {model}", lambda: http_ok(url + "/health"), proc=popen)
        return Proc(url, port, popen)

    def router(self, plan_path: Path, *extra: str, namespaces: tuple[str, ...] = ("team-a",), code: str | None = None) -> Proc:
        """A router with API keys from a file: per namespace one key (tenant "tests", every stack),
        the same for every router of this test, as replicas share key Secrets. ``code``: run this
        instead of ``-m inferstack.router.main`` (it gets the same arguments)."""
        port, metrics_port = free_port(), free_port()
        for ns in namespaces:
            self.keys.setdefault(ns, generate_key())
        keys = self.logs / f"keys-{port}.json"
        keys.write_text(json.dumps([{"namespace": ns, "name": "tests", "sha256": key_digest(key).hex(),
                                     "tenant": "tests", "stacks": "*"} for ns, key in self.keys.items()]))  # fmt: skip
        popen = self.spawn(f"router-{port}", "inferstack.router.main",
                           ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
                            "--plan-file", str(plan_path), "--api-key-file", str(keys),
                            "--plan-poll-interval", "0.1", "--log-level", "WARNING", *extra], code)  # fmt: skip
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        wait_until("router", lambda: http_ok(metrics_url + "/readyz"), proc=popen)
        return Proc(f"http://127.0.0.1:{port}", port, popen, metrics_url, {ns: self.keys[ns] for ns in namespaces})

    def stop_all(self) -> None:
        for popen in self.started:
            popen.terminate()
        for popen in self.started:
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


def plan(stable: Proc, candidate: Proc | None, serial: int = 1, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "stack": "support",
        "namespace": "team-a",
        "serial": serial,
        "stable": {"revision": "rev-a", "url": stable.url, "servedModel": "model-a",
                   "cacheNamespace": "team-a.support.rev-a", "promptHash": "hash-a",
                   "systemPrompt": "You are the support assistant."},
        **fields,
    }
    if candidate is not None:
        data["candidate"] = {"revision": "rev-b", "url": candidate.url, "servedModel": "model-b",
                             "cacheNamespace": "team-a.support.rev-b", "promptHash": "hash-b",
                             "systemPrompt": "You are the support assistant. Never discuss refunds."}
    return data


def write_plan(path: Path, data: dict[str, Any]) -> None:
    """Atomic replace, as a ConfigMap update is atomic; bump mtime past the filesystem's tick."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
