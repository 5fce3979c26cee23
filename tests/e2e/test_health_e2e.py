"""A stack driven through every phase on the real control plane, judged as Argo CD and Flux would.

Each phase's whole object is run through the Argo CD health check (real Lua)
and upstream kstatus (Flux's library), and checked against ``tests/health.py``'s
table. With ``INFERSTACK_CAPTURE_FIXTURES=1`` the objects are also written to
``tests/fixtures/status/`` (volatile metadata stripped), where
``tests/unit/test_argocd_health.py`` (the Lua) and ``tests/integration/test_kstatus.py``
(kstatus) check them without a cluster.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import REPO, kget, kubectl, wait_until

from scenario import GOOD_PROMPT, support_stack, with_prompt

sys.path.insert(0, str(REPO / "tests"))
from health import EXPECTED, FIXTURES, PHASES, argocd_health, fixture_object, kstatus, kstatus_binary

CAPTURE = os.environ.get("INFERSTACK_CAPTURE_FIXTURES") == "1"
LONG = [{"canary": {"weight": 10, "duration": "30m"}}, {"canary": {"weight": 50, "duration": "30m"}}]


def apply(namespace: str, manifest: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def command(namespace: str, name: str, verb: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    kubectl("annotate", "-n", namespace, "istack", name, "--overwrite", f"inferstack.dev/command={verb}", f"inferstack.dev/command-id={stamp}")


def in_phase(namespace: str, name: str, phase: str, timeout: float = 60) -> dict:
    """The stack once its status shows ``phase`` for its current generation."""

    def seen() -> dict | None:
        obj = kget("istack", name, namespace)
        status = (obj or {}).get("status") or {}
        ok = status.get("phase") == phase and status.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if ok else None

    return wait_until(f"{name} {phase}", seen, timeout=timeout)


def test_every_phase_as_argo_cd_and_flux_see_it(operator, namespace, tmp_path: Path) -> None:
    binary = kstatus_binary()
    if binary is None:
        if os.environ.get("INFERSTACK_REQUIRE_E2E") == "1":
            pytest.fail("no Go toolchain to build the kstatus helper (e2e/kstatus)")
        pytest.skip("no Go toolchain to build the kstatus helper (e2e/kstatus)")
    captured: dict[str, dict] = {}

    # Pending, then Failed: pods that can never be scheduled miss the progress deadline.
    stuck = support_stack("stuck", GOOD_PROMPT, gates=[], progressDeadline="8s")
    stuck["spec"]["model"]["nodeSelector"] = {"inferstack.dev/no-such-node": "true"}
    apply(namespace, stuck)
    captured["pending"] = in_phase(namespace, "stuck", "Pending")
    captured["failed-stuck"] = in_phase(namespace, "stuck", "Failed", timeout=60)

    # Failed: a spec the operator cannot use (its prompt ConfigMap does not exist).
    invalid = support_stack("invalid", GOOD_PROMPT, gates=[])
    invalid["spec"]["prompt"] = {"version": "v1", "configMapRef": {"name": "no-such-prompt", "key": "system"}}
    apply(namespace, invalid)
    captured["failed-invalid-spec"] = in_phase(namespace, "invalid", "Failed")

    # Healthy, Progressing (a long canary), Paused (a command), Degraded (abort).
    shop = support_stack("shop", GOOD_PROMPT, gates=[], steps=LONG)
    apply(namespace, shop)
    captured["healthy"] = in_phase(namespace, "shop", "Healthy")
    apply(namespace, with_prompt(shop, GOOD_PROMPT + " Be brief."))
    captured["progressing"] = in_phase(namespace, "shop", "Progressing")
    command(namespace, "shop", "pause")
    captured["paused"] = in_phase(namespace, "shop", "Paused")
    command(namespace, "shop", "abort")
    captured["degraded"] = in_phase(namespace, "shop", "Degraded")

    # A spec the operator has not observed: stopped, it cannot.
    operator.stop()
    try:
        kubectl("patch", "-n", namespace, "istack", "shop", "--type=merge", "-p", json.dumps({"spec": {"model": {"replicas": 2}}}))
        obj = kget("istack", "shop", namespace)
        assert obj["status"]["observedGeneration"] < obj["metadata"]["generation"]
        captured["stale-generation"] = obj
    finally:
        operator.start()

    assert set(captured) == set(EXPECTED)
    files = []
    for name, obj in captured.items():
        assert obj["status"]["phase"] == PHASES[name], (name, obj["status"])
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(obj))
        files.append(path)
    flux = kstatus(binary, files)
    wrong = []
    for name, obj in captured.items():
        argo, _ = argocd_health(obj)
        got = (argo, flux[f"{name}.json"][0])
        if got != EXPECTED[name]:
            wrong.append(f"{name}: Argo CD {got[0]}, kstatus {got[1]}; expected {EXPECTED[name]}; status {obj['status']}")
    assert not wrong, "\n".join(wrong)

    if CAPTURE:
        FIXTURES.mkdir(parents=True, exist_ok=True)
        for name, obj in captured.items():
            (FIXTURES / f"{name}.json").write_text(json.dumps(fixture_object(obj), indent=2, sort_keys=True) + "\n")
