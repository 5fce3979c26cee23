"""External endpoints: the plan carries a Secret reference, never the token."""

import pytest

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core.config import OperatorConfig
from inferstack.core.revision import compute_revision
from inferstack.core.trafficplan import traffic_plan
from inferstack.router.plansource import PlanError, parse_plan

META = {"name": "hosted", "namespace": "team-a"}
SPEC = InferenceStackSpec.model_validate(
    {
        "model": {"name": "gpt-x", "gpus": 0, "endpoint": {"url": "https://llm.example.com/v1", "apiKeySecretRef": {"name": "k"}}},
        "prompt": {"version": "v1", "system": "s"},
    }
)


def plan_json() -> str:
    rev = compute_revision(SPEC)
    return traffic_plan(META, SPEC, OperatorConfig(), (rev.hash, rev.parts), serial=1).model_dump_json(by_alias=True)


def test_operator_writes_the_reference_and_no_token():
    plan = parse_plan(plan_json().replace('"apiKey":null', '"apiKey":"filled-by-router"'))
    assert plan.stable.url == "https://llm.example.com"
    assert plan.stable.api_key_secret_ref is not None and plan.stable.api_key_secret_ref.key == "api-key"
    assert '"apiKey":null' in plan_json()


def test_router_rejects_a_plan_whose_token_could_not_be_read():
    with pytest.raises(PlanError, match="token from Secret k key api-key could not be read"):
        parse_plan(plan_json())
