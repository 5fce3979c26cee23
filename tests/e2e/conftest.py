"""e2e tier: runs against the local test cluster only (make cluster-up).

Refuses any other kube context: these tests create and delete namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "e2e"))  # the harness: dataplane.py, cluster.py

from dataplane import free_port, load_env, wait_established  # noqa: E402
from dataplane import wait_for as wait_until  # noqa: E402  (tests read better with "until")

EXPECTED_CONTEXT = "kwok-inferstack-e2e"
# Test namespaces are PREFIX-<random>, and the test operators watch NS_GLOB only.
# Two runs on one cluster (engineers' sessions, CI beside a demo) each set
# another INFERSTACK_E2E_PREFIX, one that is no prefix of the other's names
# ("e2e" and "h1e2e", not "e2e" and "e2e-h1"), so their operators never meet.
# Under pytest-xdist each worker adds its id ("e2egw0", "e2egw1"): workers share the
# cluster, never a namespace or an operator.
PREFIX = os.environ.get("INFERSTACK_E2E_PREFIX", "e2e") + os.environ.get("PYTEST_XDIST_WORKER", "")
NS_GLOB = f"{PREFIX}-*"


def _current_context() -> str | None:
    proc = subprocess.run(["kubectl", "config", "current-context"], capture_output=True, text=True, env=os.environ)
    return proc.stdout.strip() or None


def pytest_collection_modifyitems(config, items):
    e2e_dir = Path(__file__).parent
    for item in items:
        if e2e_dir in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)


OPERATOR_LOG_LINES = 60


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """A failed e2e test's report ends with the tail of its operators' logs: a CI run keeps
    only what pytest prints, and most e2e failures are explained there."""
    report = yield
    if report.failed and report.when == "call":
        for name, value in getattr(item, "funcargs", {}).items():
            log_dir = getattr(value, "log_dir", None)
            if isinstance(log_dir, Path):
                for log in sorted(log_dir.glob("operator-*.log")):
                    tail = log.read_text(errors="replace").splitlines()[-OPERATOR_LOG_LINES:]
                    report.sections.append((f"{log.name} of fixture {name}, last {len(tail)} lines", "\n".join(tail)))
    return report


@pytest.fixture(scope="session", autouse=True)
def e2e_cluster() -> None:
    load_env()
    if not os.environ.get("KUBECONFIG"):
        msg = "no local test cluster: run `make cluster-up` first"
        if os.environ.get("INFERSTACK_REQUIRE_E2E") == "1":
            pytest.exit(msg, returncode=3)
        pytest.skip(msg)
    context = _current_context()
    if context != EXPECTED_CONTEXT:
        pytest.exit(f"refusing to run e2e against kube context {context!r}; only {EXPECTED_CONTEXT!r} (make cluster-up)", returncode=4)
    # The CRD under test is the one in this checkout.
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    wait_established("inferencestacks.inferstack.dev", "trafficplans.inferstack.dev")


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    # kubectl's own --timeout (e.g. of `kubectl wait`) decides; this one only catches a hung kubectl.
    waits = [float(a.removeprefix("--timeout=").removesuffix("s")) for a in args if a.startswith("--timeout=") and a.endswith("s")]
    proc = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, timeout=max([120.0, *(w + 30 for w in waits)]))
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc


def kget(kind: str, name: str | None, namespace: str | None = None) -> Any:
    args = ["get", kind] + ([name] if name else []) + ["-o", "json"]
    if namespace:
        args += ["-n", namespace]
    proc = kubectl(*args, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format -> {(name, labels): value}; enough for our own metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


class Operator:
    """The real operator as a subprocess, so tests can kill and restart it."""

    def __init__(self, log_dir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.log_dir = log_dir
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0

    def start(self) -> None:
        self.port = free_port()
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115 - handed to the child process, which outlives this scope
        self.proc = subprocess.Popen(
            [str(REPO / ".venv/bin/inferstack-operator"), "--kubeconfig", os.environ["KUBECONFIG"],
             "--resync-seconds", "1", "--metrics-port", str(self.port), "--metrics-host", "127.0.0.1",
             "--namespace", NS_GLOB, *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until("operator metrics endpoint", self._answers, timeout=30)

    def _answers(self) -> bool:
        assert self.proc and self.proc.poll() is None, f"operator exited; see {self.log_dir}"
        try:
            self.metrics()
            return True
        except OSError:
            return False

    def metrics(self) -> dict:
        return scrape(f"http://127.0.0.1:{self.port}/metrics")

    def value(self, name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in self.metrics().items() if n == name and set(labels.items()) <= ls)

    def stop(self, sig: int = 15) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def operator(tmp_path_factory) -> Iterator[Operator]:
    op = Operator(tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()


@pytest.fixture(scope="session")
def pgstore():
    """A real PostgreSQL with pgvector (the integration tier's server), for stacks whose retriever names a store.

    The operator and router of this tier run on this machine, so its loopback
    DSN reaches them as a Service's address reaches pods.
    """
    sys.path.insert(0, str(REPO / "tests"))
    from integration.pgstore import PgServer

    server = PgServer().start()
    yield server
    server.cleanup()


def store_secret(namespace: str, name: str, dsn: str) -> None:
    """The Secret a stack's ``retriever.store.secretRef`` names, holding the store's DSN under ``dsn``."""
    kubectl("create", "secret", "generic", name, "-n", namespace, f"--from-literal=dsn={dsn}")


@pytest.fixture(scope="module")
def dataplane(tmp_path_factory):
    """Stand-in, router and operator for the module's tests, watching only the test namespaces.

    Only ``NS_GLOB`` (``e2e-*``): a demo or benchmark on the same cluster has its own operator.
    """
    from dataplane import DataPlane

    dp = DataPlane(tmp_path_factory.mktemp("dataplane"), namespace=NS_GLOB)
    dp.start()
    yield dp
    dp.stop()
