"""The golden Job's program: every case once per revision, sent as the router would, errors counted apart."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from inferstack.core import golden
from inferstack.core.trafficplan import RevisionBundle
from inferstack.golden import runner

CASES = [
    {"id": "refund", "slice": "billing", "messages": [{"role": "user", "content": "refund window?"}], "expected": "30 days", "critical": True},
    {"id": "hours", "slice": "general", "messages": [{"role": "user", "content": "opening hours?"}], "assertions": [{"regex": "(?i)9 ?am"}]},
    {"id": "boom", "slice": "general", "messages": [{"role": "user", "content": "boom"}], "expected": "x"},
]


@pytest.fixture
async def model() -> AsyncIterator[tuple[TestServer, list[dict[str, Any]], Counter]]:
    """Answers by the system prompt: "good" knows the refund window, "bad" does not; "boom" is a 500."""
    bodies: list[dict[str, Any]] = []
    ids: Counter = Counter()

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        ids[request.headers["X-Request-Id"]] += 1
        question = body["messages"][-1]["content"]
        if question == "boom":
            return web.json_response({"error": "down"}, status=500)
        good = body["messages"][0]["content"] == "good"
        text = ("Within 30 days." if good else "We never refund.") if "refund" in question else "From 9am."
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": text}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with TestServer(app) as server:
        yield server, bodies, ids


def config(url: str, text: str) -> golden.RunnerConfig:
    def bundle(rev: str, prompt: str) -> RevisionBundle:
        return RevisionBundle(revision=rev, url=url, served_model=f"model-{rev}", cache_namespace=f"ns-{rev}", system_prompt=prompt)

    return golden.RunnerConfig(
        stack="bot", namespace="team-a", evaluator="golden", cases_hash=golden.cases_hash([("cm/k", text)]),
        files=(golden.CaseFile(path="0.jsonl", source="cm/k"),), slices=("billing", "general"), concurrency=2,
        request_timeout_seconds=5, candidate=bundle("cand", "bad"), stable=bundle("stab", "good"),
    )  # fmt: skip


async def test_every_case_goes_once_to_each_revision_with_its_bundle(model) -> None:
    server, bodies, ids = model
    text = "\n".join(json.dumps(c) for c in CASES)
    cfg = config(str(server.make_url("")).rstrip("/"), text)
    report = await runner.replay(cfg, golden.parse_cases([("cm/k", text)], cfg.slices))
    assert report.critical_failed == ("refund",)  # the candidate lost the refund window
    assert report.slices["billing"] == golden.SliceCounts(1, -1, 1, 0, 1)
    assert report.slices["general"] == golden.SliceCounts(1, 0, 0, 1, 1)
    assert report.errors == 1 and "boom" in report.error and "HTTP 500" in report.error  # an error, not a failure
    assert report.critical_errors == ()
    # exactly once per case and revision, never retried
    assert all(n == 1 for n in ids.values()) and len(ids) == 2 * len(CASES)
    assert f"golden-{cfg.cases_hash[:8]}-refund-candidate" in ids
    # what the router would send: served model, the revision's system prompt first, its cache salt
    cand = next(b for b in bodies if b["model"] == "model-cand")
    assert cand["messages"][0] == {"role": "system", "content": "bad"} and cand["cache_salt"] and cand["temperature"] == 0


def test_main_refuses_cases_that_changed_under_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = json.dumps(CASES[0])
    (tmp_path / "0.jsonl").write_text(text + "\n")  # not the content the operator hashed
    monkeypatch.setenv(golden.ENV_CONFIG, config("http://127.0.0.1:9", text).model_dump_json(by_alias=True))
    monkeypatch.setenv(golden.ENV_CASES_DIR, str(tmp_path))
    monkeypatch.setenv(golden.ENV_REPORT, str(tmp_path / "report"))
    assert runner.main() == 0
    report = golden.Report.parse((tmp_path / "report").read_text())
    assert report.cases == 0 and "the operator asked for" in report.error


@pytest.mark.parametrize(
    ("files", "env", "error"),
    [
        pytest.param({}, True, "cannot read the cases", id="no-file"),
        pytest.param({"0.jsonl": "{bad"}, True, "not JSON", id="bad-line"),
        pytest.param({}, False, "no usable configuration", id="no-config"),
    ],
)
def test_main_fails_only_when_it_cannot_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], env: bool, error: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if env:
        monkeypatch.setenv(golden.ENV_CONFIG, config("http://127.0.0.1:9", "").model_dump_json(by_alias=True))
    else:
        monkeypatch.delenv(golden.ENV_CONFIG, raising=False)
    monkeypatch.setenv(golden.ENV_CASES_DIR, str(tmp_path))
    monkeypatch.setenv(golden.ENV_REPORT, str(tmp_path / "report"))
    assert runner.main() == 1
    assert error in golden.Report.parse((tmp_path / "report").read_text()).error
