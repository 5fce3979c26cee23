"""Which plan objects the router obeys: the rule, pure.

A plan decides where a stack's prompts go and which Secret of its namespace
becomes a bearer token, so the router obeys only a plan that no namespace user
can write and that the stack itself controls: a ``TrafficPlan`` (only the
operator's ServiceAccount may write those) named ``<stack>-traffic``, in the
namespace its ``spec.namespace`` names, whose controller ownerReference is the
InferenceStack ``spec.stack`` of that namespace with the UID the live stack
has now. An ownerReference is no proof by itself (anyone may write one into an
object they create); the UID of the live stack is what a forger cannot choose
once the stack exists, and what a stack deleted and created again changes.

Everything else is ignored and counted by one of the bounded reasons below.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from inferstack import GROUP, KIND
from inferstack.core.trafficplan import plan_name


class Ignored(StrEnum):
    """Why a plan object is not obeyed: the ``reason`` label of ``inferstack_router_plans_ignored_total``."""

    CONFIGMAP = "configmap"  # a ConfigMap with the old plan label: any namespace user can write one
    NO_CONTROLLER = "no_controller"  # no controller ownerReference
    WRONG_OWNER = "wrong_owner"  # controlled by something else than the InferenceStack spec.stack names
    WRONG_NAMESPACE = "wrong_namespace"  # spec.namespace is not the object's own namespace
    WRONG_NAME = "wrong_name"  # not named <spec.stack>-traffic
    STACK_MISSING = "stack_missing"  # no live InferenceStack of that name in the namespace
    UID_MISMATCH = "uid_mismatch"  # the live stack has another UID (recreated, or a forged reference)


# The two reasons that depend on the router's view of the live stacks, which
# may lag the plan's own watch by a moment (a stack just created or deleted).
LIVE_REASONS = frozenset({Ignored.STACK_MISSING, Ignored.UID_MISMATCH})

EXPLAIN = {
    Ignored.CONFIGMAP: "a ConfigMap labelled as a traffic plan; plans are TrafficPlan objects written by the operator",
    Ignored.NO_CONTROLLER: "no controller ownerReference to its InferenceStack",
    Ignored.WRONG_OWNER: "its controller is not the InferenceStack its spec.stack names",
    Ignored.WRONG_NAMESPACE: "its spec.namespace is not its own namespace",
    Ignored.WRONG_NAME: "not named <spec.stack>-traffic",
    Ignored.STACK_MISSING: "no InferenceStack of that name exists",
    Ignored.UID_MISMATCH: "its owner's UID is not the live InferenceStack's",
}


def controller(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The object's controller ownerReference (the API server allows at most one)."""
    return next((ref for ref in meta.get("ownerReferences") or [] if ref.get("controller") is True), None)


def structural_refusal(meta: Mapping[str, Any], stack: Any, namespace: Any) -> Ignored | None:
    """Everything the object says about itself: its name, namespace and controller."""
    if namespace != meta.get("namespace"):
        return Ignored.WRONG_NAMESPACE
    if not isinstance(stack, str) or meta.get("name") != plan_name(stack):
        return Ignored.WRONG_NAME
    ref = controller(meta)
    if ref is None:
        return Ignored.NO_CONTROLLER
    # ownerReferences name no namespace: an owner is always in the object's own.
    if ref.get("kind") != KIND or str(ref.get("apiVersion", "")).partition("/")[0] != GROUP or ref.get("name") != stack:
        return Ignored.WRONG_OWNER
    return None


def refusal(meta: Mapping[str, Any], stack: Any, namespace: Any, live_uid: str | None) -> Ignored | None:
    """None when the router may obey this TrafficPlan, else why not.

    ``meta`` is the object's metadata, ``stack`` and ``namespace`` what its
    spec names, ``live_uid`` the UID of the InferenceStack ``stack`` in the
    object's namespace as the router sees it now (None: no such stack).
    """
    if (reason := structural_refusal(meta, stack, namespace)) is not None:
        return reason
    if live_uid is None:
        return Ignored.STACK_MISSING
    ref = controller(meta)
    if ref is None or not ref.get("uid") or ref.get("uid") != live_uid:
        return Ignored.UID_MISMATCH
    return None
