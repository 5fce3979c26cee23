"""The traffic plan: the one object that says where a stack's requests go.

The operator writes one plan per stack, a ``TrafficPlan`` custom resource
(``trafficplans.inferstack.dev``, named ``<stack>-traffic``, controlled by its
InferenceStack) whose ``spec`` is the plan, and the router watches it. A
switch of traffic, bundle and cache namespace is therefore one write of one
object, which is what makes a rollback atomic. A custom resource rather than a
ConfigMap: namespace users can write ConfigMaps (the aggregated ``edit`` role
grants them), and a plan decides where prompts go and which Secret becomes a
bearer token, so only the operator may write one.

Everything about the plan is here, and all of it is pure: its schema (the
JSON the router reads, field names in camelCase), the object it is stored
in, and how the operator builds it from the revisions' parts and decides
whether the plan in force must be rewritten. Where the router gets plans from
is :mod:`inferstack.router.plansource`; which users a candidate weight selects
is :mod:`inferstack.router.assignment`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

from inferstack import GROUP, VERSION
from inferstack.api.v1alpha1 import Evaluator, InferenceStackSpec
from inferstack.core import objects
from inferstack.core.config import OperatorConfig
from inferstack.core.durations import parse_duration
from inferstack.core.embedder import embedder_of, embedder_url
from inferstack.core.revision import cache_namespace, digest

PLAN_KIND = "TrafficPlan"
PLAN_PLURAL = "trafficplans"
# The plan ConfigMaps of releases before the TrafficPlan resource: the operator
# deletes the ones it owns, and the router never obeys any of them.
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


class RetrievalPlan(_Model):
    """What the router needs to retrieve for one revision: the embedding server, the pinned index version, the store.

    Part of the revision's bundle, so a candidate's shadow and canary requests
    search the candidate's index version and a rollback restores the stable one
    in the same plan write as everything else.
    """

    embedding_url: str = Field(..., pattern=r"^https?://", description="Base URL of the OpenAI-compatible embeddings server, without /v1.")
    embedding_model: str = Field(..., min_length=1)
    dimension: int = Field(..., ge=1, le=16_000)
    index: str = Field(..., min_length=1, max_length=253)
    index_version: str = Field(..., min_length=1, max_length=63)
    top_k: int = Field(5, ge=1, le=100)
    store_kind: str = Field("pgvector", pattern=r"^pgvector$")
    store_secret_ref: SecretRef
    query_template: str | None = Field(None, max_length=8192)
    timeout_seconds: float = Field(2.0, gt=0, le=300)
    on_failure: str = Field("Fail", pattern=r"^(Fail|AnswerWithoutContext)$")
    store_dsn: str | None = Field(
        None, repr=False,  # it holds the store's password: not in a repr that reaches a log
        description="The DSN itself: filled in memory by the router from store_secret_ref, never written to a plan.",
    )


class RevisionBundle(_Model):
    """A revision's bundle: everything the router applies to a request that revision serves.

    The plan's ``stable`` and ``candidate``. Where the request goes (url,
    served model, token), what is added to it (system prompt, tools, cache
    salt from the cache namespace) and what the answer is labelled with
    (revision, prompt hash). "Bundle" means this and nothing else; the whole
    revision (its parts) is what its ControllerRevision holds.
    """

    revision: str = Field(..., min_length=1)
    url: str = Field(..., pattern=r"^https?://", description="Base URL of the revision's OpenAI server, without /v1.")
    served_model: str = Field(..., min_length=1, description="The model name the backend expects.")
    cache_namespace: str = Field(..., min_length=1)
    prompt_version: str = ""
    prompt_hash: str = ""
    system_prompt: str | None = None
    # Tool schemas are free-form JSON: kept whole in the CRD, not pruned to {}.
    tools: list[Annotated[dict, WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True})]] = Field(
        default_factory=list
    )
    api_key_secret_ref: SecretRef | None = Field(
        None, description="Secret (in the plan's namespace) with the bearer token of an external endpoint."
    )
    api_key: str | None = Field(
        None, description="The token itself: filled in memory by the router from api_key_secret_ref, never written to a plan."
    )
    system_template: str | None = Field(
        None, max_length=65_536, description="prompt.templates.system: Jinja2 rendering the system message (documents, messages, tools)."
    )
    retrieval: RetrievalPlan | None = None


class Stickiness(_Model):
    header: str = "x-user-id"
    fallback_to_api_key: bool = True


class EvaluationPlan(_Model):
    """The stack's declared slices and evaluators, as every router replica applies them.

    ``slices`` empty: the stack declares none, and the router's own
    ``--slices`` allowlist labels its requests.
    """

    slice_header: str = "x-inferstack-slice"
    slices: tuple[str, ...] = ()
    evaluators: tuple[Evaluator, ...] = ()
    judge_api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Judge name -> token: filled in memory by the router from the judge's apiKeySecretRef, never written to a plan.",
    )


class ObservabilityPlan(_Model):
    """How the router records this stack's requests beyond metrics (spec.observability)."""

    content_sample_rate: float = Field(0.0, ge=0, le=1, description="Share of requests whose contents are recorded; 0: none.")


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
    evaluation: EvaluationPlan = Field(default_factory=EvaluationPlan)
    observability: ObservabilityPlan = Field(default_factory=ObservabilityPlan)

    @model_validator(mode="after")
    def _candidate_needed(self) -> TrafficPlan:
        if (self.candidate_weight or self.shadow_percent) and self.candidate is None:
            raise ValueError("candidateWeight or shadowPercent > 0 needs a candidate revision")
        return self

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.stack}"


# ------------------------------------------------------- the TrafficPlan object

# Filled in memory by the router, never written: the CRD has no such fields,
# so the API server refuses a plan that carries a token.
_BUNDLE_SECRETS: dict[str, Any] = {"api_key": True, "retrieval": {"store_dsn": True}}
IN_MEMORY_ONLY: dict[str, Any] = {"stable": _BUNDLE_SECRETS, "candidate": _BUNDLE_SECRETS, "evaluation": {"judge_api_keys": True}}


def plan_name(stack: str) -> str:
    return f"{stack}-traffic"


def plan_spec(plan: TrafficPlan) -> dict[str, Any]:
    """The plan as the object's ``spec``: no nulls (the API server prunes them) and no tokens."""
    return plan.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=IN_MEMORY_ONLY)


def build_traffic_plan(stack: dict[str, Any], plan: TrafficPlan) -> dict[str, Any]:
    """The stack's TrafficPlan: its controller ownerReference (name and UID) is what the router trusts."""
    meta = objects.metadata(stack, plan_name(stack["metadata"]["name"]), None, "traffic-plan")
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": PLAN_KIND, "metadata": meta, "spec": plan_spec(plan)}


def controller_uid(meta: dict[str, Any]) -> str | None:
    """UID of the InferenceStack that controls an object, from its ownerReferences; None when none does."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "InferenceStack" and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return ref.get("uid")
    return None


# --------------------------------------------------------------- building


def revision_bundle(
    meta: dict[str, Any], spec: InferenceStackSpec, rev: str, parts: dict[str, Any], config: OperatorConfig
) -> RevisionBundle:
    """A revision's bundle, from the parts its ControllerRevision holds."""
    ns, name = meta["namespace"], meta["name"]
    model = parts["model"]
    endpoint = model.get("endpoint")
    url = (
        endpoint["url"].rstrip("/").removesuffix("/v1")
        if endpoint
        else config.backend_url_template.format(service=objects.revision_name(name, rev), namespace=ns, stack=name, revision=rev)
    )
    tools = parts.get("tools") or {}
    prompt = parts["prompt"]
    return RevisionBundle(
        revision=rev,
        url=url,
        served_model=model["name"],
        cache_namespace=cache_namespace(ns, name, rev, spec.cache.namespace),
        prompt_version=parts["prompt"].get("version", ""),
        prompt_hash=digest(parts["prompt"])[:12],
        system_prompt=parts["prompt"].get("system"),
        tools=[{"type": "function", "function": d} for d in tools.get("definitions") or []],
        # Only a reference: every namespace user may read plans (the view role), and a token never goes into one.
        api_key_secret_ref=SecretRef(**endpoint["apiKeySecretRef"]) if endpoint and endpoint.get("apiKeySecretRef") else None,
        system_template=(prompt.get("templates") or {}).get("system"),
        retrieval=retrieval_plan(meta, spec, parts, config),
    )


def retrieval_plan(
    meta: dict[str, Any], spec: InferenceStackSpec, parts: dict[str, Any], config: OperatorConfig
) -> RetrievalPlan | None:
    """The revision's retrieval, from its own retriever part; None when it has no store to search.

    Content (index version, embedding, topK, template) comes from the
    revision's parts, so each revision keeps its own; the failure policy and
    timeout are delivery settings and come from the spec in force. With no
    endpoint, queries are embedded by the embedding model the operator runs
    for the revision (core/embedder.py), which it waits for before traffic.
    """
    retriever = parts.get("retriever")
    if not retriever or not retriever.get("store"):
        return None
    delivery = spec.retriever
    store = retriever["store"]
    embedder = embedder_of(parts)
    return RetrievalPlan(
        embedding_url=(
            embedder_url(meta, embedder.key, config) if embedder is not None
            else retriever["endpoint"].rstrip("/").removesuffix("/v1")
        ),
        embedding_model=retriever["embedding"]["model"],
        dimension=retriever["embedding"]["dimension"],
        index=retriever["index"]["name"],
        index_version=retriever["index"]["version"],
        top_k=retriever["topK"],
        store_kind=store["kind"],
        store_secret_ref=SecretRef(name=store["secretRef"]["name"], key=store["secretRef"]["key"]),
        query_template=retriever.get("queryTemplate"),
        timeout_seconds=parse_duration(delivery.timeout).total_seconds() if delivery else 2.0,
        on_failure=str(delivery.on_failure) if delivery else "Fail",
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
    rc, ev = spec.cache.response_cache, spec.evaluation
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
        evaluation=EvaluationPlan(
            slice_header=ev.slices.header if ev.slices else "x-inferstack-slice",
            slices=tuple(ev.slices.values) if ev.slices else (),
            evaluators=tuple(ev.evaluators),
        ),
        response_cache=ResponseCachePlan(
            enabled=rc.enabled, ttl_seconds=parse_duration(rc.ttl).total_seconds(), max_entries=rc.max_entries
        ),
        observability=ObservabilityPlan(
            content_sample_rate=spec.observability.content_recording.sample_rate if spec.observability.content_recording else 0.0
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
