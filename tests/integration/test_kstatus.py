"""Flux's view of a stack: upstream kstatus (sigs.k8s.io/cli-utils, via the e2e/kstatus helper built
from the Go module proxy) on the stacks captured from the e2e in every phase (tests/fixtures/status)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from health import EXPECTED, FIXTURES, kstatus, kstatus_binary


@pytest.mark.timeout(900)  # a first build fetches cli-utils and apimachinery
def test_kstatus_of_every_captured_phase() -> None:
    binary = kstatus_binary()
    if binary is None:
        assert os.environ.get("INFERSTACK_REQUIRE_E2E") != "1", "no Go toolchain: kstatus is untested"
        pytest.skip("no Go toolchain to build e2e/kstatus")
    got = kstatus(binary, sorted(FIXTURES.glob("*.json")))
    assert {name.removesuffix(".json"): status for name, (status, _) in got.items()} == {
        name: flux for name, (_, flux) in EXPECTED.items()
    }
    # Flux shows kstatus' message: the condition's own words.
    assert got["degraded.json"][1] and got["stale-generation.json"][1]
