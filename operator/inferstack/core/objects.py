"""Desired Kubernetes objects for one revision of a stack: pure builders.

Each builder returns a plain dict (the manifest) and never talks to the API.
Per revision: a vLLM Deployment, a Service and a ControllerRevision that
holds the whole revision (its parts) for exact restores; a hosted model
(``spec.model.endpoint``) has only the ControllerRevision.
"""

from __future__ import annotations

from typing import Any, Final

from inferstack import GROUP, KIND, VERSION
from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core.config import GPU_TOLERATION, OperatorConfig
from inferstack.core.durations import parse_duration
from inferstack.core.revision import Revision

LABEL_STACK: Final = f"{GROUP}/stack"
LABEL_REVISION: Final = f"{GROUP}/revision"
LABEL_COMPONENT: Final = f"{GROUP}/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "inferstack"
REVISION_DATA_KEY: Final = "revision"
MODEL_CONTAINER: Final = "vllm"


def revision_name(stack: str, revision: str) -> str:
    """Deployment, Service and ControllerRevision share it; the CRD caps stack names so it fits 63 chars."""
    return f"{stack}-{revision}"


def owner_reference(stack: dict[str, Any]) -> dict[str, Any]:
    meta = stack["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(stack_name: str, revision: str | None, component: str) -> dict[str, str]:
    out = {LABEL_STACK: stack_name, LABEL_COMPONENT: component, LABEL_MANAGED_BY: MANAGER}
    if revision:
        out[LABEL_REVISION] = revision
    return out


def metadata(stack: dict[str, Any], name: str, revision: str | None, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": stack["metadata"]["namespace"],
        "labels": labels(stack["metadata"]["name"], revision, component),
        "ownerReferences": [owner_reference(stack)],
    }


def served_model_name(spec: InferenceStackSpec) -> str:
    return spec.model.name


def build_controller_revision(stack: dict[str, Any], revision: Revision, number: int) -> dict[str, Any]:
    name = stack["metadata"]["name"]
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": metadata(stack, revision_name(name, revision.hash), revision.hash, "revision"),
        "revision": number,
        "data": {REVISION_DATA_KEY: revision.parts, "hash": revision.hash},
    }


def vllm_args(spec: InferenceStackSpec, port: int) -> list[str]:
    model, engine = spec.model, spec.model.engine
    # The model id, not a path, even with a cache volume: HF_HOME (set in
    # build_deployment) points huggingface_hub at the cached weights.
    args = [
        "--model", model.name,
        "--served-model-name", served_model_name(spec),
        "--port", str(port),
        "--tensor-parallel-size", str(engine.tensor_parallel_size),
        "--pipeline-parallel-size", str(engine.pipeline_parallel_size),
        "--gpu-memory-utilization", str(engine.gpu_memory_utilization),
        "--dtype", engine.dtype,
    ]  # fmt: skip
    if model.revision:
        args += ["--revision", model.revision]
    if engine.max_model_len:
        args += ["--max-model-len", str(engine.max_model_len)]
    args.append("--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching")
    return args + list(engine.extra_args)


def _placement(spec: InferenceStackSpec, config: OperatorConfig) -> dict[str, Any]:
    pool = config.pools.get(spec.model.pool.value)
    node_selector = {**(pool.node_selector if pool else {}), **spec.model.node_selector}
    tolerations = [*(pool.tolerations if pool else []), *(t.model_dump() for t in spec.model.tolerations)]
    if spec.model.gpus > 0 and spec.model.gpu_resource_name == "nvidia.com/gpu" and GPU_TOLERATION not in tolerations:
        # GPU pools are tainted so that CPU workloads stay off them.
        tolerations.append(dict(GPU_TOLERATION))
    out: dict[str, Any] = {}
    if node_selector:
        out["nodeSelector"] = node_selector
    if tolerations:
        out["tolerations"] = tolerations
    if pool and pool.priority_class_name:
        out["priorityClassName"] = pool.priority_class_name
    return out


def build_deployment(
    stack: dict[str, Any], spec: InferenceStackSpec, revision: Revision, config: OperatorConfig, replicas: int
) -> dict[str, Any]:
    name = stack["metadata"]["name"]
    rev = revision.hash
    pod_labels = labels(name, rev, "model-server")
    port = config.model_port
    resources: dict[str, Any] = {}
    if spec.model.gpus > 0:
        gpus = {spec.model.gpu_resource_name: str(spec.model.gpus)}
        resources = {"limits": dict(gpus), "requests": dict(gpus)}
    volumes: list[dict[str, Any]] = [
        # vLLM's tensor-parallel workers exchange data through /dev/shm; the
        # container default of 64 MiB makes NCCL fail.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}},
    ]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    env: list[dict[str, Any]] = []
    if spec.model.cache_volume is not None:
        cv = spec.model.cache_volume
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": cv.persistent_volume_claim, "readOnly": cv.read_only}})
        mounts.append({"name": "model-cache", "mountPath": cv.mount_path, "readOnly": cv.read_only})
        env.append({"name": "HF_HOME", "value": cv.mount_path})
        if cv.read_only:
            env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    deadline = parse_duration(spec.rollout.progress_deadline).total_seconds()
    period = config.startup_probe_period_seconds
    http_health = {"httpGet": {"path": "/health", "port": "http"}}
    container = {
        "name": MODEL_CONTAINER,
        "image": spec.model.image,
        "args": vllm_args(spec, port),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": env,
        "resources": resources,
        "volumeMounts": mounts,
        # A model load takes minutes; the startup probe holds liveness off
        # until it is done, for up to the stack's progress deadline.
        "startupProbe": {**http_health, "periodSeconds": period, "failureThreshold": max(1, int(deadline // period))},
        "readinessProbe": {**http_health, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**http_health, "periodSeconds": 10, "failureThreshold": 6},
    }
    pod_spec: dict[str, Any] = {"containers": [container], "volumes": volumes, **_placement(spec, config)}
    if config.service_account_name:
        pod_spec["serviceAccountName"] = config.service_account_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(stack, revision_name(name, rev), rev, "model-server"),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {LABEL_STACK: name, LABEL_REVISION: rev}},
            # Only replicas ever change on a revision's Deployment.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "progressDeadlineSeconds": int(deadline),
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": pod_spec,
            },
        },
    }


def build_service(stack: dict[str, Any], revision: str, config: OperatorConfig) -> dict[str, Any]:
    name = stack["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(stack, revision_name(name, revision), revision, "model-server"),
        "spec": {
            "selector": {LABEL_STACK: name, LABEL_REVISION: revision},
            "ports": [{"name": "http", "port": config.model_port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
