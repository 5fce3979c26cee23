"""Pure builders: what one revision's objects look like."""

import pytest

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core import objects
from inferstack.core.config import GPU_TOLERATION, OperatorConfig, PoolConfig
from inferstack.core.revision import compute_revision

STACK = {"metadata": {"name": "bot", "namespace": "team-a", "uid": "u-1", "generation": 1}}


def spec(**model):
    return InferenceStackSpec.model_validate(
        {"model": {"name": "org/m", "revision": "c" * 40, "gpus": 1, **model}, "prompt": {"version": "v1", "system": "s"}}
    )


def deployment(sp, config=None):
    return objects.build_deployment(STACK, sp, compute_revision(sp), config or OperatorConfig(), sp.model.replicas)


def test_deployment_runs_vllm_with_the_spec_arguments_and_gpus():
    sp = spec(gpus=4, engine={"tensorParallelSize": 4, "maxModelLen": 8192, "enablePrefixCaching": False, "extraArgs": ["--enforce-eager"]})
    dep = deployment(sp)
    c = dep["spec"]["template"]["spec"]["containers"][0]
    args = c["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"
    assert args[args.index("--max-model-len") + 1] == "8192"
    assert args[args.index("--revision") + 1] == "c" * 40
    assert "--no-enable-prefix-caching" in args and args[-1] == "--enforce-eager"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "4"} == c["resources"]["requests"]
    assert GPU_TOLERATION in dep["spec"]["template"]["spec"]["tolerations"]


def test_deployment_has_shm_probes_sized_for_slow_loads_and_owner():
    sp = spec()
    dep = deployment(sp)
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    c = pod["containers"][0]
    startup = c["startupProbe"]
    # default progressDeadline 20m at a 10 s period: 120 probes before liveness counts
    assert startup["periodSeconds"] * startup["failureThreshold"] == 20 * 60
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert dep["metadata"]["ownerReferences"][0] == {
        "apiVersion": "inferstack.dev/v1alpha1", "kind": "InferenceStack", "name": "bot", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True,
    }  # fmt: skip


def test_pool_placement_and_cache_volume():
    config = OperatorConfig(pools={"batch": PoolConfig(node_selector={"pool": "batch"}, priority_class_name="batch-low")})
    sp = spec(pool="batch", nodeSelector={"zone": "a"}, cacheVolume={"persistentVolumeClaim": "weights"})
    pod = deployment(sp, config)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "batch", "zone": "a"}
    assert pod["priorityClassName"] == "batch-low"
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod["volumes"]
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env == {"HF_HOME": "/models", "HF_HUB_OFFLINE": "1"}


def test_cpu_model_gets_no_gpu_limits_or_toleration():
    pod = deployment(spec(gpus=0))["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {}
    assert "tolerations" not in pod


@pytest.mark.parametrize("builder", ["deployment", "service", "controller_revision"])
def test_every_object_is_labelled_with_stack_and_revision(builder):
    sp = spec()
    rev = compute_revision(sp)
    obj = {
        "deployment": lambda: deployment(sp),
        "service": lambda: objects.build_service(STACK, rev.hash, OperatorConfig()),
        "controller_revision": lambda: objects.build_controller_revision(STACK, rev, 3),
    }[builder]()
    labels = obj["metadata"]["labels"]
    assert labels[objects.LABEL_STACK] == "bot" and labels[objects.LABEL_REVISION] == rev.hash
    assert labels[objects.LABEL_MANAGED_BY] == "inferstack"
