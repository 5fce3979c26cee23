"""The traffic plan: the one object that says where a stack's requests go.

The operator writes one plan per stack (a ConfigMap labelled
``inferstack.dev/traffic-plan``, key ``plan.json``) and the router watches it.
A switch of traffic, bundle and cache namespace is therefore one write of one
object, which is what makes a rollback atomic.

This module is pure: the plan's schema. Which users a candidate weight
selects is the router's to compute (:mod:`inferstack.router.assignment`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

PLAN_LABEL = "inferstack.dev/traffic-plan"
PLAN_KEY = "plan.json"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ResponseCachePlan(_Model):
    enabled: bool = False
    ttl_seconds: float = 300.0
    max_entries: int = 10_000


class SecretRef(_Model):
    name: str = Field(..., min_length=1)
    key: str = Field(..., min_length=1)


class RevisionBundle(_Model):
    """Everything the router applies to a request served by one revision."""

    revision: str = Field(..., min_length=1)
    url: str = Field(..., pattern=r"^https?://", description="Base URL of the revision's OpenAI server, without /v1.")
    served_model: str = Field(..., min_length=1, description="The model name the backend expects.")
    cache_namespace: str = Field(..., min_length=1)
    prompt_version: str = ""
    prompt_hash: str = ""
    system_prompt: str | None = None
    tools: list[dict] = Field(default_factory=list)
    api_key_secret_ref: SecretRef | None = Field(
        None, description="Secret (in the plan's namespace) with the bearer token of an external endpoint."
    )
    api_key: str | None = Field(
        None, description="The token itself: filled in memory by the router from api_key_secret_ref, never written to a plan."
    )


class Stickiness(_Model):
    header: str = "x-user-id"
    fallback_to_api_key: bool = True


class TrafficPlan(_Model):
    """Weights are percents of users; shadow is a percent of requests."""

    stack: str
    namespace: str
    serial: int = Field(0, ge=0, description="Increases with every write; routers ignore older plans.")
    stable: RevisionBundle
    candidate: RevisionBundle | None = None
    candidate_weight: int = Field(0, ge=0, le=100)
    shadow_percent: int = Field(0, ge=0, le=100)
    stickiness: Stickiness = Field(default_factory=Stickiness)
    tenant_header: str = "x-tenant-id"
    response_cache: ResponseCachePlan = Field(default_factory=ResponseCachePlan)

    @model_validator(mode="after")
    def _candidate_needed(self) -> TrafficPlan:
        if (self.candidate_weight or self.shadow_percent) and self.candidate is None:
            raise ValueError("candidateWeight or shadowPercent > 0 needs a candidate revision")
        return self

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.stack}"
