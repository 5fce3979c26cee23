"""Build a stack's traffic plan from its revisions and the current weights. Pure."""

from __future__ import annotations

from typing import Any

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core import objects
from inferstack.core.config import OperatorConfig
from inferstack.core.durations import parse_duration
from inferstack.core.revision import cache_namespace, digest
from inferstack.core.traffic import ResponseCachePlan, RevisionBundle, SecretRef, Stickiness, TrafficPlan


def revision_bundle(
    meta: dict[str, Any], spec: InferenceStackSpec, rev: str, parts: dict[str, Any], config: OperatorConfig
) -> RevisionBundle:
    """The router's view of one revision, from the parts its ControllerRevision holds."""
    ns, name = meta["namespace"], meta["name"]
    model = parts["model"]
    endpoint = model.get("endpoint")
    url = (
        endpoint["url"].rstrip("/").removesuffix("/v1")
        if endpoint
        else config.backend_url_template.format(service=objects.revision_name(name, rev), namespace=ns, stack=name, revision=rev)
    )
    tools = parts.get("tools") or {}
    return RevisionBundle(
        revision=rev,
        url=url,
        served_model=model["name"],
        cache_namespace=cache_namespace(ns, name, rev, spec.cache.namespace),
        prompt_version=parts["prompt"].get("version", ""),
        prompt_hash=digest(parts["prompt"])[:12],
        system_prompt=parts["prompt"].get("system"),
        tools=[{"type": "function", "function": d} for d in tools.get("definitions") or []],
        # Only a reference: plans are ConfigMaps, and a token never goes into one.
        api_key_secret_ref=SecretRef(**endpoint["apiKeySecretRef"]) if endpoint and endpoint.get("apiKeySecretRef") else None,
    )


def traffic_plan(
    meta: dict[str, Any],
    spec: InferenceStackSpec,
    config: OperatorConfig,
    stable: tuple[str, dict[str, Any]],
    candidate: tuple[str, dict[str, Any]] | None = None,
    candidate_weight: int = 0,
    shadow_percent: int = 0,
    serial: int = 0,
) -> TrafficPlan:
    rc = spec.cache.response_cache
    return TrafficPlan(
        stack=meta["name"],
        namespace=meta["namespace"],
        serial=serial,
        stable=revision_bundle(meta, spec, stable[0], stable[1], config),
        candidate=revision_bundle(meta, spec, candidate[0], candidate[1], config) if candidate else None,
        candidate_weight=candidate_weight if candidate else 0,
        shadow_percent=shadow_percent if candidate else 0,
        stickiness=Stickiness(header=spec.rollout.stickiness.header, fallback_to_api_key=spec.rollout.stickiness.fallback_to_api_key),
        tenant_header=spec.cache.tenant_header,
        response_cache=ResponseCachePlan(
            enabled=rc.enabled, ttl_seconds=parse_duration(rc.ttl).total_seconds(), max_entries=rc.max_entries
        ),
    )


def parse_current(current_json: str | None) -> TrafficPlan | None:
    """The plan in force, or None when there is none or it does not parse (then it is rewritten)."""
    if current_json is None:
        return None
    try:
        return TrafficPlan.model_validate_json(current_json)
    except ValueError:
        return None


def plan_differs(current: TrafficPlan | None, wanted: TrafficPlan) -> bool:
    """Compare everything but the serial: an unchanged plan is never rewritten."""
    if current is None:
        return True
    return current.model_copy(update={"serial": 0}) != wanted.model_copy(update={"serial": 0})
