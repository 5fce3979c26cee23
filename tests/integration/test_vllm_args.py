"""Every vLLM argument list the operator writes is accepted by real vLLM's own parser.

The lists are rendered by the operator's code (core/objects.py build_deployment, and
core/embedder.py build_embedder_deployment for the embedding models it runs) from the
examples and from tables of specs, and parsed in one process of the vLLM venv
(e2e/vllmbin/install.sh) as the image's entrypoint ``vllm serve`` parses them
(e2e/vllmbin/checkargs.py). One parse per session: importing vLLM takes seconds.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core import objects
from inferstack.core.config import OperatorConfig
from inferstack.core.embedder import build_embedder_deployment, embedder_of
from inferstack.core.revision import compute_revision

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "e2e"))

import vllmrun  # noqa: E402

STACK = {"metadata": {"name": "bot", "namespace": "team-a", "uid": "u-1", "generation": 1}}
COMMIT = "a09a35458c702b33eeacc393d103063234e8bc28"


def _spec(engine: dict[str, Any], **model: Any) -> InferenceStackSpec:
    tp, pp = engine.get("tensorParallelSize", 1), engine.get("pipelineParallelSize", 1)
    return InferenceStackSpec.model_validate(
        {
            "model": {
                "name": "Qwen/Qwen2.5-7B-Instruct",
                "revision": COMMIT,
                "gpus": tp * pp,
                "engine": engine,
                **model,
            },
            "prompt": {"version": "v1", "system": "s"},
        }
    )


def _table() -> dict[str, InferenceStackSpec]:
    specs: dict[str, InferenceStackSpec] = {}
    for tp, pp in [(1, 1), (2, 1), (4, 1), (8, 1), (2, 2), (4, 2), (1, 4)]:
        specs[f"tp{tp}-pp{pp}"] = _spec({"tensorParallelSize": tp, "pipelineParallelSize": pp})
    for length in [128, 4096, 32768, 131072]:
        specs[f"max-model-len-{length}"] = _spec({"maxModelLen": length})
    for on in (True, False):
        specs[f"prefix-caching-{on}"] = _spec({"enablePrefixCaching": on})
    for dtype in ["auto", "half", "float16", "bfloat16", "float", "float32"]:
        specs[f"dtype-{dtype}"] = _spec({"dtype": dtype})
    for util in [0.1, 0.5, 0.92, 1]:
        specs[f"gpu-memory-utilization-{util}"] = _spec({"gpuMemoryUtilization": util})
    extra = {
        "enforce-eager": ["--enforce-eager"],
        "max-num-seqs": ["--max-num-seqs", "64"],
        "max-num-seqs-equals": ["--max-num-seqs=64"],
        "kv-cache-dtype": ["--kv-cache-dtype", "fp8"],
        "chunked-prefill": ["--enable-chunked-prefill", "--max-num-batched-tokens", "8192"],
        "tool-calling": ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
        "quantization": ["--quantization", "fp8"],
        "seed-swap": ["--seed", "7", "--disable-log-stats"],
    }
    for name, args in extra.items():
        specs[f"extra-{name}"] = _spec({"extraArgs": args})
    specs["no-revision"] = _spec({}, revision=None, revisionPolicy="Unpinned")
    specs["cache-volume"] = _spec({}, cacheVolume={"persistentVolumeClaim": "weights"})
    specs["everything"] = _spec(
        {"tensorParallelSize": 2, "pipelineParallelSize": 2, "maxModelLen": 8192, "enablePrefixCaching": False,
         "dtype": "bfloat16", "gpuMemoryUtilization": 0.85, "extraArgs": ["--enforce-eager", "--max-num-seqs=32"]},
        name="meta-llama/Llama-3.1-70B-Instruct", cacheVolume={"persistentVolumeClaim": "weights", "readOnly": False},
    )  # fmt: skip
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for i, doc in enumerate(
            d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "InferenceStack"
        ):
            specs[f"example-{path.stem}-{i}"] = InferenceStackSpec.model_validate(doc["spec"])
    return specs


SPECS = _table()


def _embedding_spec(**embedding: Any) -> InferenceStackSpec:
    """A retriever with a store and no endpoint: the operator runs the embedding model."""
    return InferenceStackSpec.model_validate(
        {
            "model": {"name": "Qwen/Qwen2.5-7B-Instruct", "revision": COMMIT},
            "prompt": {"version": "v1", "system": "s"},
            "retriever": {
                "embedding": {"model": "BAAI/bge-small-en-v1.5", "revision": COMMIT, "dimension": 384,
                              "image": "registry.example.com/vllm-cpu:v0.32.0", **embedding},
                "index": {"name": "docs", "version": "v1"},
                "store": {"secretRef": {"name": "store"}},
            },
        }
    )  # fmt: skip


EMBEDDERS: dict[str, InferenceStackSpec] = {
    "cpu": _embedding_spec(),
    "gpu": _embedding_spec(gpus=1, image="vllm/vllm-openai:v0.32.0"),
    "unpinned": _embedding_spec(revision=None, revisionPolicy="Unpinned"),
    "tag": _embedding_spec(revision="v1.5", revisionPolicy="ImmutableTag"),
    "decoder-model": _embedding_spec(model="Qwen/Qwen3-Embedding-0.6B", dimension=1024),
    "cpu-tuned": _embedding_spec(
        resources={"requests": {"cpu": 2, "memory": "4Gi"}, "limits": {"memory": "4Gi"}},
        extraArgs=["--gpu-memory-utilization=0.2", "--max-model-len", "512", "--dtype", "float32", "--enforce-eager"],
    ),
    "pooler-config": _embedding_spec(extraArgs=["--pooler-config", '{"seq_pooling_type": "CLS", "use_activation": true}']),
}


def operator_args(spec: InferenceStackSpec) -> list[str]:
    """The container args exactly as the operator writes them into the Deployment."""
    deployment = objects.build_deployment(STACK, spec, compute_revision(spec), OperatorConfig(), 1)
    container = vllmrun.model_container(deployment)
    assert "command" not in container, "the image's entrypoint (vllm serve) runs the args"
    return container["args"]


def embedder_args(spec: InferenceStackSpec) -> list[str]:
    """The container args of the embedding Deployment the operator writes for ``spec``."""
    embedder = embedder_of(compute_revision(spec).parts)
    assert embedder is not None
    container = vllmrun.model_container(build_embedder_deployment(STACK, spec, embedder, OperatorConfig(), 1))
    assert "command" not in container, "the image's entrypoint (vllm serve) runs the args"
    return container["args"]


@pytest.fixture(scope="session")
def verdicts() -> dict[str, dict[str, Any]]:
    inst = vllmrun.install_or_skip()
    lists = {name: operator_args(spec) for name, spec in SPECS.items()}
    lists |= {f"embedder-{name}": embedder_args(spec) for name, spec in EMBEDDERS.items()}
    lists["control-embedder-bad-runner"] = [*embedder_args(EMBEDDERS["cpu"]), "--runner", "embed"]
    # The parser must refuse too, or "accepted" would mean nothing.
    lists["control-unknown-flag"] = [*lists["tp1-pp1"], "--no-such-flag"]
    lists["control-bad-dtype"] = [*lists["tp1-pp1"][:-1], "--dtype", "fp7"]
    return vllmrun.check_args(inst, lists)


def test_the_table_covers_every_engine_field_the_operator_renders():
    rendered = set(itertools.chain.from_iterable(operator_args(s) for s in SPECS.values()))
    flags = {a.split("=")[0] for a in rendered if a.startswith("--")}
    assert {"--model", "--served-model-name", "--port", "--revision", "--tensor-parallel-size", "--pipeline-parallel-size",
            "--gpu-memory-utilization", "--dtype", "--max-model-len", "--enable-prefix-caching",
            "--no-enable-prefix-caching"} <= flags  # fmt: skip


@pytest.mark.parametrize("name", sorted(SPECS))
def test_vllm_accepts_the_operator_args(verdicts, name):
    verdict = verdicts[name]
    assert verdict["ok"], (
        f"vLLM refuses the args the operator writes for {name}: {verdict['error']}\nargs: {operator_args(SPECS[name])}"
    )


@pytest.mark.parametrize("name", sorted(EMBEDDERS))
def test_vllm_accepts_the_embedder_args(verdicts, name):
    verdict = verdicts[f"embedder-{name}"]
    args = embedder_args(EMBEDDERS[name])
    assert verdict["ok"], f"vLLM refuses the args the operator writes for embedder {name}: {verdict['error']}\nargs: {args}"
    assert args[args.index("--runner") + 1] == "pooling"


def test_vllm_refuses_what_it_should(verdicts):
    assert (
        not verdicts["control-unknown-flag"]["ok"]
        and "--no-such-flag" in verdicts["control-unknown-flag"]["error"]
    )
    assert not verdicts["control-bad-dtype"]["ok"] and "dtype" in verdicts["control-bad-dtype"]["error"]
    # vLLM 0.32 has no --task; its runners are auto, generate, pooling, draft.
    bad_runner = verdicts["control-embedder-bad-runner"]
    assert not bad_runner["ok"] and "runner" in bad_runner["error"], bad_runner
