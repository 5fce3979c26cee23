"""Gateway API provider: the traffic plan as one HTTPRoute. Pure builder.

For teams that already run a Gateway: weighted ``backendRefs`` split traffic
between the stable and the candidate revision's Services, and a
``RequestMirror`` filter copies ``shadowPercent`` of requests to the
candidate (the gateway discards mirrored responses). A switch is still one
write of one object, so a rollback stays atomic.

What the router does and a gateway cannot: weights here split *requests*,
not users (no per-user stickiness), and the gateway does not apply the
revision's prompt/tools bundle or tenant cache keys. Use the router provider
when those matter.
"""

from __future__ import annotations

from typing import Any

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core import objects
from inferstack.core.config import OperatorConfig
from inferstack.core.rollout import Traffic

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"


def _backend(stack: str, revision: str, port: int, weight: int | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": "Service", "name": objects.revision_name(stack, revision), "port": port}
    if weight is not None:
        ref["weight"] = weight
    return ref


def build_httproute(stack: dict[str, Any], spec: InferenceStackSpec, traffic: Traffic, config: OperatorConfig) -> dict[str, Any]:
    assert spec.traffic.gateway_api is not None and traffic.stable is not None
    name = stack["metadata"]["name"]
    port = config.model_port
    backends = [_backend(name, traffic.stable, port, traffic.stable_weight)]
    rule: dict[str, Any] = {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}]}
    if traffic.candidate and traffic.candidate_weight:
        backends.append(_backend(name, traffic.candidate, port, traffic.candidate_weight))
    if traffic.candidate and traffic.shadow_percent:
        rule["filters"] = [
            {
                "type": "RequestMirror",
                "requestMirror": {"backendRef": _backend(name, traffic.candidate, port), "percent": traffic.shadow_percent},
            }
        ]
    rule["backendRefs"] = backends
    gw = spec.traffic.gateway_api
    route_spec: dict[str, Any] = {
        "parentRefs": [p.model_dump(by_alias=True, exclude_none=True) for p in gw.parent_refs],
        "rules": [rule],
    }
    if gw.hostnames:
        route_spec["hostnames"] = list(gw.hostnames)
    return {
        "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}",
        "kind": "HTTPRoute",
        "metadata": objects.metadata(stack, name, None, "traffic"),
        "spec": route_spec,
    }
