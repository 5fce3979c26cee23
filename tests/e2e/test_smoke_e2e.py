"""The local control plane is real: API server, scheduler, controllers, kwok GPU nodes, Prometheus."""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request

from conftest import kget, kubectl, wait_until


def gpu_deployment(name: str, gpus: int) -> str:
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {
                        "containers": [{"name": "m", "image": "vllm/vllm-openai:v0.11.0", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    },
                },
            },
        }
    )


def test_api_server_answers_through_kubectl():
    proc = kubectl("version", "-o", "json")
    server = json.loads(proc.stdout)["serverVersion"]
    assert server["gitVersion"].startswith("v1.3"), server
    nodes = kget("nodes", None)["items"]
    gpu_nodes = [n for n in nodes if n["metadata"]["labels"].get("nvidia.com/gpu.present") == "true"]
    assert len(gpu_nodes) >= 1
    for n in gpu_nodes:
        assert n["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in n["spec"]["taints"]


def test_gpu_deployment_is_scheduled_on_a_gpu_node_and_available(namespace):
    kubectl("apply", "-n", namespace, "-f", "-", input=gpu_deployment("one-gpu", 1))
    kubectl("wait", "-n", namespace, "--for=condition=Available", "deployment/one-gpu", "--timeout=60s")
    pods = kget("pods", None, namespace)["items"]
    assert len(pods) == 1
    node = kget("node", pods[0]["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    # A real ReplicaSet from the real controller-manager owns the pod.
    assert pods[0]["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"


def test_too_many_gpus_stays_pending_with_the_schedulers_reason(namespace):
    kubectl("apply", "-n", namespace, "-f", "-", input=gpu_deployment("nine-gpus", 9))

    def unschedulable():
        pods = kget("pods", None, namespace)["items"]
        for pod in pods:
            for c in pod["status"].get("conditions", []):
                if c["type"] == "PodScheduled" and c["status"] == "False":
                    return pod, c
        return None

    pod, cond = wait_until("an unschedulable pod", unschedulable, timeout=60)
    assert pod["status"]["phase"] == "Pending"
    assert cond["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in cond["message"]


def test_prometheus_answers_an_instant_query():
    base = os.environ["INFERSTACK_PROMETHEUS_URL"]
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": "vector(42)"})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success"
    assert body["data"]["result"][0]["value"][1] == "42"
