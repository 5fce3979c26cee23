"""The Argo CD health check (charts/inferstack/argocd/health.lua), run by real Lua 5.1 (gopher-lua's
language) on stacks captured from the e2e in every phase (tests/fixtures/status, written by
tests/e2e/test_health_e2e.py), and the copy in docs/operations.md is the file itself."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from health import EXPECTED, FIXTURES, HEALTH_LUA, PHASES, REPO, argocd_health


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_a_fixture_for_every_phase_and_no_other() -> None:
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(EXPECTED)
    assert {fixture(n)["status"]["phase"] for n in EXPECTED} == {"Pending", "Healthy", "Progressing", "Paused", "Degraded", "Failed"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_health_of_each_captured_phase(name: str) -> None:
    obj = fixture(name)
    assert obj["status"]["phase"] == PHASES[name]
    status, message = argocd_health(obj)
    assert status == EXPECTED[name][0]
    if name == "stale-generation":
        assert message == f"Waiting for the operator to observe generation {obj['metadata']['generation']}"
    else:
        assert message == f"{obj['status']['phase']}: {obj['status']['message']}"


def test_no_status_yet_and_an_unknown_phase() -> None:
    assert argocd_health({"metadata": {"generation": 1}})[0] == "Progressing"
    obj = fixture("healthy")
    obj["status"]["phase"] = "Exploded"
    assert argocd_health(obj)[0] == "Unknown"


def test_the_docs_ship_the_file_verbatim() -> None:
    """docs/operations.md shows the argocd-cm entry; its Lua is health.lua, indented under the key."""
    docs = (REPO / "docs" / "operations.md").read_text()
    block = re.search(r"resource\.customizations\.health\.inferstack\.dev_InferenceStack: \|\n((?:    .*\n|\n)+)", docs)
    assert block, "docs/operations.md has no argocd-cm health entry"
    lua = "\n".join(line.removeprefix("    ") for line in block.group(1).rstrip("\n").splitlines()) + "\n"
    assert lua == HEALTH_LUA.read_text()
