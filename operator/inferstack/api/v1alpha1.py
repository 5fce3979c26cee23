"""InferenceStack v1alpha1: the API types, the single source of truth.

The CRD in ``crds/`` is generated from these models (``make manifests``), so
every default, enum, range and CEL rule written here is enforced by the API
server before the operator ever sees an object. Python code reads specs by
validating them with the same models, which fills in the same defaults.

Field names are camelCase on the wire (``alias``) and snake_case in Python.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# A Go-style duration as Kubernetes users write them: 30s, 5m, 1h30m, 500ms.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# DNS-1123 label: what a Kubernetes object name part may contain.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
# Bounds on list sizes and string lengths keep the CEL cost estimate finite,
# which the API server insists on before it accepts a rule.
ShortStr = Annotated[str, Field(max_length=253)]


def cel(rule: str, message: str, *, field_path: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry. Messages name the field and the fix."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class FreeForm(BaseModel):
    """An object whose keys are not checked (JSON Schema, tolerations...)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})


# --------------------------------------------------------------------- model


class RevisionPolicy(StrEnum):
    COMMIT = "Commit"  # revision must be a 40-character commit hash
    IMMUTABLE_TAG = "ImmutableTag"  # the owner vouches that the tag never moves
    UNPINNED = "Unpinned"  # explicit opt-out: rollbacks may not restore the same weights


class Pool(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class EngineArgs(Model):
    """vLLM engine arguments that change what the model answers or how fast."""

    tensor_parallel_size: int = Field(1, ge=1, le=16, description="vLLM --tensor-parallel-size.")
    pipeline_parallel_size: int = Field(1, ge=1, le=16, description="vLLM --pipeline-parallel-size.")
    max_model_len: int | None = Field(None, ge=128, le=10_000_000, description="vLLM --max-model-len.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM --gpu-memory-utilization.")
    enable_prefix_caching: bool = Field(True, description="vLLM --enable-prefix-caching.")
    dtype: str = Field("auto", pattern=r"^(auto|half|float16|bfloat16|float|float32)$")
    extra_args: list[Annotated[str, Field(max_length=512)]] = Field(
        default_factory=list, max_length=64, description="Further vLLM flags, passed verbatim."
    )


class SecretKeyRef(Model):
    name: str = Field(..., max_length=253)
    key: str = Field("api-key", max_length=253)


class ExternalEndpoint(Model):
    """A hosted OpenAI-compatible model used instead of a GPU Deployment."""

    url: str = Field(..., pattern=r"^https?://", max_length=2048)
    api_key_secret_ref: SecretKeyRef | None = None


class ModelCache(Model):
    """Where model weights live, so a new replica does not download them again."""

    persistent_volume_claim: str = Field(..., max_length=253, description="Name of a PVC holding the weights.")
    mount_path: str = Field("/models", pattern=r"^/", max_length=1024)
    read_only: bool = True


class ModelSpec(Model):
    name: str = Field(..., min_length=1, max_length=256, description="Model id as vLLM serves it, e.g. meta-llama/Llama-3.1-8B-Instruct.")
    revision: str | None = Field(None, max_length=128, description="Model revision: a commit hash unless revisionPolicy says otherwise.")
    revision_policy: RevisionPolicy = RevisionPolicy.COMMIT
    image: str = Field("vllm/vllm-openai:v0.11.0", max_length=512, description="vLLM OpenAI server image.")
    engine: EngineArgs = Field(default_factory=EngineArgs)
    gpus: int = Field(1, ge=0, le=64, description="GPUs per replica; must equal tensor x pipeline parallel size (0 for CPU or external).")
    gpu_resource_name: str = Field("nvidia.com/gpu", max_length=253)
    replicas: int = Field(1, ge=0, le=1000, description="Replicas of every live revision. Scaling makes no new revision.")
    pool: Pool = Field(Pool.INTERACTIVE, description="Operator-configured node pool: node selector, tolerations, priority class.")
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(default_factory=dict)
    tolerations: list[FreeForm] = Field(default_factory=list, max_length=32)
    cache_volume: ModelCache | None = None
    endpoint: ExternalEndpoint | None = Field(None, description="Use a hosted model instead of a GPU Deployment.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.endpoint) || self.revisionPolicy == 'Unpinned' || "
                    "(has(self.revision) && (self.revisionPolicy == 'ImmutableTag' || self.revision.matches('^[0-9a-f]{40}$')))",
                    "spec.model.revision must pin the weights: set it to a 40-character commit hash, or set "
                    "revisionPolicy: ImmutableTag for a tag that never moves, or revisionPolicy: Unpinned to opt out",
                    field_path=".revision",
                    reason="FieldValueInvalid",
                ),
                cel(
                    "has(self.endpoint) || self.gpus == 0 || self.gpus == self.engine.tensorParallelSize * self.engine.pipelineParallelSize",
                    "spec.model.gpus must equal engine.tensorParallelSize x engine.pipelineParallelSize "
                    "(vLLM uses exactly that many GPUs per replica); change gpus or the parallel sizes",
                    field_path=".gpus",
                    reason="FieldValueInvalid",
                ),
                cel(
                    "!has(self.endpoint) || self.gpus == 0",
                    "spec.model.gpus must be 0 when spec.model.endpoint is set: a hosted model runs no GPU pods",
                    field_path=".gpus",
                ),
            ]
        }
    )


# -------------------------------------------------------------------- prompt


class ConfigMapKeyRef(Model):
    name: str = Field(..., max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    key: str = Field(..., max_length=253)


class PromptSpec(Model):
    version: str = Field(..., min_length=1, max_length=63, description="Human version label, e.g. v7. Content is hashed regardless.")
    system: str | None = Field(None, max_length=262_144, description="System prompt text.")
    config_map_ref: ConfigMapKeyRef | None = Field(None, description="Read the system prompt from a ConfigMap key instead.")
    templates: dict[str, Annotated[str, Field(max_length=65_536)]] = Field(default_factory=dict)

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.system) != has(self.configMapRef)",
                    "spec.prompt needs exactly one of system (inline text) or configMapRef (name and key)",
                )
            ]
        }
    )


# ----------------------------------------------------------------- retriever


class EmbeddingSpec(Model):
    model: str = Field(..., min_length=1, max_length=256)
    revision: str | None = Field(None, max_length=128)


class IndexSpec(Model):
    name: str = Field(..., min_length=1, max_length=253)
    version: str = Field(..., min_length=1, max_length=63)


class RetrieverSpec(Model):
    embedding: EmbeddingSpec
    index: IndexSpec
    endpoint: str | None = Field(None, pattern=r"^https?://", max_length=2048)
    top_k: int = Field(5, ge=1, le=100)

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(self.embedding.model == oldSelf.embedding.model && "
                    "(has(self.embedding.revision) ? self.embedding.revision : '') == "
                    "(has(oldSelf.embedding.revision) ? oldSelf.embedding.revision : '')) "
                    "|| self.index.version != oldSelf.index.version",
                    "spec.retriever.index.version must change when spec.retriever.embedding changes: "
                    "embeddings of two models never share one index; build a new index and set its version",
                    field_path=".index.version",
                    reason="FieldValueInvalid",
                )
            ]
        }
    )


# --------------------------------------------------------------------- tools


class ToolDefinition(Model):
    name: str = Field(..., pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = Field("", max_length=4096)
    parameters: FreeForm = Field(default_factory=FreeForm, description="JSON Schema of the arguments.")


class ToolsSpec(Model):
    version: str = Field(..., min_length=1, max_length=63)
    definitions: list[ToolDefinition] = Field(
        default_factory=list,
        max_length=128,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    config_map_ref: ConfigMapKeyRef | None = Field(None, description="A JSON list of tool definitions in a ConfigMap key.")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.configMapRef) && size(self.definitions) > 0)",
                    "spec.tools takes inline definitions or configMapRef, not both",
                )
            ]
        }
    )


# --------------------------------------------------------------------- cache


class ResponseCache(Model):
    enabled: bool = False
    ttl: Duration = "5m"
    max_entries: int = Field(10_000, ge=1, le=10_000_000)


class CacheSpec(Model):
    namespace: str | None = Field(
        None,
        pattern=r"^[a-zA-Z0-9._-]{1,63}$",
        description="Prefix of every revision's cache namespace; defaults to <namespace>.<name>.",
    )
    tenant_header: str = Field("x-tenant-id", pattern=r"^[A-Za-z0-9-]{1,64}$")
    response_cache: ResponseCache = Field(default_factory=ResponseCache)


# ------------------------------------------------------------------- rollout


class ShadowStep(Model):
    percent: int = Field(10, ge=1, le=100, description="Share of requests mirrored to the candidate.")
    duration: Duration = "5m"
    min_samples: int = Field(100, ge=0, le=10_000_000)


class CanaryStep(Model):
    weight: int = Field(..., ge=1, le=100, description="Percent of users served by the candidate.")
    duration: Duration = "5m"


class PauseStep(Model):
    duration: Duration | None = Field(None, description="Resume after this long; without it, wait for a promote.")


class RampStep(Model):
    duration: Duration = Field("5m", description="Time spent at each ramp increment.")
    increment: int = Field(25, ge=1, le=100, description="Weight added per ramp increment until 100.")


class RolloutStep(Model):
    shadow: ShadowStep | None = None
    canary: CanaryStep | None = None
    pause: PauseStep | None = None
    ramp: RampStep | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "[has(self.shadow), has(self.canary), has(self.pause), has(self.ramp)].filter(x, x).size() == 1",
                    "each spec.rollout.steps entry must have exactly one of shadow, canary, pause, ramp",
                )
            ]
        }
    )

    @property
    def kind(self) -> str:
        for name in ("shadow", "canary", "pause", "ramp"):
            if getattr(self, name) is not None:
                return name
        raise ValueError("empty rollout step")


class Stickiness(Model):
    header: str = Field("x-user-id", pattern=r"^[A-Za-z0-9-]{1,64}$", description="Request header holding the user id.")
    fallback_to_api_key: bool = Field(True, description="Hash the API key when the header is missing.")


def default_steps() -> list[RolloutStep]:
    return [
        RolloutStep(shadow=ShadowStep()),
        RolloutStep(canary=CanaryStep(weight=1)),
        RolloutStep(canary=CanaryStep(weight=5)),
        RolloutStep(canary=CanaryStep(weight=25)),
        RolloutStep(ramp=RampStep()),
    ]


class RolloutSpec(Model):
    steps: list[RolloutStep] = Field(default_factory=default_steps, max_length=32)
    stickiness: Stickiness = Field(default_factory=Stickiness)
    analysis_interval: Duration = "30s"
    progress_deadline: Duration = Field("20m", description="Time a candidate's GPU pods may take to become Ready.")
    scale_down_delay: Duration = Field("10m", description="Keep the previous revision warm this long after a switch.")
    revision_history_limit: int = Field(5, ge=0, le=50)

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.steps.filter(s, has(s.canary)).map(s, s.canary.weight).isSorted() && "
                    "self.steps.filter(s, has(s.canary)).map(s, s.canary.weight).all(w, "
                    "self.steps.filter(s, has(s.canary)).map(s, s.canary.weight).indexOf(w) == "
                    "self.steps.filter(s, has(s.canary)).map(s, s.canary.weight).lastIndexOf(w))",
                    "spec.rollout.steps canary weights must be strictly increasing (e.g. 1, 5, 25) and at most 100",
                    field_path=".steps",
                    reason="FieldValueInvalid",
                )
            ]
        }
    )


# --------------------------------------------------------------------- gates


class Threshold(Model):
    min: float | None = None
    max: float | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [cel("has(self.min) || has(self.max)", "a threshold needs min, max or both")]
        }
    )


class Compare(Model):
    baseline: str = Field("stable", pattern=r"^stable$", description="Revision to compare with; only the stable one today.")
    max_relative_drop: float | None = Field(None, ge=0, le=1, description="Fail when candidate < baseline x (1 - this).")
    max_relative_increase: float | None = Field(None, ge=0, le=100, description="Fail when candidate > baseline x (1 + this).")

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.maxRelativeDrop) || has(self.maxRelativeIncrease)",
                    "a compare gate needs maxRelativeDrop (higher is better) or maxRelativeIncrease (lower is better)",
                )
            ]
        }
    )


class PrometheusQuery(Model):
    query: str = Field(..., min_length=1, max_length=8192, description="PromQL template: {{stack}} {{namespace}} {{revision}} {{baseline}} {{slice}} {{window}}.")
    samples_query: str | None = Field(None, max_length=8192, description="PromQL template giving the sample count behind the value.")


class OnInconclusive(StrEnum):
    HOLD = "Hold"
    FAIL = "Fail"


class GateKind(StrEnum):
    QUALITY = "Quality"
    GUARDRAIL = "Guardrail"


class Gate(Model):
    name: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=63)
    kind: GateKind = GateKind.QUALITY
    prometheus: PrometheusQuery
    slices: list[Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.-]{1,63}$")]] = Field(default_factory=list, max_length=64)
    threshold: Threshold | None = None
    compare: Compare | None = None
    min_samples: int = Field(0, ge=0, le=100_000_000)
    failure_limit: int = Field(1, ge=1, le=100, description="Consecutive failing analyses before rollback.")
    on_inconclusive: OnInconclusive = OnInconclusive.HOLD

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.threshold) != has(self.compare)",
                    "each gate needs exactly one of threshold (absolute) or compare (relative to the stable revision)",
                )
            ]
        }
    )


# ------------------------------------------------------------------- traffic


class TrafficProvider(StrEnum):
    ROUTER = "Router"
    GATEWAY_API = "GatewayAPI"


class ParentRef(Model):
    name: str = Field(..., max_length=253)
    namespace: str | None = Field(None, max_length=63)
    section_name: str | None = Field(None, max_length=253)


class GatewayAPITraffic(Model):
    parent_refs: list[ParentRef] = Field(..., min_length=1, max_length=16)
    hostnames: list[Annotated[str, Field(max_length=253)]] = Field(default_factory=list, max_length=16)


class TrafficSpec(Model):
    provider: TrafficProvider = TrafficProvider.ROUTER
    gateway_api: GatewayAPITraffic | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.provider != 'GatewayAPI' || has(self.gatewayApi)",
                    "spec.traffic.gatewayApi.parentRefs is required when provider is GatewayAPI",
                    field_path=".gatewayApi",
                )
            ]
        }
    )


# ---------------------------------------------------------------------- spec


class InferenceStackSpec(Model):
    model: ModelSpec
    prompt: PromptSpec
    retriever: RetrieverSpec | None = None
    tools: ToolsSpec | None = None
    cache: CacheSpec = Field(default_factory=CacheSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    gates: list[Gate] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    traffic: TrafficSpec = Field(default_factory=TrafficSpec)


# -------------------------------------------------------------------- status


class Condition(Model):
    """metav1.Condition."""

    type: str
    status: str = Field(..., pattern=r"^(True|False|Unknown)$")
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Phase(StrEnum):
    PENDING = "Pending"  # first revision not Available yet
    HEALTHY = "Healthy"  # stable serves 100 %, no candidate
    PROGRESSING = "Progressing"  # a candidate is being rolled out
    PAUSED = "Paused"
    DEGRADED = "Degraded"  # last candidate was rolled back
    FAILED = "Failed"  # cannot reconcile (bad reference, ...)


class GateResult(Model):
    gate: str
    slice: str = ""
    verdict: str  # Pass | Fail | Inconclusive
    value: float | None = None
    baseline: float | None = None
    threshold: str = ""
    samples: float | None = None
    message: str = ""


class TrafficStatus(Model):
    stable_weight: int = 100
    candidate_weight: int = 0
    shadow_percent: int = 0


class RolloutStatus(Model):
    step_index: int | None = None
    step: str = ""  # human label for the printer column: "shadow 10%", "canary 5%"
    step_started_at: str | None = None
    ramp_weight: int | None = None
    failures: dict[str, int] = Field(default_factory=dict)
    candidate_since: str | None = None
    # Written by the rollout engine (core/rollout.py) so a restarted operator resumes exactly.
    paused: bool = False
    last_analysis_at: str | None = Field(None, description="End of the last counted analysis' data window.")
    last_analysis_from: str | None = Field(
        None, description="Start of that window: never before stepStartedAt, so a step is judged on its own data."
    )
    rollback_reason: str = ""
    scale_down_at: dict[str, str] = Field(default_factory=dict, description="Old revisions kept warm until then.")
    last_command: str | None = Field(None, description="Last handled inferstack.dev/command#command-id.")


class InferenceStackStatus(Model):
    observed_generation: int | None = None
    phase: Phase = Phase.PENDING
    stable_revision: str | None = None
    candidate_revision: str | None = None
    rolled_back_revision: str | None = None
    cache_namespace: str | None = None
    message: str = ""
    traffic: TrafficStatus = Field(default_factory=TrafficStatus)
    rollout: RolloutStatus = Field(default_factory=RolloutStatus)
    gates: list[GateResult] = Field(default_factory=list)
    gate_summary: str = ""
    conditions: list[Condition] = Field(default_factory=list)


class InferenceStack(Model):
    """The whole object; ``status`` is written by the operator only."""

    api_version: str = "inferstack.dev/v1alpha1"
    kind: str = "InferenceStack"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: InferenceStackSpec
    status: InferenceStackStatus = Field(default_factory=InferenceStackStatus)
