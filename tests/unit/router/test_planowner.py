"""The router's rule for obeying a plan object: plan + owner metadata + live stack UID -> accept or a reason."""

from __future__ import annotations

from typing import Any

import pytest

from inferstack.router.planowner import Ignored, refusal, structural_refusal

UID = "0b6c0a4e-live"


def meta(name: str = "support-traffic", namespace: str = "team-a", **ref: Any) -> dict[str, Any]:
    owner = {"apiVersion": "inferstack.dev/v1alpha1", "kind": "InferenceStack", "name": "support", "uid": UID, "controller": True, **ref}
    return {"name": name, "namespace": namespace, "ownerReferences": [owner]}


@pytest.mark.parametrize(
    ("metadata", "stack", "namespace", "live", "want"),
    [
        pytest.param(meta(), "support", "team-a", UID, None, id="controlled-by-the-live-stack"),
        pytest.param({**meta(), "ownerReferences": []}, "support", "team-a", UID, Ignored.NO_CONTROLLER, id="no-owner"),
        pytest.param(meta(controller=False), "support", "team-a", UID, Ignored.NO_CONTROLLER, id="owner-but-not-controller"),
        pytest.param(meta(controller=None), "support", "team-a", UID, Ignored.NO_CONTROLLER, id="controller-unset"),
        pytest.param(meta(uid="guessed"), "support", "team-a", UID, Ignored.UID_MISMATCH, id="another-uid"),
        pytest.param(meta(uid=""), "support", "team-a", UID, Ignored.UID_MISMATCH, id="empty-uid"),
        pytest.param(meta(), "support", "team-a", "recreated", Ignored.UID_MISMATCH, id="stack-created-again"),
        pytest.param(meta(), "support", "team-a", None, Ignored.STACK_MISSING, id="stack-gone"),
        pytest.param(meta(name="billing-traffic"), "billing", "team-a", UID, Ignored.WRONG_OWNER, id="controller-is-another-stack"),
        pytest.param(meta(kind="Deployment", apiVersion="apps/v1"), "support", "team-a", UID, Ignored.WRONG_OWNER, id="controller-not-a-stack"),
        pytest.param(meta(apiVersion="evil.example/v1alpha1"), "support", "team-a", UID, Ignored.WRONG_OWNER, id="kind-of-another-group"),
        pytest.param(meta(name="support-traffic-2"), "support", "team-a", UID, Ignored.WRONG_NAME, id="not-named-after-its-stack"),
        pytest.param(meta(), "billing", "team-a", UID, Ignored.WRONG_NAME, id="spec-names-another-stack"),
        pytest.param(meta(), None, "team-a", UID, Ignored.WRONG_NAME, id="no-stack"),
        pytest.param(meta(), "support", "team-b", UID, Ignored.WRONG_NAMESPACE, id="spec-names-another-namespace"),
    ],
)
def test_refusal(metadata, stack, namespace, live, want) -> None:
    assert refusal(metadata, stack, namespace, live) == want


def test_structural_refusal_never_looks_at_the_live_stack() -> None:
    assert structural_refusal(meta(uid="anything"), "support", "team-a") is None
    assert structural_refusal({**meta(), "ownerReferences": None}, "support", "team-a") == Ignored.NO_CONTROLLER


def test_reasons_are_a_small_fixed_set() -> None:
    """They are label values: nothing an object says may become one."""
    assert {r.value for r in Ignored} == {
        "configmap", "no_controller", "wrong_owner", "wrong_namespace", "wrong_name", "stack_missing", "uid_mismatch",
    }
