"""The Gateway API provider's HTTPRoute for each kind of traffic."""

import pytest

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core.config import OperatorConfig
from inferstack.core.gateway import build_httproute
from inferstack.core.rollout import Traffic

STACK = {"metadata": {"name": "bot", "namespace": "ns", "uid": "u"}}
SPEC = InferenceStackSpec.model_validate(
    {
        "model": {"name": "m", "revision": "e" * 40},
        "prompt": {"version": "v1", "system": "s"},
        "traffic": {"provider": "GatewayAPI", "gatewayApi": {"parentRefs": [{"name": "gw", "namespace": "infra"}]}},
    }
)


@pytest.mark.parametrize(
    "traffic,backends,mirror",
    [
        (Traffic("a"), {"bot-a": 100}, None),
        (Traffic("a", "b", 0, 10), {"bot-a": 100}, ("bot-b", 10)),
        (Traffic("a", "b", 25, 0), {"bot-a": 75, "bot-b": 25}, None),
    ],
    ids=["stable-only", "shadow", "canary"],
)
def test_route_weights_and_mirror(traffic, backends, mirror):
    route = build_httproute(STACK, SPEC, traffic, OperatorConfig())
    rule = route["spec"]["rules"][0]
    assert {b["name"]: b["weight"] for b in rule["backendRefs"]} == backends
    filters = rule.get("filters", [])
    got = (filters[0]["requestMirror"]["backendRef"]["name"], filters[0]["requestMirror"]["percent"]) if filters else None
    assert got == mirror
    assert route["spec"]["parentRefs"] == [{"name": "gw", "namespace": "infra"}]
