"""The CRD's validation on the real API server: each mistake refused at apply time, with its message.

The cases live in tests/cel_cases.py; tests/unit/test_cel_rules.py puts the same cases
through pydantic (the operator's reading of a spec).
"""

from __future__ import annotations

import copy
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PREFIX, REPO, kget, kubectl, wait_established, wait_until

sys.path.insert(0, str(REPO / "tests"))

import cel_cases
from cel_cases import SCHEMA, Refused


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    """One namespace for the module: refused objects leave nothing behind."""
    name = f"{PREFIX}-cel-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false", check=False)


def api_errors(stderr: str) -> list[str]:
    """The errors of an "is invalid" answer, one per entry ("* ..." lines when there are several)."""
    _, found, detail = stderr.strip().partition(" is invalid: ")
    assert found, stderr
    detail = detail.strip()
    if detail.startswith("* "):
        # A value outside a field's enum also makes the API server skip the CEL rules that read
        # that field, which it says in a line of its own: a consequence of the mistake, not another.
        return [line[2:] for line in detail.splitlines()
                if line.startswith("* ") and not line.endswith(SKIPPED_RULES)]
    return [detail]


SKIPPED_RULES = "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"


def apply(namespace: str, manifest: dict[str, Any], *extra: str) -> Any:
    return kubectl("apply", "-n", namespace, *extra, "-f", "-", input=json.dumps(manifest), check=False)


def test_the_api_server_accepts_the_crd_and_its_rule_costs() -> None:
    """An over-budget CEL rule makes the API server refuse the whole CRD (conftest applied it already)."""
    proc = kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", str(REPO / "crds"), check=False)
    assert proc.returncode == 0, proc.stderr
    crd = kget("crd", "inferencestacks.inferstack.dev")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True" and conditions.get("NamesAccepted") == "True"


@pytest.mark.parametrize("case", cel_cases.REFUSED, ids=[c.id for c in cel_cases.REFUSED])
def test_mistake_is_refused_at_apply_time(ns: str, case: Refused) -> None:
    manifest = copy.deepcopy(case.manifest)
    manifest["metadata"]["name"] = case.id[:52]
    proc = apply(ns, manifest)
    assert proc.returncode != 0, f"{case.id} was accepted"
    errors = api_errors(proc.stderr)
    assert len(errors) == 1, errors  # refused for this mistake alone
    (error,) = errors
    assert error.startswith(f"{case.path}: "), error
    if case.python == SCHEMA:
        assert case.message in error
    else:
        assert error.endswith(case.message), error
    assert kget("istack", manifest["metadata"]["name"], ns) is None


def test_a_mistake_is_refused_on_update_too(ns: str) -> None:
    good = copy.deepcopy(cel_cases.BASE)
    good["metadata"]["name"] = "update"
    apply(ns, good)
    bad = copy.deepcopy(good)
    bad["spec"]["gates"][0]["threshold"] = {"min": 1, "max": 0}
    bad["spec"]["gates"][0].pop("compare")
    proc = apply(ns, bad)
    assert proc.returncode != 0
    assert api_errors(proc.stderr) == [
        'spec.gates[0].threshold: Invalid value: "object": spec.gates[].threshold.min must not be greater than '
        "threshold.max: no value could pass, so every candidate would be rolled back"
    ]
    assert kget("istack", "update", ns)["spec"]["gates"][0]["compare"] == {"baseline": "stable", "maxRelativeDrop": 0.05}


@pytest.mark.parametrize(("name", "manifest"), cel_cases.ACCEPTED, ids=[c[0] for c in cel_cases.ACCEPTED])
def test_near_miss_is_accepted(ns: str, name: str, manifest: dict[str, Any]) -> None:
    proc = apply(ns, manifest, "--dry-run=server")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_is_accepted(ns: str, path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        proc = apply(ns, doc, "--dry-run=server")
        assert proc.returncode == 0, proc.stderr


def _renamed_crd(suffix: str, drop_message: str | None = None) -> dict[str, Any]:
    """The CRD under another group and kind (no short names), so it cannot shadow the real one."""
    crd = yaml.safe_load((REPO / "crds" / "inferstack.dev_inferencestacks.yaml").read_text())
    group, plural = f"ratchet{suffix}.inferstack.dev", f"ratchetstacks{suffix}"
    crd["metadata"]["name"] = f"{plural}.{group}"
    crd["spec"]["group"] = group
    crd["spec"]["names"] = {"kind": "RatchetStack", "listKind": "RatchetStackList", "plural": plural, "singular": f"ratchetstack{suffix}"}
    if drop_message:
        threshold = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["gates"]["items"]["properties"]["threshold"]
        threshold["x-kubernetes-validations"] = [e for e in threshold["x-kubernetes-validations"] if drop_message not in e["message"]]
    return crd


def test_a_new_rule_does_not_wedge_a_stack_stored_before_it(ns: str) -> None:
    """Upgrading the CRD: a stored stack that breaks a new rule keeps its status writes and its unrelated
    edits (validation ratcheting, on by default since 1.30), but cannot be changed to another broken value."""
    suffix = uuid.uuid4().hex[:6]
    rule = "threshold.min must not be greater than threshold.max"
    before, after = _renamed_crd(suffix, drop_message=rule), _renamed_crd(suffix)
    resource = f"{before['spec']['names']['plural']}.{before['spec']['group']}"
    stack = copy.deepcopy(cel_cases.BASE)
    stack["apiVersion"] = f"{before['spec']['group']}/v1alpha1"
    stack["kind"] = "RatchetStack"
    stack["metadata"]["name"] = "stored"
    stack["spec"]["gates"] = [cel_cases.gate(cel_cases.LATENCY, threshold={"min": 3, "max": 2})]
    try:
        kubectl("apply", "-f", "-", input=json.dumps(before))
        wait_established(resource)
        kubectl("create", "-n", ns, "-f", "-", input=json.dumps(stack))  # with the rule missing: stored
        kubectl("apply", "-f", "-", input=json.dumps(after))
        fresh = {**stack, "metadata": {"name": "fresh"}}
        wait_until("the new rule in force", lambda: apply(ns, fresh, "--dry-run=server").returncode != 0, timeout=30)

        status = kubectl("patch", resource, "stored", "-n", ns, "--subresource=status", "--type=merge",
                         "-p", '{"status": {"message": "written by the operator"}}', check=False)  # fmt: skip
        assert status.returncode == 0, status.stderr
        unrelated = kubectl("patch", resource, "stored", "-n", ns, "--type=merge", "-p", '{"spec": {"model": {"replicas": 2}}}', check=False)
        assert unrelated.returncode == 0, unrelated.stderr
        broken = kubectl("patch", resource, "stored", "-n", ns, "--type=json",
                         "-p", '[{"op": "replace", "path": "/spec/gates/0/threshold", "value": {"min": 5, "max": 1}}]', check=False)  # fmt: skip
        assert broken.returncode != 0
        assert rule in broken.stderr, broken.stderr
    finally:
        kubectl("delete", "crd", resource, "--wait=false", check=False)
