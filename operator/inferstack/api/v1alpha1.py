"""InferenceStack v1alpha1: the API types, the single source of truth.

The CRD in ``crds/`` is generated from these models (``make manifests``), so
every default, enum, range and CEL rule written here is enforced by the API
server before the operator ever sees an object. Python code reads specs by
validating them with the same models, which fills in the same defaults and
runs the same rules: each CEL rule is a ``Rule`` (``inferstack.api.rules``)
holding the CEL, its message and the check in Python.

Field names are camelCase on the wire (``alias``) and snake_case in Python.
"""

from __future__ import annotations

from enum import StrEnum
from itertools import pairwise
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from inferstack.api.rules import (
    KNOWN_LIST,
    PY,
    RE2,
    Checked,
    Rule,
    cel_string,
    matches,
    schema_entries,
    unknown_placeholders,
)
from inferstack.core.durations import parse_seconds
from inferstack.core.sequential import Direction

# A Go-style duration as Kubernetes users write them: 30s, 5m, 1h30m, 500ms.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# The longest duration anywhere in the spec; also keeps every duration inside
# Go's time.Duration, which CEL's duration() parses into.
MAX_DURATION = "8760h"
# DNS-1123 label: what a Kubernetes object name part may contain.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# DNS-1123 subdomain: names of ConfigMaps, Secrets, PVCs.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A key of a ConfigMap or Secret.
DATA_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# An extended resource: <domain>/<name>, e.g. nvidia.com/gpu, amd.com/gpu.
EXTENDED_RESOURCE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
# Gateway API's Hostname: a DNS name, optionally with a leading wildcard label.
HOSTNAME_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
URL_PATTERN = r"^https?://[^/?# ]+([/?#].*)?$"
COMMIT_PATTERN = r"^[0-9a-f]{40}$"
# Kubernetes' resource.Quantity, as controller-gen writes it into CRDs: 500m, 2, 1.5Gi, 1e3.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# The vLLM OpenAI server image of model Deployments and of the embedding Deployments the operator runs.
VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"
MAX_WEIGHT = 100  # percent of users: the candidate serves everyone, which is the promotion
MIN_ANALYSIS_INTERVAL = "1s"
MIN_PROGRESS_DEADLINE = "1s"


def _at_least(field: str, minimum: str) -> str:
    """CEL: the duration ``self.<field>`` is at least ``minimum`` (a malformed one is the pattern's to report)."""
    return f"!self.{field}.matches({cel_string(DURATION_PATTERN)}) || duration(self.{field}) >= duration({cel_string(minimum)})"


_MAX_DURATION = Rule(
    f"!self.matches({cel_string(DURATION_PATTERN)}) || duration(self) <= duration({cel_string(MAX_DURATION)})",
    f"must be a duration of at most {MAX_DURATION} (365 days), e.g. 30s, 5m, 1h30m",
    lambda v: parse_seconds(v) <= parse_seconds(MAX_DURATION),
)
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32), Checked(_MAX_DURATION)]
# Bounds on list sizes and string lengths keep the CEL cost estimate finite,
# which the API server insists on before it accepts a rule.
ShortStr = Annotated[str, Field(max_length=253)]


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    # The object's CEL rules: x-kubernetes-validations in the CRD, and checked here.
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = super().__get_pydantic_json_schema__(core_schema, handler)
        if entries := schema_entries(cls.cel_rules):
            handler.resolve_ref_schema(schema)["x-kubernetes-validations"] = entries
        return schema

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        for rule in self.cel_rules:
            if (message := rule.violation(self)) is not None:
                raise ValueError(message)
        return self


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


# vLLM flags the operator writes from typed fields (core/objects.py, vllm_args);
# vLLM reads "_" as "-", and -tp/-pp are its short forms.
OPERATOR_VLLM_FLAGS = (
    "model", "served-model-name", "port", "revision", "tensor-parallel-size", "pipeline-parallel-size",
    "gpu-memory-utilization", "dtype", "max-model-len", "enable-prefix-caching", "no-enable-prefix-caching",
)  # fmt: skip
OPERATOR_VLLM_FLAG_PATTERN = (
    "^(--(" + "|".join(f.replace("-", "[-_]") for f in OPERATOR_VLLM_FLAGS) + ")|-tp|-pp)([= \t]|$)"
)


class EngineArgs(Model):
    """vLLM engine arguments that change what the model answers or how fast."""

    tensor_parallel_size: int = Field(1, ge=1, le=16, description="vLLM --tensor-parallel-size.")
    pipeline_parallel_size: int = Field(1, ge=1, le=16, description="vLLM --pipeline-parallel-size.")
    max_model_len: int | None = Field(None, ge=128, le=10_000_000, description="vLLM --max-model-len.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM --gpu-memory-utilization.")
    enable_prefix_caching: bool = Field(True, description="vLLM --enable-prefix-caching.")
    dtype: str = Field("auto", max_length=8, pattern=r"^(auto|half|float16|bfloat16|float|float32)$")
    extra_args: list[Annotated[str, Field(max_length=512)]] = Field(
        default_factory=list, max_length=64, description="Further vLLM flags, passed verbatim."
    )

    cel_rules = (
        Rule(
            f"self.extraArgs.all(a, !a.matches({cel_string(OPERATOR_VLLM_FLAG_PATTERN)}))",
            "spec.model.engine.extraArgs must not set a flag the operator sets from the spec (--model, "
            "--served-model-name, --port, --revision, --tensor-parallel-size/-tp, --pipeline-parallel-size/-pp, "
            "--gpu-memory-utilization, --dtype, --max-model-len, --[no-]enable-prefix-caching): "
            "set the spec.model or spec.model.engine field instead",
            lambda e: not any(matches(a, OPERATOR_VLLM_FLAG_PATTERN) for a in e.extra_args),
            field_path=".extraArgs",
        ),
    )


class SecretKeyRef(Model):
    name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    key: str = Field("api-key", max_length=253, pattern=DATA_KEY_PATTERN)


class ExternalEndpoint(Model):
    """A hosted OpenAI-compatible model used instead of a GPU Deployment."""

    url: str = Field(..., pattern=URL_PATTERN, max_length=2048)
    api_key_secret_ref: SecretKeyRef | None = None


class ModelCache(Model):
    """Where model weights live, so a new replica does not download them again."""

    persistent_volume_claim: str = Field(
        ..., max_length=253, pattern=DNS_SUBDOMAIN_PATTERN, description="Name of a PVC holding the weights."
    )
    mount_path: str = Field("/models", pattern=r"^/", max_length=1024)
    read_only: bool = True


class ModelSpec(Model):
    name: str = Field(..., min_length=1, max_length=256, description="Model id as vLLM serves it, e.g. meta-llama/Llama-3.1-8B-Instruct.")
    revision: str | None = Field(None, min_length=1, max_length=128, description="Model revision: a commit hash unless revisionPolicy says otherwise.")
    revision_policy: RevisionPolicy = RevisionPolicy.COMMIT
    image: str = Field(VLLM_IMAGE, min_length=1, max_length=512, description="vLLM OpenAI server image (its entrypoint, vllm serve, runs the args the operator writes).")
    engine: EngineArgs = Field(default_factory=EngineArgs)
    gpus: int = Field(1, ge=0, le=64, description="GPUs per replica; must equal tensor x pipeline parallel size (0 for CPU or external).")
    gpu_resource_name: str = Field("nvidia.com/gpu", max_length=253, pattern=EXTENDED_RESOURCE_PATTERN)
    replicas: int = Field(1, ge=0, le=1000, description="Replicas of every live revision. Scaling makes no new revision.")
    pool: Pool = Field(Pool.INTERACTIVE, description="Operator-configured node pool: node selector, tolerations, priority class.")
    node_selector: dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]] = Field(
        default_factory=dict, max_length=64
    )
    tolerations: list[FreeForm] = Field(default_factory=list, max_length=32)
    cache_volume: ModelCache | None = None
    endpoint: ExternalEndpoint | None = Field(None, description="Use a hosted model instead of a GPU Deployment.")

    cel_rules = (
        Rule(
            "has(self.endpoint) || self.revisionPolicy == 'Unpinned' || "
            f"(has(self.revision) && (self.revisionPolicy == 'ImmutableTag' || self.revision.matches({cel_string(COMMIT_PATTERN)})))",
            "spec.model.revision must pin the weights: set it to a 40-character commit hash, or set "
            "revisionPolicy: ImmutableTag for a tag that never moves, or revisionPolicy: Unpinned to opt out",
            lambda m: m.endpoint is not None
            or m.revision_policy == RevisionPolicy.UNPINNED
            or (
                m.revision is not None
                and (m.revision_policy == RevisionPolicy.IMMUTABLE_TAG or matches(m.revision, COMMIT_PATTERN))
            ),
            field_path=".revision",
        ),
        Rule(
            "has(self.endpoint) || self.gpus == 0 || self.gpus == self.engine.tensorParallelSize * self.engine.pipelineParallelSize",
            "spec.model.gpus must equal engine.tensorParallelSize x engine.pipelineParallelSize "
            "(vLLM uses exactly that many GPUs per replica); change gpus or the parallel sizes",
            lambda m: m.endpoint is not None
            or m.gpus == 0
            or m.gpus == m.engine.tensor_parallel_size * m.engine.pipeline_parallel_size,
            field_path=".gpus",
        ),
        Rule(
            "!has(self.endpoint) || self.gpus == 0",
            "spec.model.gpus must be 0 when spec.model.endpoint is set: a hosted model runs no GPU pods",
            lambda m: m.endpoint is None or m.gpus == 0,
            field_path=".gpus",
        ),
        Rule(
            "!has(self.endpoint) || !has(self.cacheVolume)",
            "spec.model.cacheVolume cannot be used with spec.model.endpoint: a hosted model runs no pods "
            "to mount it; remove cacheVolume",
            lambda m: m.endpoint is None or m.cache_volume is None,
            field_path=".cacheVolume",
        ),
    )


# -------------------------------------------------------------------- prompt


class ConfigMapKeyRef(Model):
    name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    key: str = Field(..., max_length=253, pattern=DATA_KEY_PATTERN)


class PromptSpec(Model):
    version: str = Field(..., min_length=1, max_length=63, description="Human version label, e.g. v7. Content is hashed regardless.")
    system: str | None = Field(None, max_length=262_144, description="System prompt text.")
    config_map_ref: ConfigMapKeyRef | None = Field(None, description="Read the system prompt from a ConfigMap key instead.")
    templates: dict[str, Annotated[str, Field(max_length=65_536)]] = Field(default_factory=dict, max_length=64)

    cel_rules = (
        Rule(
            "has(self.system) != has(self.configMapRef)",
            "spec.prompt needs exactly one of system (inline text) or configMapRef (name and key)",
            lambda p: (p.system is None) != (p.config_map_ref is None),
        ),
    )


# ----------------------------------------------------------------- retriever


def _quantity(value: Any) -> Any:
    """YAML reads ``cpu: 2`` as an integer; Kubernetes takes it as the quantity "2", and so does the revision."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    Field(max_length=64, pattern=QUANTITY_PATTERN),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": QUANTITY_PATTERN, "x-kubernetes-int-or-string": True}),
]


class EmbedderResources(Model):
    """CPU and memory of each pod of an embedding Deployment, as a container's resources; the GPU comes from gpus."""

    requests: dict[str, Quantity] = Field(default_factory=dict, max_length=8)
    limits: dict[str, Quantity] = Field(default_factory=dict, max_length=8)


# vLLM flags the operator writes for an embedding Deployment (core/embedder.py, embedder_args).
OPERATOR_EMBEDDER_FLAGS = ("model", "served-model-name", "port", "revision", "runner")
OPERATOR_EMBEDDER_FLAG_PATTERN = "^--(" + "|".join(f.replace("-", "[-_]") for f in OPERATOR_EMBEDDER_FLAGS) + ")([= \t]|$)"


class EmbeddingSpec(Model):
    """The embedding model. With a store and no spec.retriever.endpoint the operator deploys it: one vLLM Deployment
    (pooling runner) per distinct embedding model, shared by the stack's revisions that use it; the fields after
    dimension say how, and are read only then."""

    model: str = Field(..., min_length=1, max_length=256)
    revision: str | None = Field(
        None, min_length=1, max_length=128,
        description="Model revision; when the operator deploys the model, a commit hash unless revisionPolicy says otherwise.",
    )
    # pgvector's vector type holds at most 16000 dimensions.
    dimension: int | None = Field(
        None, ge=1, le=16_000, description="Length of the model's embedding vectors; the index's vector column has this length."
    )
    revision_policy: RevisionPolicy = Field(RevisionPolicy.COMMIT, description="As spec.model.revisionPolicy, for a deployed model.")
    image: str = Field(
        VLLM_IMAGE, min_length=1, max_length=512,
        description="vLLM image of a deployed model; gpus: 0 needs a CPU build of vLLM (the default image is CUDA-only).",
    )
    gpus: int = Field(0, ge=0, le=1, description="GPUs per replica of a deployed model: 0 (CPU, the default) or 1.")
    gpu_resource_name: str = Field("nvidia.com/gpu", max_length=253, pattern=EXTENDED_RESOURCE_PATTERN)
    replicas: int = Field(
        1, ge=1, le=100, description="Replicas of a deployed model while a live revision uses it. Scaling makes no new revision."
    )
    resources: EmbedderResources | None = Field(None, description="Requests and limits of each pod of a deployed model.")
    extra_args: list[Annotated[str, Field(max_length=512)]] = Field(
        default_factory=list, max_length=64, description="Further vLLM flags of a deployed model, passed verbatim."
    )

    cel_rules = (
        Rule(
            f"self.extraArgs.all(a, !a.matches({cel_string(OPERATOR_EMBEDDER_FLAG_PATTERN)}))",
            "spec.retriever.embedding.extraArgs must not set a flag the operator sets (--model, --served-model-name, "
            "--port, --revision, --runner): set spec.retriever.embedding.model or revision instead",
            lambda e: not any(matches(a, OPERATOR_EMBEDDER_FLAG_PATTERN) for a in e.extra_args),
            field_path=".extraArgs",
        ),
    )


class IndexSpec(Model):
    name: str = Field(..., min_length=1, max_length=253)
    version: str = Field(..., min_length=1, max_length=63)


class VectorStoreKind(StrEnum):
    PGVECTOR = "pgvector"


class StoreSecretRef(Model):
    name: str = Field(..., max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    key: str = Field("dsn", max_length=253, pattern=DATA_KEY_PATTERN, description="The key holding the connection string.")


class VectorStoreSpec(Model):
    """Where the index versions live. The Secret is read by the router from the stack's own namespace."""

    kind: VectorStoreKind = VectorStoreKind.PGVECTOR
    secret_ref: StoreSecretRef = Field(
        ..., description="A Secret of the stack's namespace whose key holds the store's DSN (postgresql://user:password@host/db)."
    )


class RetrievalFailure(StrEnum):
    FAIL = "Fail"  # a 503 naming the request id
    ANSWER_WITHOUT_CONTEXT = "AnswerWithoutContext"  # the model answers with no documents


# Postgres cuts identifiers at 63 bytes; the table of an index version is <name>__<version>.
MAX_TABLE_NAME = 63


class RetrieverSpec(Model):
    embedding: EmbeddingSpec
    index: IndexSpec
    endpoint: str | None = Field(
        None, pattern=URL_PATTERN, max_length=2048,
        description="Base URL of the OpenAI-compatible /v1/embeddings server; none (with a store): the operator deploys the embedding model.",
    )
    top_k: int = Field(5, ge=1, le=100)
    store: VectorStoreSpec | None = Field(None, description="The vector store the router searches; none: nothing is retrieved.")
    query_template: str | None = Field(
        None, max_length=8192,
        description="Jinja2 (sandboxed) making the search query from `messages`; default: the last user message.",
    )
    timeout: Duration = Field("2s", description="Embedding plus search, per request; past it onFailure applies.")
    on_failure: RetrievalFailure = Field(RetrievalFailure.FAIL, description="Fail: a 503. AnswerWithoutContext: no documents.")

    cel_rules = (
        Rule(
            "(self.embedding.model == oldSelf.embedding.model && "
            "(has(self.embedding.revision) ? self.embedding.revision : '') == "
            "(has(oldSelf.embedding.revision) ? oldSelf.embedding.revision : '')) "
            "|| self.index.version != oldSelf.index.version",
            "spec.retriever.index.version must change when spec.retriever.embedding changes: "
            "embeddings of two models never share one index; build a new index and set its version",
            # A transition rule: it needs the previous object, which only the API server has.
            lambda r: True,
            field_path=".index.version",
        ),
        # Without an endpoint the operator deploys the embedding model (core/embedder.py): pinned, and runnable.
        Rule(
            "has(self.endpoint) || !has(self.store) || self.embedding.revisionPolicy == 'Unpinned' || "
            "(has(self.embedding.revision) && (self.embedding.revisionPolicy == 'ImmutableTag' || "
            f"self.embedding.revision.matches({cel_string(COMMIT_PATTERN)})))",
            "spec.retriever.embedding.revision must pin the weights of the embedding model the operator deploys "
            "(no spec.retriever.endpoint): set it to a 40-character commit hash, or set revisionPolicy: ImmutableTag "
            "for a tag that never moves, or revisionPolicy: Unpinned to opt out",
            lambda r: r.endpoint is not None
            or r.store is None
            or r.embedding.revision_policy == RevisionPolicy.UNPINNED
            or (
                r.embedding.revision is not None
                and (r.embedding.revision_policy == RevisionPolicy.IMMUTABLE_TAG or matches(r.embedding.revision, COMMIT_PATTERN))
            ),
            field_path=".embedding.revision",
        ),
        Rule(
            f"has(self.endpoint) || !has(self.store) || self.embedding.gpus > 0 || self.embedding.image != {cel_string(VLLM_IMAGE)}",
            f"spec.retriever.embedding.image must be a CPU build of vLLM when the operator deploys the embedding model "
            f"on CPU (gpus: 0): the default {VLLM_IMAGE} runs on CUDA GPUs only; set image, or gpus: 1",
            lambda r: r.endpoint is not None or r.store is None or r.embedding.gpus > 0 or r.embedding.image != VLLM_IMAGE,
            field_path=".embedding.image",
        ),
        Rule(
            "!has(self.endpoint) || (self.embedding.image == "
            f"{cel_string(VLLM_IMAGE)} && self.embedding.gpus == 0 && self.embedding.replicas == 1 && "
            "!has(self.embedding.resources) && size(self.embedding.extraArgs) == 0)",
            "spec.retriever.embedding image, gpus, replicas, resources and extraArgs are only read when the operator "
            "deploys the embedding model, and spec.retriever.endpoint names a server you run: remove them, or remove endpoint",
            lambda r: r.endpoint is None
            or (
                r.embedding.image == VLLM_IMAGE and r.embedding.gpus == 0 and r.embedding.replicas == 1
                and r.embedding.resources is None and not r.embedding.extra_args
            ),
            field_path=".embedding",
        ),
        Rule(
            "!has(self.store) || has(self.embedding.dimension)",
            "spec.retriever.embedding.dimension is required with spec.retriever.store: "
            "set it to the length of the embedding model's vectors (the index's vector column)",
            lambda r: r.store is None or r.embedding.dimension is not None,
            field_path=".embedding.dimension",
        ),
        Rule(
            f"!has(self.store) || size(self.index.name) + size(self.index.version) + 2 <= {MAX_TABLE_NAME}",
            f"spec.retriever.index: name and version together must be at most {MAX_TABLE_NAME - 2} characters "
            f"with spec.retriever.store (the index version's table is <name>__<version>): shorten them",
            lambda r: r.store is None or len(r.index.name) + len(r.index.version) + 2 <= MAX_TABLE_NAME,
            field_path=".index",
        ),
    )


# --------------------------------------------------------------------- tools


class ToolDefinition(Model):
    name: str = Field(..., max_length=64, pattern=r"^[a-zA-Z0-9_-]{1,64}$")
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

    cel_rules = (
        Rule(
            "!(has(self.configMapRef) && size(self.definitions) > 0)",
            "spec.tools takes inline definitions or configMapRef, not both",
            lambda t: not (t.config_map_ref is not None and t.definitions),
        ),
        Rule(
            None,  # the list-type map makes the API server refuse a repeated name
            "spec.tools.definitions names must be unique",
            lambda t: len({d.name for d in t.definitions}) == len(t.definitions),
        ),
    )


# --------------------------------------------------------------------- cache


class ResponseCache(Model):
    enabled: bool = False
    ttl: Duration = "5m"
    max_entries: int = Field(10_000, ge=1, le=10_000_000)


class CacheSpec(Model):
    namespace: str | None = Field(
        None,
        max_length=63,
        pattern=r"^[a-zA-Z0-9._-]{1,63}$",
        description="Prefix of every revision's cache namespace; defaults to <namespace>.<name>.",
    )
    tenant_header: str = Field("x-tenant-id", max_length=64, pattern=r"^[A-Za-z0-9-]{1,64}$")
    response_cache: ResponseCache = Field(default_factory=ResponseCache)


# ------------------------------------------------------------------- rollout


class ShadowStep(Model):
    percent: int = Field(10, ge=1, le=100, description="Share of requests mirrored to the candidate.")
    duration: Duration = "5m"
    min_samples: int = Field(100, ge=0, le=10_000_000)


class CanaryStep(Model):
    weight: int = Field(..., ge=1, le=MAX_WEIGHT, description="Percent of users served by the candidate.")
    duration: Duration = "5m"


class PauseStep(Model):
    duration: Duration | None = Field(None, description="Resume after this long; without it, wait for a promote.")


class RampStep(Model):
    duration: Duration = Field("5m", description="Time spent at each ramp increment.")
    increment: int = Field(25, ge=1, le=MAX_WEIGHT, description="Weight added per ramp increment until 100.")


class EvaluateStep(Model):
    """Replay golden sets against the candidate and the stable revision before the candidate gets traffic.

    The operator runs one Kubernetes Job per golden set; a failed critical case
    rolls the candidate back at once, and gates naming a golden set judge the
    other cases per slice, paired with stable on the same cases.
    """

    evaluators: list[Annotated[str, Field(max_length=63, pattern=DNS_LABEL_PATTERN)]] = Field(
        default_factory=list, max_length=16, description="goldenSet evaluators to run; empty: all of them."
    )
    timeout: Duration = Field("15m", description="Time the Jobs may take; past it the step is Inconclusive and holds.")


class RolloutStep(Model):
    shadow: ShadowStep | None = None
    canary: CanaryStep | None = None
    pause: PauseStep | None = None
    ramp: RampStep | None = None
    evaluate: EvaluateStep | None = None

    cel_rules = (
        Rule(
            "[has(self.shadow), has(self.canary), has(self.pause), has(self.ramp), has(self.evaluate)]"
            ".filter(x, x).size() == 1",
            "each spec.rollout.steps entry must have exactly one of shadow, canary, pause, ramp, evaluate",
            lambda s: sum(k is not None for k in (s.shadow, s.canary, s.pause, s.ramp, s.evaluate)) == 1,
        ),
    )

    @property
    def kind(self) -> str:
        for name in ("shadow", "canary", "pause", "ramp", "evaluate"):
            if getattr(self, name) is not None:
                return name
        raise ValueError("empty rollout step")


class Stickiness(Model):
    header: str = Field("x-user-id", max_length=64, pattern=r"^[A-Za-z0-9-]{1,64}$", description="Request header holding the user id.")
    fallback_to_api_key: bool = Field(True, description="Hash the API key when the header is missing.")


def default_steps() -> list[RolloutStep]:
    return [
        RolloutStep(shadow=ShadowStep()),
        RolloutStep(canary=CanaryStep(weight=1)),
        RolloutStep(canary=CanaryStep(weight=5)),
        RolloutStep(canary=CanaryStep(weight=25)),
        RolloutStep(ramp=RampStep()),
    ]


def _canary_weights(steps: list[RolloutStep]) -> list[int]:
    return [s.canary.weight for s in steps if s.canary is not None]


_WEIGHTS = "self.steps.filter(s, has(s.canary)).map(s, s.canary.weight)"
_LAST = "self.steps[size(self.steps) - 1]"


class RolloutSpec(Model):
    steps: list[RolloutStep] = Field(default_factory=default_steps, max_length=32)
    stickiness: Stickiness = Field(default_factory=Stickiness)
    analysis_interval: Duration = "30s"
    progress_deadline: Duration = Field("20m", description="Time a candidate's GPU pods may take to become Ready.")
    scale_down_delay: Duration = Field("10m", description="Keep the previous revision warm this long after a switch.")
    revision_history_limit: int = Field(5, ge=0, le=50)

    cel_rules = (
        Rule(
            f"{_WEIGHTS}.isSorted() && {_WEIGHTS}.all(w, {_WEIGHTS}.indexOf(w) == {_WEIGHTS}.lastIndexOf(w))",
            "spec.rollout.steps canary weights must be strictly increasing (e.g. 1, 5, 25): the weight never "
            "decreases, so a lower or repeated weight would not apply",
            lambda r: all(a < b for a, b in pairwise(_canary_weights(r.steps))),
            field_path=".steps",
        ),
        Rule(
            f"self.steps.all(s, !has(s.ramp)) || (has({_LAST}.ramp) && self.steps.exists_one(s, has(s.ramp)))",
            "spec.rollout.steps may have one ramp, as the last step: a ramp raises the weight to 100 % and "
            "promotes, so steps after it never run",
            lambda r: all(s.ramp is None for s in r.steps[:-1]),
            field_path=".steps",
        ),
        Rule(
            # ">=": a weight over 100 is the schema's to report, not this rule's.
            f"self.steps.all(s, !has(s.canary) || s.canary.weight < {MAX_WEIGHT}) || "
            f"(has({_LAST}.canary) && {_LAST}.canary.weight >= {MAX_WEIGHT} && "
            f"self.steps.exists_one(s, has(s.canary) && s.canary.weight >= {MAX_WEIGHT}))",
            f"spec.rollout.steps: a canary with weight {MAX_WEIGHT} must be the last step: {MAX_WEIGHT} % "
            "promotes the candidate, so steps after it never run",
            lambda r: all(s.canary is None or s.canary.weight < MAX_WEIGHT for s in r.steps[:-1]),
            field_path=".steps",
        ),
        Rule(
            _at_least("analysisInterval", MIN_ANALYSIS_INTERVAL),
            f"spec.rollout.analysisInterval must be at least {MIN_ANALYSIS_INTERVAL}: every analysis queries "
            "Prometheus for each gate and slice",
            lambda r: parse_seconds(r.analysis_interval) >= parse_seconds(MIN_ANALYSIS_INTERVAL),
            field_path=".analysisInterval",
        ),
        Rule(
            _at_least("progressDeadline", MIN_PROGRESS_DEADLINE),
            f"spec.rollout.progressDeadline must be at least {MIN_PROGRESS_DEADLINE}: it is how long a "
            "candidate's pods may take to become Ready before it is rolled back",
            lambda r: parse_seconds(r.progress_deadline) >= parse_seconds(MIN_PROGRESS_DEADLINE),
            field_path=".progressDeadline",
        ),
    )


# ---------------------------------------------------------------- evaluation

SLICE_PATTERN = r"^[a-zA-Z0-9_.-]{1,63}$"
OTHER_SLICE = "other"  # every request whose slice header is missing or not declared
# The router's markers before evaluation was declared; the default of `refusal`.
DEFAULT_REFUSAL_MARKERS = (
    "i can't help",
    "i cannot help",
    "i cannot",
    "i can't assist",
    "i'm sorry, but",
    "i am sorry, but",
    "i'm unable to",
    "i am unable to",
    "as an ai language model",
)


def _re2_error(pattern: str) -> str | None:
    """Why RE2 refuses ``pattern``, or None. RE2 (linear time) because the router runs it on every answer."""
    import re2

    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(pattern, options=options)
    except re2.error as e:
        return str(e.args[0].decode() if isinstance(e.args[0], bytes) else e)
    return None


def _schema_error(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is not a JSON Schema the router can compile, or None."""
    import jsonschema_rs

    try:
        jsonschema_rs.validator_for(schema)
    except (jsonschema_rs.ValidationError, ValueError) as e:
        return " ".join(str(e).split())[:200]
    return None


class SliceSpec(Model):
    """How the router assigns each request a slice: one declared value, or ``other``.

    The label values of every per-slice metric come from this list alone, so a
    client can neither create series nor push a real slice into ``other``.
    """

    header: str = Field("x-inferstack-slice", max_length=64, pattern=r"^[A-Za-z0-9-]{1,64}$")
    values: list[Annotated[str, Field(max_length=63, pattern=SLICE_PATTERN)]] = Field(
        ..., min_length=1, max_length=32, description="Declared slices; anything else is 'other'."
    )

    cel_rules = (
        Rule(
            "self.values.all(v, self.values.exists_one(w, w == v))",
            "spec.evaluation.slices.values must not repeat a slice; remove the duplicate",
            lambda s: len(set(s.values)) == len(s.values),
            field_path=".values",
        ),
        Rule(
            f"!self.values.exists(v, v == '{OTHER_SLICE}')",
            f"spec.evaluation.slices.values must not declare '{OTHER_SLICE}': it is every request that matches no declared slice",
            lambda s: OTHER_SLICE not in s.values,
            field_path=".values",
        ),
    )


class RefusalCheck(Model):
    markers: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_MARKERS),
        max_length=64,
        description="Lower-case substrings that make an answer a refusal (typographic apostrophes are folded).",
    )


class JsonCheck(Model):
    """Passes when the answer is JSON (a Markdown fence around it is allowed). Scores only
    answers to requests that asked for JSON (``response_format``)."""


class CitesRetrievedCheck(Model):
    """Passes when the answer names the id of a document retrieved for its own request (``[kb-12]``,
    ``(kb-12)``, ``source: kb-12``; not ``kb-123``). Scores only answers that were given documents."""


class RuleCheck(Model):
    """One deterministic check the router runs on every answer it sees (client-facing and shadow).

    Each answer scores 1 (pass) or 0 (fail); a check that does not apply to an
    answer (``json`` when no JSON was asked for, ``toolArguments`` without a
    tool call, ``citesRetrieved`` when nothing was retrieved) gives no sample.
    """

    refusal: RefusalCheck | None = Field(None, description="Passes when the answer is not a refusal.")
    json_: JsonCheck | None = Field(None, alias="json")
    json_schema: FreeForm | None = Field(None, description="Passes when the answer is JSON valid against this JSON Schema.")
    tool_arguments: JsonCheck | None = Field(
        None, description="Passes when every tool call's arguments are valid against the stack's own tool schema."
    )
    must_match: str | None = Field(None, min_length=1, max_length=1024, description="RE2 pattern the answer must contain.")
    must_not_match: str | None = Field(None, min_length=1, max_length=1024, description="RE2 pattern the answer must not contain.")
    max_length: int | None = Field(None, ge=1, le=1_000_000, description="Most characters an answer may have.")
    cites_retrieved: CitesRetrievedCheck | None = Field(
        None, description="Passes when the answer names the id of a document retrieved for its request; "
        "no sample when nothing was retrieved.",
    )

    cel_rules = (
        Rule(
            "[has(self.refusal), has(self.json), has(self.jsonSchema), has(self.toolArguments), has(self.mustMatch), "
            "has(self.mustNotMatch), has(self.maxLength), has(self.citesRetrieved)].filter(x, x).size() == 1",
            "spec.evaluation.evaluators[].rule needs exactly one of refusal, json, jsonSchema, toolArguments, "
            "mustMatch, mustNotMatch, maxLength, citesRetrieved",
            lambda r: sum(v is not None for v in (
                r.refusal, r.json_, r.json_schema, r.tool_arguments, r.must_match, r.must_not_match, r.max_length, r.cites_retrieved,
            )) == 1,
        ),
    )

    @model_validator(mode="after")
    def _compiles(self) -> Self:
        # What CEL cannot check: the router compiles these, so a pattern RE2
        # refuses or a schema that is not one makes the stack InvalidSpec.
        for name, pattern in (("mustMatch", self.must_match), ("mustNotMatch", self.must_not_match)):
            if pattern is not None and (err := _re2_error(pattern)):
                raise ValueError(f"spec.evaluation.evaluators[].rule.{name} is not an RE2 pattern: {err}")
        if self.json_schema is not None and (err := _schema_error(self.json_schema.model_dump())):
            raise ValueError(f"spec.evaluation.evaluators[].rule.jsonSchema is not a JSON Schema: {err}")
        return self


class JudgeMode(StrEnum):
    RUBRIC = "Rubric"  # score one answer by the criteria
    PAIRWISE = "Pairwise"  # compare the candidate's shadow answer with the stable answer to the same request


class JudgeEndpoint(Model):
    """A hosted OpenAI-compatible judge model."""

    url: str = Field(..., pattern=URL_PATTERN, max_length=2048, description="Base URL, e.g. https://api.openai.com/v1.")
    model: str = Field(..., min_length=1, max_length=256, description="The judge model's name at that endpoint.")
    api_key_secret_ref: SecretKeyRef | None = Field(None, description="A Secret of the stack's namespace with the bearer token.")


class LLMJudge(Model):
    """An LLM judge, called by the router on a deterministic sample of answers.

    Rubric: one answer scored 1..10 by ``criteria`` (a sample of (score-1)/9).
    Pairwise: the candidate's shadow answer against the stable answer to the
    same request, asked in both orders; a win in both is +1, a loss in both
    -1, anything else (disagreement, tie) 0; judged in shadow steps only.
    A judge error is counted as an error, never as a score.
    """

    mode: JudgeMode = JudgeMode.RUBRIC
    endpoint: JudgeEndpoint | None = None
    stack: str | None = Field(
        None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN,
        description="Another InferenceStack of this namespace as the judge, called through the router (its stable revision).",
    )
    criteria: str = Field(..., min_length=1, max_length=16_384, description="What a good answer is, written for the judge.")
    sample_rate: float = Field(0.1, gt=0, le=1, description="Share of answers judged, chosen by request id (the same on every replica).")
    max_calls_per_minute: int = Field(60, ge=1, le=100_000, description="Judge calls per minute per router replica; more are dropped and counted.")
    timeout: Duration = Field("30s", description="Time one judge call may take; past it the call is an error.")

    cel_rules = (
        Rule(
            "has(self.endpoint) != has(self.stack)",
            "spec.evaluation.evaluators[].judge needs exactly one of endpoint (a hosted model) or stack "
            "(another InferenceStack of this namespace)",
            lambda j: (j.endpoint is None) != (j.stack is None),
        ),
    )


class FeedbackEvaluator(Model):
    """User feedback: ``POST /v1/feedback`` with a response id the router signed and a value in 0..1."""

    max_age: Duration = Field("24h", description="Feedback on an answer older than this is refused.")


class GoldenSet(Model):
    """Cases (JSON Lines) replayed by a Job against the candidate and the stable revision.

    A case: ``{"id", "slice", "messages", "expected"?, "assertions"?: [{"contains"|"notContains"|"regex"|"equals": ...}],
    "critical"?: bool}``; a case passes when every assertion holds (``expected`` alone: the answer contains it).
    """

    config_map_refs: list[ConfigMapKeyRef] = Field(..., min_length=1, max_length=16, description="ConfigMap keys holding the cases.")
    concurrency: int = Field(4, ge=1, le=64, description="Cases in flight at once, per revision.")


class Evaluator(Model):
    """One named source of samples: exactly one of rule, judge, feedback, goldenSet."""

    name: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=63)
    rule: RuleCheck | None = None
    judge: LLMJudge | None = None
    feedback: FeedbackEvaluator | None = None
    golden_set: GoldenSet | None = None

    cel_rules = (
        Rule(
            "[has(self.rule), has(self.judge), has(self.feedback), has(self.goldenSet)].filter(x, x).size() == 1",
            "spec.evaluation.evaluators[] needs exactly one of rule, judge, feedback, goldenSet",
            lambda e: sum(v is not None for v in (e.rule, e.judge, e.feedback, e.golden_set)) == 1,
        ),
    )

    @property
    def kind(self) -> str:
        """rule | judge | pairwise | feedback | goldenSet: what produces the samples, and so when there are any."""
        if self.judge is not None:
            return "pairwise" if self.judge.mode == JudgeMode.PAIRWISE else "judge"
        if self.feedback is not None:
            return "feedback"
        if self.golden_set is not None:
            return "goldenSet"
        return "rule"


class EvaluationSpec(Model):
    """What the stack is judged on; outside the revision: editing it makes no new revision."""

    alpha: float = Field(
        0.05,
        gt=0,
        le=0.5,
        description="Chance, per rollout, that an identical candidate fails an evaluator gate, however often it is looked at.",
    )
    slices: SliceSpec | None = None
    evaluators: list[Evaluator] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    cel_rules = (
        Rule(
            None,  # the list-type map makes the API server refuse a repeated name
            "spec.evaluation.evaluators names must be unique",
            lambda e: len({v.name for v in e.evaluators}) == len(e.evaluators),
        ),
    )


# --------------------------------------------------------------------- gates


class Threshold(Model):
    min: float | None = None
    max: float | None = None

    cel_rules = (
        Rule(
            "has(self.min) || has(self.max)",
            "a threshold needs min, max or both",
            lambda t: t.min is not None or t.max is not None,
        ),
        Rule(
            "!has(self.min) || !has(self.max) || self.min <= self.max",
            "spec.gates[].threshold.min must not be greater than threshold.max: no value could pass, so every "
            "candidate would be rolled back",
            lambda t: t.min is None or t.max is None or t.min <= t.max,
        ),
    )


class Compare(Model):
    baseline: str = Field("stable", max_length=6, pattern=r"^stable$", description="Revision to compare with; only the stable one today.")
    max_relative_drop: float | None = Field(None, ge=0, le=1, description="Fail when candidate < baseline x (1 - this).")
    max_relative_increase: float | None = Field(None, ge=0, le=100, description="Fail when candidate > baseline x (1 + this).")

    cel_rules = (
        Rule(
            "has(self.maxRelativeDrop) || has(self.maxRelativeIncrease)",
            "a compare gate needs maxRelativeDrop (higher is better) or maxRelativeIncrease (lower is better)",
            lambda c: c.max_relative_drop is not None or c.max_relative_increase is not None,
        ),
    )


def _placeholder_rule(field: str, attr: str) -> Rule:
    """Every ``{{name}}`` in the template is one promql.py substitutes (it refuses the others)."""
    where = f"spec.gates[].prometheus.{field}"
    present = "" if field == "query" else f"!has(self.{field}) || "
    return Rule(
        f"{present}size(self.{field}.findAll({cel_string(RE2.any)})) == size(self.{field}.findAll({cel_string(RE2.known)}))",
        f"{where} has an unknown placeholder; known: {KNOWN_LIST}",
        lambda q: not unknown_placeholders(getattr(q, attr) or ""),
        field_path=f".{field}",
        message_expression=f"{cel_string(f'{where} has an unknown placeholder ')} + self.{field}.find({cel_string(RE2.unknown)}) + "
        + cel_string(f"; known: {KNOWN_LIST}"),
        explain=lambda q: f"{where} has an unknown placeholder {unknown_placeholders(getattr(q, attr))[0]}; known: {KNOWN_LIST}",
    )


def _slice_regex_rule(field: str, attr: str) -> Rule:
    present = "" if field == "query" else f"!has(self.{field}) || "
    return Rule(
        f"{present}!self.{field}.matches({cel_string(RE2.slice_not_regex)})",
        f'spec.gates[].prometheus.{field} compares {{{{slice}}}} with = or !=, but it is a regular expression '
        f'(.* for all slices): match it with =~, e.g. slice=~"{{{{slice}}}}"',
        lambda q: not matches(getattr(q, attr) or "", PY.slice_not_regex),
        field_path=f".{field}",
    )


class PrometheusQuery(Model):
    query: str = Field(..., min_length=1, max_length=8192, description="PromQL template: {{stack}} {{namespace}} {{revision}} {{baseline}} {{slice}} {{window}}.")
    samples_query: str | None = Field(None, min_length=1, max_length=8192, description="PromQL template giving the sample count behind the value.")

    cel_rules = (
        _placeholder_rule("query", "query"),
        _placeholder_rule("samplesQuery", "samples_query"),
        _slice_regex_rule("query", "query"),
        _slice_regex_rule("samplesQuery", "samples_query"),
    )


class OnInconclusive(StrEnum):
    HOLD = "Hold"
    FAIL = "Fail"


class GateKind(StrEnum):
    QUALITY = "Quality"
    GUARDRAIL = "Guardrail"


class Gate(Model):
    """One rollout gate: a raw PromQL query (``prometheus``) or a declared ``evaluator``.

    An evaluator gate compares the candidate's mean score with the stable
    revision's on the same slices, with an anytime-valid confidence sequence
    and a non-inferiority ``margin`` in its ``direction``; the operator writes
    its queries.
    """

    name: str = Field(..., pattern=DNS_LABEL_PATTERN, max_length=63)
    kind: GateKind = GateKind.QUALITY
    prometheus: PrometheusQuery | None = None
    evaluator: str | None = Field(None, pattern=DNS_LABEL_PATTERN, max_length=63, description="A spec.evaluation.evaluators name.")
    margin: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Evaluator gates: the largest harm to the candidate's mean score (0..1) still acceptable: "
        "a drop (HigherIsBetter) or a rise (LowerIsBetter) against the stable revision.",
    )
    # No schema default: the API server would write it into prometheus gates too,
    # which must not carry one. Unset reads as HigherIsBetter (effective_direction).
    direction: Direction | None = Field(
        None,
        description="Evaluator gates: which way the mean score is better, HigherIsBetter (unset: the default) or "
        "LowerIsBetter (a score that counts a harm; refused for Pairwise judges and golden sets, whose samples "
        "are the candidate's wins (+1) and losses (-1)).",
    )
    slices: list[Annotated[str, Field(max_length=63, pattern=SLICE_PATTERN)]] = Field(default_factory=list, max_length=64)
    threshold: Threshold | None = None
    compare: Compare | None = None
    min_samples: int = Field(0, ge=0, le=100_000_000)
    failure_limit: int = Field(1, ge=1, le=100, description="Consecutive failing analyses before rollback.")
    on_inconclusive: OnInconclusive = OnInconclusive.HOLD

    cel_rules = (
        Rule(
            "has(self.prometheus) != has(self.evaluator)",
            "each gate needs exactly one of prometheus (a PromQL query) or evaluator (a spec.evaluation.evaluators name)",
            lambda g: (g.prometheus is None) != (g.evaluator is None),
        ),
        Rule(
            "!has(self.prometheus) || has(self.threshold) != has(self.compare)",
            "each gate needs exactly one of threshold (absolute) or compare (relative to the stable revision)",
            lambda g: g.prometheus is None or (g.threshold is None) != (g.compare is None),
        ),
        Rule(
            "!has(self.evaluator) || (has(self.margin) && !has(self.threshold) && !has(self.compare))",
            "spec.gates[] with an evaluator takes margin (the largest acceptable drop of the mean score vs stable, "
            "or rise with direction: LowerIsBetter), not threshold or compare",
            lambda g: g.evaluator is None or (g.margin is not None and g.threshold is None and g.compare is None),
        ),
        Rule(
            "!has(self.evaluator) || self.onInconclusive == 'Hold'",
            "spec.gates[].onInconclusive: Fail is for prometheus gates; an evaluator gate is inconclusive while "
            "its evidence grows (its Fail is already a proven regression), so it holds",
            lambda g: g.evaluator is None or g.on_inconclusive == OnInconclusive.HOLD,
            field_path=".onInconclusive",
        ),
        Rule(
            "!has(self.margin) || has(self.evaluator)",
            "spec.gates[].margin is for evaluator gates; a prometheus gate uses threshold or compare",
            lambda g: g.margin is None or g.evaluator is not None,
            field_path=".margin",
        ),
        Rule(
            "!has(self.direction) || has(self.evaluator)",
            "spec.gates[].direction is for evaluator gates; a prometheus gate says which way is worse with threshold "
            "(min or max) or compare (maxRelativeDrop or maxRelativeIncrease): remove direction",
            lambda g: g.direction is None or g.evaluator is not None,
            field_path=".direction",
        ),
        Rule(
            "self.slices.all(s, self.slices.exists_one(t, t == s))",
            "spec.gates[].slices must not repeat a slice; remove the duplicate",
            lambda g: len(set(g.slices)) == len(g.slices),
            field_path=".slices",
        ),
        Rule(
            "self.minSamples == 0 || !has(self.prometheus) || has(self.prometheus.samplesQuery)",
            "spec.gates[].minSamples needs prometheus.samplesQuery to count the samples: without it the gate "
            "is Inconclusive forever; add samplesQuery or remove minSamples",
            lambda g: g.min_samples == 0 or g.prometheus is None or g.prometheus.samples_query is not None,
            field_path=".minSamples",
        ),
        Rule(
            f"!has(self.compare) || !has(self.prometheus) || self.prometheus.query.matches({cel_string(RE2.revision)})",
            "spec.gates[].prometheus.query of a compare gate must select the measured revision with "
            '{{revision}} (e.g. revision="{{revision}}"): without it the candidate and the baseline are the '
            "same query and always equal",
            lambda g: g.compare is None or g.prometheus is None or matches(g.prometheus.query, PY.revision),
            field_path=".prometheus.query",
        ),
        Rule(
            f"size(self.slices) == 0 || !has(self.prometheus) || self.prometheus.query.matches({cel_string(RE2.slice)})",
            'spec.gates[].slices needs {{slice}} in prometheus.query (e.g. slice=~"{{slice}}"): without it '
            "every slice is judged on all traffic; add it or remove slices",
            lambda g: not g.slices or g.prometheus is None or matches(g.prometheus.query, PY.slice),
            field_path=".slices",
        ),
    )

    @property
    def effective_direction(self) -> Direction:
        """``direction``, or HigherIsBetter when unset (what every evaluator gate meant before the field existed)."""
        return self.direction or Direction.HIGHER


# ------------------------------------------------------------------- traffic


class TrafficProvider(StrEnum):
    ROUTER = "Router"
    GATEWAY_API = "GatewayAPI"


class ParentRef(Model):
    """A Gateway (Gateway API's ParentReference, kind Gateway); patterns as Gateway API's own."""

    name: str = Field(..., min_length=1, max_length=253)
    namespace: str | None = Field(None, max_length=63, pattern=DNS_LABEL_PATTERN)
    section_name: str | None = Field(None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)


class GatewayAPITraffic(Model):
    parent_refs: list[ParentRef] = Field(..., min_length=1, max_length=16)
    hostnames: list[Annotated[str, Field(min_length=1, max_length=253, pattern=HOSTNAME_PATTERN)]] = Field(
        default_factory=list, max_length=16
    )


class TrafficSpec(Model):
    provider: TrafficProvider = TrafficProvider.ROUTER
    gateway_api: GatewayAPITraffic | None = None

    cel_rules = (
        Rule(
            "self.provider != 'GatewayAPI' || has(self.gatewayApi)",
            "spec.traffic.gatewayApi.parentRefs is required when provider is GatewayAPI",
            lambda t: t.provider != TrafficProvider.GATEWAY_API or t.gateway_api is not None,
            field_path=".gatewayApi",
        ),
        Rule(
            "self.provider == 'GatewayAPI' || !has(self.gatewayApi)",
            "spec.traffic.gatewayApi is only read when provider is GatewayAPI; set provider: GatewayAPI or "
            "remove gatewayApi",
            lambda t: t.provider == TrafficProvider.GATEWAY_API or t.gateway_api is None,
            field_path=".gatewayApi",
        ),
    )


# ---------------------------------------------------------------------- spec


class NotificationEvent(StrEnum):
    PROMOTED = "Promoted"  # a candidate became stable
    ROLLED_BACK = "RolledBack"  # a gate failed failureLimit analyses, or abort
    AWAITING_PROMOTION = "AwaitingPromotion"  # a pause step without duration began: a human must promote
    STUCK = "Stuck"  # pods missed progressDeadline (a candidate's: rolled back; the first revision's: Failed)


class Webhook(Model):
    """A URL the operator POSTs the stack's notifications to (JSON with a Slack-compatible ``text``)."""

    name: str = Field(..., max_length=63, pattern=DNS_LABEL_PATTERN, description="Names the webhook in logs and metrics (the URL never is).")
    url: str | None = Field(None, pattern=URL_PATTERN, max_length=2048, description="The URL, when it holds no secret.")
    url_secret_ref: SecretKeyRef | None = Field(
        None, description="Read the whole URL from this Secret of the stack's namespace (a Slack incoming webhook's URL is its token)."
    )
    token_secret_ref: SecretKeyRef | None = Field(
        None, description="Send this Secret key of the stack's namespace as Authorization: Bearer."
    )
    events: list[NotificationEvent] = Field(default_factory=list, max_length=4, description="Only these events (empty: all).")

    cel_rules = (
        Rule(
            "has(self.url) != has(self.urlSecretRef)",
            "spec.notifications.webhooks[]: set exactly one of url and urlSecretRef",
            lambda w: (w.url is None) != (w.url_secret_ref is None),
        ),
    )


class NotificationsSpec(Model):
    """Webhooks for this stack's promotions, rollbacks, pauses awaiting a human and stuck rollouts.

    Not part of the revision: editing them starts no rollout. The operator's
    configuration can add cluster-wide webhooks.
    """

    webhooks: list[Webhook] = Field(
        default_factory=list,
        max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    cel_rules = (
        Rule(
            None,  # the list-type map makes the API server refuse a repeated name
            "spec.notifications.webhooks names must be unique",
            lambda n: len({w.name for w in n.webhooks}) == len(n.webhooks),
        ),
    )


class ContentRecording(Model):
    """Record what the model received and what it answered, in traces and the audit log (docs/router.md)."""

    sample_rate: float = Field(
        ..., ge=0, le=1,
        description="Share of requests whose messages and answer are recorded (0..1); never those of a tenant whose key opts out.",
    )


class ObservabilitySpec(Model):
    """How this stack's requests are observed beyond metrics. Not part of the revision."""

    content_recording: ContentRecording | None = Field(
        None, description="Opt in to recording message contents, sampled. Absent: traces and audit lines carry no contents.",
    )


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
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    notifications: NotificationsSpec = Field(default_factory=NotificationsSpec)
    observability: ObservabilitySpec = Field(default_factory=ObservabilitySpec)

    cel_rules = (
        Rule(
            "self.gates.all(g, !has(g.evaluator) || self.evaluation.evaluators.exists(e, e.name == g.evaluator))",
            "spec.gates[].evaluator must name one of spec.evaluation.evaluators",
            lambda s: all(g.evaluator is None or g.evaluator in {e.name for e in s.evaluation.evaluators} for g in s.gates),
            field_path=".gates",
        ),
        Rule(
            "self.gates.all(g, !has(g.evaluator) || size(g.slices) == 0 || "
            "(has(self.evaluation.slices) && g.slices.all(x, x in self.evaluation.slices.values)))",
            "spec.gates[].slices of an evaluator gate must be declared in spec.evaluation.slices.values "
            "(or left empty: every declared slice)",
            lambda s: all(
                g.evaluator is None or not g.slices or (s.evaluation.slices is not None and set(g.slices) <= set(s.evaluation.slices.values))
                for g in s.gates
            ),
            field_path=".gates",
        ),
        Rule(
            "!has(self.model.endpoint) || self.traffic.provider != 'GatewayAPI'",
            "spec.traffic.provider GatewayAPI cannot serve spec.model.endpoint: the HTTPRoute would point at "
            "revision Services a hosted model does not have; use provider: Router",
            lambda s: s.model.endpoint is None or s.traffic.provider != TrafficProvider.GATEWAY_API,
            field_path=".traffic.provider",
        ),
        Rule(
            "size(self.gates) == 0 || self.rollout.steps.exists(s, has(s.shadow) || has(s.canary) || has(s.ramp) || has(s.evaluate))",
            "spec.gates are never evaluated: no step of spec.rollout.steps sends the candidate traffic; add a "
            "shadow, canary or ramp step, or remove the gates",
            lambda s: not s.gates or any(st.shadow or st.canary or st.ramp or st.evaluate for st in s.rollout.steps),
            field_path=".gates",
        ),
        Rule(
            "self.rollout.steps.all(st, !has(st.evaluate) || st.evaluate.evaluators.all(n, "
            "self.evaluation.evaluators.exists(e, e.name == n && has(e.goldenSet))))",
            "spec.rollout.steps[].evaluate.evaluators must name goldenSet evaluators of spec.evaluation.evaluators",
            lambda s: all(
                st.evaluate is None or set(st.evaluate.evaluators) <= {e.name for e in s.evaluation.evaluators if e.golden_set}
                for st in s.rollout.steps
            ),
            field_path=".rollout.steps",
        ),
        Rule(
            "self.rollout.steps.all(st, !has(st.evaluate)) || self.evaluation.evaluators.exists(e, has(e.goldenSet))",
            "spec.rollout.steps has an evaluate step but spec.evaluation.evaluators declares no goldenSet to replay",
            lambda s: all(st.evaluate is None for st in s.rollout.steps) or any(e.golden_set for e in s.evaluation.evaluators),
            field_path=".rollout.steps",
        ),
        Rule(
            "self.evaluation.evaluators.all(e, !has(e.goldenSet) || !self.gates.exists(g, has(g.evaluator) && "
            "g.evaluator == e.name) || self.rollout.steps.exists(st, has(st.evaluate)))",
            "a gate names a goldenSet evaluator but spec.rollout.steps has no evaluate step to run it; add "
            "{evaluate: {}} before the first traffic step",
            lambda s: not any(
                e.golden_set and any(g.evaluator == e.name for g in s.gates) for e in s.evaluation.evaluators
            ) or any(st.evaluate for st in s.rollout.steps),
            field_path=".gates",
        ),
        Rule(
            "self.evaluation.evaluators.all(e, !has(e.judge) || e.judge.mode != 'Pairwise' || "
            "!self.gates.exists(g, has(g.evaluator) && g.evaluator == e.name) || self.rollout.steps.exists(st, has(st.shadow)))",
            "a gate names a Pairwise judge, which compares shadow answers with stable ones, but spec.rollout.steps "
            "has no shadow step; add one or use mode: Rubric",
            lambda s: not any(
                e.judge and e.judge.mode == JudgeMode.PAIRWISE and any(g.evaluator == e.name for g in s.gates)
                for e in s.evaluation.evaluators
            ) or any(st.shadow for st in s.rollout.steps),
            field_path=".gates",
        ),
        Rule(
            "self.evaluation.evaluators.all(e, !has(e.rule) || !has(e.rule.citesRetrieved) || !self.gates.exists(g, "
            "has(g.evaluator) && g.evaluator == e.name)) || (has(self.retriever) && has(self.retriever.store))",
            "a gate names a citesRetrieved evaluator, which scores only answers given retrieved documents, but "
            "spec.retriever has no store to retrieve them from; add one or remove the gate",
            lambda s: not any(
                e.rule is not None and e.rule.cites_retrieved is not None and any(g.evaluator == e.name for g in s.gates)
                for e in s.evaluation.evaluators
            ) or (s.retriever is not None and s.retriever.store is not None),
            field_path=".gates",
        ),
        Rule(
            "self.evaluation.evaluators.all(e, !has(e.feedback) || !self.gates.exists(g, has(g.evaluator) && "
            "g.evaluator == e.name) || self.rollout.steps.exists(st, has(st.canary) || has(st.ramp)))",
            "a gate names a feedback evaluator, but users give feedback only on answers they see and "
            "spec.rollout.steps has no canary or ramp step",
            lambda s: not any(e.feedback and any(g.evaluator == e.name for g in s.gates) for e in s.evaluation.evaluators)
            or any(st.canary or st.ramp for st in s.rollout.steps),
            field_path=".gates",
        ),
        # A Pairwise judge's sample is +1 when the judge, asked which answer is *better* by
        # the criteria, chose the candidate's in both orders, and a golden case's is whether
        # the answer met the case's assertions: both are "higher is better" by construction.
        # LowerIsBetter would read "the candidate losing is good", which no criteria can mean
        # (a harm is measured by asking the judge to prefer the answer with less of it), so
        # it is refused rather than given a meaning.
        Rule(
            "self.gates.all(g, !has(g.direction) || g.direction == 'HigherIsBetter' || !has(g.evaluator) || "
            "!self.evaluation.evaluators.exists(e, e.name == g.evaluator && "
            "(has(e.goldenSet) || (has(e.judge) && e.judge.mode == 'Pairwise'))))",
            "spec.gates[].direction LowerIsBetter is for evaluators that score one answer (rule, Rubric judge, "
            "feedback); a Pairwise judge or a goldenSet counts the candidate's wins against stable, where higher is "
            "always better (to gate on a harm, write criteria that prefer the answer with less of it): remove direction",
            lambda s: not any(
                g.effective_direction == Direction.LOWER
                and any(
                    e.name == g.evaluator
                    and (e.golden_set is not None or (e.judge is not None and e.judge.mode == JudgeMode.PAIRWISE))
                    for e in s.evaluation.evaluators
                )
                for g in s.gates
            ),
            field_path=".gates",
        ),
        Rule(
            None,  # the list-type map makes the API server refuse a repeated name
            "spec.gates names must be unique",
            lambda s: len({g.name for g in s.gates}) == len(s.gates),
        ),
    )


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
    value: float | None = Field(None, description="The candidate's value (an evaluator gate: its mean score).")
    baseline: float | None = Field(None, description="The stable revision's value (an evaluator gate: its mean score).")
    threshold: str = ""
    samples: float | None = Field(None, description="The candidate's sample count.")
    baseline_samples: float | None = Field(None, description="Evaluator gates: the stable revision's sample count.")
    delta: float | None = Field(None, description="Evaluator gates: candidate minus stable mean score.")
    delta_lower: float | None = Field(None, description="Evaluator gates: the anytime-valid interval on delta, lower bound.")
    delta_upper: float | None = Field(None, description="Evaluator gates: the anytime-valid interval on delta, upper bound.")
    message: str = ""
    evaluated_by: str | None = Field(
        None, description="Evaluator gates: what produced the samples (judge model and criteria hash, golden set content hash)."
    )


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
    judged_by: str = Field("", description="Hash of the gates and evaluation the current step is judged by.")


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
