"""The embedding models the operator runs itself: identity and desired objects, pure.

A revision whose retriever searches a store and names no endpoint has its
embedding model deployed by the operator (``revision.deploys_embedder``): a
vLLM Deployment with its pooling runner and a Service, named
``<stack>-em<hash>``. The hash is taken over what the Deployment runs
(model, revision, image, GPUs, resources, extra args), read from the
revision's own parts, so

* revisions that embed with the same model the same way share one
  Deployment: a prompt or index change starts no second embedding server;
* a new embedding revision, image or GPU count is a new Deployment beside the
  old one, never an update of the one the stable revision serves with: as
  with the model Deployments, only replicas ever change in place, and a
  rollback finds the old embedder as it was;
* an old revision answers for its own embedder from its ControllerRevision,
  whatever the spec says now.

The names never equal a revision's (``<stack>-<10 hex>``): ``m`` is not a hex
digit. Which embedders exist, their replicas and their garbage collection
are the reconciler's (core/reconcile.py); the URL the router embeds with is
the plan's (core/trafficplan.py, ``embedderUrlTemplate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from inferstack import GROUP
from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core import objects
from inferstack.core.config import GPU_TOLERATION, OperatorConfig
from inferstack.core.durations import parse_duration
from inferstack.core.revision import deploys_embedder, digest

LABEL_EMBEDDER: Final = f"{GROUP}/embedder"
COMPONENT: Final = "embedder"
KEY_PREFIX: Final = "em"
KEY_HASH_LENGTH: Final = 8  # "em" + 8 hex: as long as a revision hash, so <stack>-<key> fits 63 characters too


@dataclass(frozen=True)
class Embedder:
    """One embedding Deployment: what it runs, from a revision's retriever part (camelCase)."""

    key: str
    model: str
    revision: str | None
    image: str
    gpus: int
    gpu_resource_name: str
    resources: dict[str, dict[str, str]]
    extra_args: tuple[str, ...]

    @property
    def display(self) -> str:
        return f"{self.model}@{self.revision}" if self.revision else self.model


def embedder_of(parts: dict[str, Any] | None) -> Embedder | None:
    """The embedder a revision's parts ask the operator to run; None when it runs none (no store, or an endpoint)."""
    retriever = (parts or {}).get("retriever")
    if retriever is None or not deploys_embedder(retriever):
        return None
    e = retriever["embedding"]
    runs = {
        "model": e["model"],
        "revision": e.get("revision"),
        "image": e["image"],
        "gpus": int(e.get("gpus", 0)),
        "gpuResourceName": e.get("gpuResourceName", "nvidia.com/gpu"),
        "resources": {k: dict(v) for k, v in (e.get("resources") or {}).items() if v},
        "extraArgs": list(e.get("extraArgs") or []),
    }
    return Embedder(
        key=KEY_PREFIX + digest(runs)[:KEY_HASH_LENGTH],
        model=runs["model"],
        revision=runs["revision"],
        image=runs["image"],
        gpus=runs["gpus"],
        gpu_resource_name=runs["gpuResourceName"],
        resources=runs["resources"],
        extra_args=tuple(runs["extraArgs"]),
    )


def embedder_name(stack: str, key: str) -> str:
    """Its Deployment and Service share it; the CRD caps stack names so it fits 63 characters."""
    return f"{stack}-{key}"


def embedder_url(meta: dict[str, Any], key: str, config: OperatorConfig) -> str:
    """Where the router embeds queries for a revision that uses this embedder (no /v1)."""
    ns, name = meta["namespace"], meta["name"]
    return config.embedder_url_template.format(service=embedder_name(name, key), namespace=ns, stack=name, embedder=key)


def embedder_args(embedder: Embedder, port: int) -> list[str]:
    """``vllm serve`` arguments: the pooling runner serves /v1/embeddings under the model's own name.

    ``--runner pooling`` (vLLM 0.32 has no ``--task``); ``--convert`` stays
    ``auto``, so a native embedding model (BERT-style) runs as it is and a
    decoder-based one (Qwen3-Embedding) is adapted with vLLM's embed pooler.
    The router sends ``model: <spec.retriever.embedding.model>``.
    """
    args = [
        "--model", embedder.model,
        "--served-model-name", embedder.model,
        "--port", str(port),
        "--runner", "pooling",
    ]  # fmt: skip
    if embedder.revision:
        args += ["--revision", embedder.revision]
    return args + list(embedder.extra_args)


def _labels(stack_name: str, key: str) -> dict[str, str]:
    return {**objects.labels(stack_name, None, COMPONENT), LABEL_EMBEDDER: key}


def _metadata(stack: dict[str, Any], key: str) -> dict[str, Any]:
    name = stack["metadata"]["name"]
    return {**objects.metadata(stack, embedder_name(name, key), None, COMPONENT), "labels": _labels(name, key)}


def build_embedder_service(stack: dict[str, Any], embedder: Embedder, config: OperatorConfig) -> dict[str, Any]:
    name = stack["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(stack, embedder.key),
        "spec": {
            "selector": {objects.LABEL_STACK: name, LABEL_EMBEDDER: embedder.key},
            "ports": [{"name": "http", "port": config.model_port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_embedder_deployment(
    stack: dict[str, Any], spec: InferenceStackSpec, embedder: Embedder, config: OperatorConfig, replicas: int
) -> dict[str, Any]:
    """Probes and deadline as a model Deployment's (objects.build_deployment): an embedding model loads slowly too.

    ``spec`` is the spec in force when it is created, for the progress
    deadline only; what runs comes from ``embedder``.
    """
    name = stack["metadata"]["name"]
    port = config.model_port
    resources: dict[str, Any] = {k: dict(v) for k, v in embedder.resources.items()}
    tolerations: list[dict[str, Any]] = []
    if embedder.gpus > 0:
        gpu = {embedder.gpu_resource_name: str(embedder.gpus)}
        resources = {**resources, "limits": {**resources.get("limits", {}), **gpu}, "requests": {**resources.get("requests", {}), **gpu}}
        if embedder.gpu_resource_name == "nvidia.com/gpu":
            tolerations.append(dict(GPU_TOLERATION))  # GPU pools are tainted so that CPU workloads stay off them
    deadline = parse_duration(spec.rollout.progress_deadline).total_seconds()
    period = config.startup_probe_period_seconds
    http_health = {"httpGet": {"path": "/health", "port": "http"}}
    container = {
        "name": objects.MODEL_CONTAINER,
        "image": embedder.image,
        "args": embedder_args(embedder, port),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": resources,
        # vLLM's engine and API server processes exchange data through /dev/shm.
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
        "startupProbe": {**http_health, "periodSeconds": period, "failureThreshold": max(1, int(deadline // period))},
        "readinessProbe": {**http_health, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**http_health, "periodSeconds": 10, "failureThreshold": 6},
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}}],
    }
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if config.service_account_name:
        pod_spec["serviceAccountName"] = config.service_account_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(stack, embedder.key),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {objects.LABEL_STACK: name, LABEL_EMBEDDER: embedder.key}},
            # Only replicas ever change on an embedder's Deployment.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "progressDeadlineSeconds": int(deadline),
            "template": {"metadata": {"labels": _labels(name, embedder.key)}, "spec": pod_spec},
        },
    }
