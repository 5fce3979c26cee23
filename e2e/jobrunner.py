"""The job runner: plays the kubelet for golden-set Jobs' pods on the local control plane.

kwok runs no containers: on a kwok node its default ``pod-complete`` stage
marks every Job pod Succeeded (with no termination message) the moment it is
Running. So the e2e operator's config gives golden Jobs a node selector that
no node has (``NODE_SELECTOR``): their pods stay unscheduled, kwok never sees
them, and this runner runs each one locally, once, and writes its status
through the API server's ``pods/status`` subresource, as a kubelet would:
phase Running, then Succeeded or Failed with the container's termination
message. The Job controller then completes or fails the Job for real.

What is mapped between the pod spec and this machine (the only mapping, all here):

* the image's entrypoint: the container's ``command`` ``python -m inferstack.golden``
  runs as ``.venv/bin/python -m inferstack.golden``;
* the read-only cases volume: the pod's ``projected`` ConfigMap items are read
  from the API server and written to a local directory, and the env var the
  Job uses to name their mount path (``INFERSTACK_GOLDEN_CASES_DIR``, which
  must equal the volume's ``mountPath``) points there instead;
* the termination-message file: ``INFERSTACK_GOLDEN_REPORT`` (the container's
  ``terminationMessagePath``) points at a local file, read back (its first
  4096 bytes, as the kubelet does) as the message;
* ``valueFrom.secretKeyRef`` env vars are read from the Secret, as the kubelet would.

Everything else of the container's env is passed as it is. ``hold()`` keeps
pods waiting (a Job "running" for as long as a test needs, e.g. to kill the
operator meanwhile); ``runs`` counts how often each pod was run.
"""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
NODE_SELECTOR = {"inferstack.dev/e2e-job-runner": "local"}  # matched by no node
GOLDEN_SELECTOR = "inferstack.dev/component=golden,app.kubernetes.io/managed-by=inferstack"
CASES_DIR_ENV = "INFERSTACK_GOLDEN_CASES_DIR"
REPORT_ENV = "INFERSTACK_GOLDEN_REPORT"
MAX_MESSAGE = 4096


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class JobRunner:
    """Runs the pods of golden Jobs in namespaces starting with ``prefix``, each once."""

    def __init__(self, log_dir: Path, prefix: str = "e2e-") -> None:
        from kubernetes import client, config

        self.api = client.CoreV1Api(config.new_client_from_config(os.environ["KUBECONFIG"]))
        self.log_dir, self.prefix = log_dir, prefix
        self.runs: Counter[str] = Counter()  # "namespace/pod" -> times run
        self.allowed = threading.Event()
        self.allowed.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.errors: list[str] = []

    def hold(self) -> None:
        """Leave new pods waiting (their Jobs active) until ``release()``."""
        self.allowed.clear()

    def release(self) -> None:
        self.allowed.set()

    def waiting(self) -> list[str]:
        """Golden pods not run yet."""
        return [f"{p.metadata.namespace}/{p.metadata.name}" for p in self._pods() if self._runnable(p)]

    def __enter__(self) -> JobRunner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    # ------------------------------------------------------------------

    def _pods(self) -> list[Any]:
        pods = self.api.list_pod_for_all_namespaces(label_selector=GOLDEN_SELECTOR).items
        return [p for p in pods if p.metadata.namespace.startswith(self.prefix)]

    def _runnable(self, pod: Any) -> bool:
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        return (
            pod.status.phase == "Pending"
            and not pod.spec.node_name
            and pod.metadata.deletion_timestamp is None
            and key not in self.runs
        )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.allowed.is_set():
                    for pod in self._pods():
                        if self._runnable(pod) and self.allowed.is_set():
                            self.runs[f"{pod.metadata.namespace}/{pod.metadata.name}"] += 1
                            self._run(pod)
            except Exception as e:  # noted for the test, never fatal to the harness
                self.errors.append(f"{type(e).__name__}: {e}"[:500])
            self._stop.wait(0.2)

    def _env(self, pod: Any, container: Any, cases_dir: Path, report: Path) -> dict[str, str]:
        env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
        for e in container.env or []:
            if e.value_from is not None and e.value_from.secret_key_ref is not None:
                ref = e.value_from.secret_key_ref
                secret = self.api.read_namespaced_secret(ref.name, pod.metadata.namespace)
                env[e.name] = base64.b64decode((secret.data or {})[ref.key]).decode()
            else:
                env[e.name] = e.value or ""
        mounts = {m.name: m.mount_path for m in container.volume_mounts or []}
        assert env.get(CASES_DIR_ENV) in mounts.values(), f"{CASES_DIR_ENV} names no mount of {pod.metadata.name}"
        assert env.get(REPORT_ENV) == container.termination_message_path
        env[CASES_DIR_ENV], env[REPORT_ENV] = str(cases_dir), str(report)
        return env

    def _cases(self, pod: Any, cases_dir: Path) -> None:
        for volume in pod.spec.volumes or []:
            for source in (volume.projected.sources if volume.projected else []) or []:
                cm = source.config_map
                data = self.api.read_namespaced_config_map(cm.name, pod.metadata.namespace).data or {}
                for item in cm.items or []:
                    (cases_dir / item.path).write_text(data[item.key])

    def _status(self, pod: Any, body: dict[str, Any]) -> None:
        self.api.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": body})

    def _run(self, pod: Any) -> None:
        (container,) = pod.spec.containers
        started = _now()
        self._status(pod, {
            "phase": "Running", "startTime": started,
            "containerStatuses": [{"name": container.name, "image": container.image, "imageID": "", "ready": True,
                                   "restartCount": 0, "state": {"running": {"startedAt": started}}}],
        })  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
            cases_dir, report = Path(tmp) / "cases", Path(tmp) / "termination-log"
            cases_dir.mkdir()
            report.touch()
            self._cases(pod, cases_dir)
            env = self._env(pod, container, cases_dir, report)
            command = list(container.command or []) + list(container.args or [])
            assert command[0] == "python", command  # the image's python is the project's venv here
            log = self.log_dir / f"{pod.metadata.namespace}-{pod.metadata.name}.log"
            with open(log, "wb") as out:
                deadline = pod.spec.active_deadline_seconds or 600
                try:
                    rc = subprocess.run([str(PYTHON), *command[1:]], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=deadline).returncode
                except subprocess.TimeoutExpired:
                    rc = 137
            message = report.read_bytes()[:MAX_MESSAGE].decode(errors="replace")
        finished = _now()
        self._status(pod, {
            "phase": "Succeeded" if rc == 0 else "Failed",
            "containerStatuses": [{
                "name": container.name, "image": container.image, "imageID": "", "ready": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error",
                                         "message": message, "startedAt": started, "finishedAt": finished}},
            }],
        })  # fmt: skip
