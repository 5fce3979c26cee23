"""An operator watching a namespace glob starts and keeps reconciling while matching namespaces come and go.

kopf watches a glob with one watcher per namespace and holds every handler
until each watcher has listed its namespace once. kopf 1.45 leaves that
readiness behind when a namespace vanishes before its watcher listed it, and
the operator then never runs a handler again (seen in CI: stacks never became
Ready after earlier tests' namespaces were deleted).
controller/kopf_fixes.py drops it; here operators start while namespaces churn.

kopf 1.45 also never serves a namespace created between its first listing of
namespaces and the start of its namespace watch (seen in CI: a stack in such a
namespace was reconciled only once the test deleted the namespace).
controller/kopf_fixes.py serves it; here namespaces are created all through an
operator's start.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

from conftest import PREFIX, Operator, kubectl, wait_until

STACK = {
    "apiVersion": "inferstack.dev/v1alpha1",
    "kind": "InferenceStack",
    "metadata": {"name": "churn"},
    "spec": {"model": {"name": "m", "revision": "a" * 40, "gpus": 1}, "prompt": {"version": "v1", "system": "hi"}},
}


def churn(stop: threading.Event) -> None:
    while not stop.is_set():
        name = f"{PREFIX}-churn-{uuid.uuid4().hex[:6]}"
        kubectl("create", "namespace", name, check=False)
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def phase(namespace: str) -> str | None:
    proc = kubectl("get", "istack", "churn", "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout).get("status", {}).get("phase") if proc.returncode == 0 else None


def test_operators_started_while_namespaces_vanish_still_reconcile(namespace, tmp_path):
    stop = threading.Event()
    worker = threading.Thread(target=churn, args=(stop,), daemon=True)
    worker.start()
    try:
        for attempt in range(3):
            op = Operator(tmp_path)
            op.start()
            try:
                doc = json.loads(json.dumps(STACK))
                doc["spec"]["prompt"]["system"] = f"attempt {attempt}"
                kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(doc))
                wait_until(
                    f"the stack reconciled by operator start #{attempt + 1}",
                    lambda generation=attempt + 1: (st := json.loads(kubectl("get", "istack", "churn", "-n", namespace, "-o", "json").stdout).get("status", {}))
                    and st.get("observedGeneration") == generation,
                    timeout=60,
                )
            finally:
                op.stop(9)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert phase(namespace) in ("Pending", "Healthy", "Progressing")


def reconciled() -> set[str]:
    items = json.loads(kubectl("get", "istack", "-A", "-o", "json").stdout)["items"]
    return {i["metadata"]["namespace"] for i in items if i.get("status", {}).get("phase")}


def test_namespaces_created_while_an_operator_starts_are_all_served(tmp_path):
    born: list[str] = []
    stop = threading.Event()

    def create() -> None:  # one namespace every few tens of ms, before, through and after kopf's listings
        while not stop.is_set():
            name = f"{PREFIX}-born-{uuid.uuid4().hex[:6]}"
            kubectl("create", "namespace", name)
            born.append(name)

    worker = threading.Thread(target=create, daemon=True)
    op = Operator(tmp_path)
    try:
        worker.start()
        op.start()
        # kopf lists namespaces, and then starts its watch, within a few seconds of the metrics endpoint.
        until = time.monotonic() + 4
        while time.monotonic() < until and worker.is_alive():
            worker.join(timeout=0.1)
        stop.set()
        worker.join(timeout=30)
        assert len(born) >= 10, f"only {len(born)} namespaces were created while the operator started"
        for name in born:
            kubectl("apply", "-n", name, "-f", "-", input=json.dumps(STACK))
        wait_until(
            f"a stack reconciled in each of the {len(born)} namespaces created while the operator started",
            lambda: set(born) <= reconciled(),
            timeout=90,
        )
    finally:
        stop.set()
        op.stop(9)
        for name in born:
            kubectl("delete", "namespace", name, "--wait=false", check=False)
        # Gone before the next module on this worker starts its operators: ~40 terminating namespaces
        # with stacks match their glob too, and the leader test counts every write in its quiet window.
        if born:
            kubectl("wait", "--for=delete", *(f"namespace/{name}" for name in born), "--timeout=180s", check=False)
