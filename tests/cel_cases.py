"""InferenceStack manifests the API server must refuse (and ones it must accept), shared by
tests/unit/test_cel_rules.py (the Python twin of each rule) and tests/e2e/test_validation_e2e.py
(the real API server).

Each refused case names the one error the API server returns: the field path and the
message. ``python`` says what pydantic must do with the same spec:

* ``SAME``: refuse it with the same message (a CEL rule with its Python twin);
* ``SCHEMA``: refuse it (a schema keyword: pattern, maxLength...; pydantic words it its way);
* any other string: refuse it with that message (the schema's own check on the server).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

SAME, SCHEMA = "same", "schema"
KNOWN = "{{stack}}, {{namespace}}, {{revision}}, {{baseline}}, {{slice}}, {{window}}"

QUERY = 'sum(rate(answers_total{stack="{{stack}}",revision="{{revision}}",slice=~"{{slice}}",ok="true"}[{{window}}]))'
SAMPLES = 'sum(increase(answers_total{stack="{{stack}}",revision="{{revision}}",slice=~"{{slice}}"}[{{window}}]))'
GATE: dict[str, Any] = {
    "name": "quality",
    "slices": ["billing", "general"],
    "prometheus": {"query": QUERY, "samplesQuery": SAMPLES},
    "compare": {"maxRelativeDrop": 0.05},
    "minSamples": 50,
}
LATENCY: dict[str, Any] = {
    "name": "latency",
    "prometheus": {"query": 'max(latency_seconds{revision="{{revision}}"})'},
    "threshold": {"max": 2.0},
}
BASE: dict[str, Any] = {
    "apiVersion": "inferstack.dev/v1alpha1",
    "kind": "InferenceStack",
    "metadata": {"name": "cel"},
    "spec": {
        "model": {"name": "Qwen/Qwen2.5-7B-Instruct", "revision": "a09a35458c702b33eeacc393d103063234e8bc28", "gpus": 1},
        "prompt": {"version": "v1", "system": "You are brief."},
        "gates": [GATE],
    },
}
RETRIEVER: dict[str, Any] = {
    "embedding": {"model": "BAAI/bge-small-en-v1.5", "dimension": 384},
    "index": {"name": "support-articles", "version": "2026-11-20"},
    "endpoint": "http://embeddings.search.svc:8080",
    "store": {"kind": "pgvector", "secretRef": {"name": "support-store"}},
    "onFailure": "AnswerWithoutContext",
}
HOSTED = {"endpoint": {"url": "https://llm.example.com/v1"}, "gpus": 0}
# No endpoint: the operator deploys the embedding model (pinned; on CPU with a CPU build of vLLM).
CPU_VLLM = "registry.example.com/vllm-cpu:v0.32.0"
DEPLOYED = {
    **{k: v for k, v in RETRIEVER.items() if k != "endpoint"},
    "embedding": {"model": "BAAI/bge-small-en-v1.5", "revision": "5c38ec7c405ec4b44b94cc5a9bb96e735b38267a", "dimension": 384, "image": CPU_VLLM},
}


def deployed(**embedding: Any) -> dict[str, Any]:
    """DEPLOYED with embedding fields replaced (a value of None removes the field)."""
    out = copy.deepcopy(DEPLOYED)
    for key, value in embedding.items():
        if value is None:
            out["embedding"].pop(key, None)
        else:
            out["embedding"][key] = value
    return out


EVAL: dict[str, Any] = {"slices": {"values": ["billing"]}, "evaluators": [{"name": "no-refusal", "rule": {"refusal": {}}}]}
EGATE: dict[str, Any] = {"name": "quality", "evaluator": "no-refusal", "margin": 0.05}
JUDGE: dict[str, Any] = {"endpoint": {"url": "http://judge.example/v1", "model": "judge"}, "criteria": "Correct and grounded."}
GOLDEN_EVAL: dict[str, Any] = {
    "slices": {"values": ["billing"]},
    "evaluators": [{"name": "golden", "goldenSet": {"configMapRefs": [{"name": "golden-cases", "key": "cases.jsonl"}]}}],
}
LOWER_IS_BETTER_PAIRED = (
    "spec.gates[].direction LowerIsBetter is for evaluators that score one answer (rule, Rubric judge, feedback); "
    "a Pairwise judge or a goldenSet counts the candidate's wins against stable, where higher is always better "
    "(to gate on a harm, write criteria that prefer the answer with less of it): remove direction"
)


def stack(**spec: Any) -> dict[str, Any]:
    """BASE with top-level spec fields replaced (a value of None removes the field)."""
    doc = copy.deepcopy(BASE)
    for key, value in spec.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = copy.deepcopy(value)
    return doc


def model(**fields: Any) -> dict[str, Any]:
    return {**BASE["spec"]["model"], **fields}


def gate(base: dict[str, Any] = GATE, *, prometheus: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    if prometheus is not None:
        out["prometheus"] = {**out["prometheus"], **prometheus}
    for key, value in fields.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def steps(*items: dict[str, Any]) -> dict[str, Any]:
    return {"steps": list(items)}


@dataclass(frozen=True)
class Refused:
    id: str
    manifest: dict[str, Any]
    path: str  # where the API server puts the error
    message: str  # what it says, after "Invalid value: ...: " (or the whole detail for other error types)
    python: str = SAME
    detail: dict[str, str] = field(default_factory=dict)


def _unknown(where: str, placeholder: str) -> str:
    return f"spec.gates[].prometheus.{where} has an unknown placeholder {placeholder}; known: {KNOWN}"


EMBEDDER_PIN = (
    "spec.retriever.embedding.revision must pin the weights of the embedding model the operator deploys "
        "(no spec.retriever.endpoint): set it to a 40-character commit hash, or set revisionPolicy: ImmutableTag "
        "for a tag that never moves, or revisionPolicy: Unpinned to opt out"
)
SLICE_EQ = (
    "compares {{slice}} with = or !=, but it is a regular expression (.* for all slices): "
    'match it with =~, e.g. slice=~"{{slice}}"'
)
DURATION_MAX = "must be a duration of at most 8760h (365 days), e.g. 30s, 5m, 1h30m"
WEIGHTS = (
    "spec.rollout.steps canary weights must be strictly increasing (e.g. 1, 5, 25): the weight never decreases, "
    "so a lower or repeated weight would not apply"
)
RAMP_LAST = (
    "spec.rollout.steps may have one ramp, as the last step: a ramp raises the weight to 100 % and promotes, "
    "so steps after it never run"
)
FULL_LAST = (
    "spec.rollout.steps: a canary with weight 100 must be the last step: 100 % promotes the candidate, "
    "so steps after it never run"
)

REFUSED: list[Refused] = [
    # ------------------------------------------------------------------ gate queries
    Refused(
        "unknown-placeholder",
        stack(gates=[gate(prometheus={"query": QUERY.replace("{{window}}", "{{windw}}")})]),
        "spec.gates[0].prometheus.query",
        _unknown("query", "{{windw}}"),
        SAME,
    ),
    Refused(
        "unknown-placeholder-with-spaces",
        stack(gates=[gate(prometheus={"samplesQuery": SAMPLES.replace("{{stack}}", "{{ stak }}")})]),
        "spec.gates[0].prometheus.samplesQuery",
        _unknown("samplesQuery", "{{ stak }}"),
        SAME,
    ),
    Refused(
        "placeholder-wrong-case",
        stack(gates=[gate(LATENCY, prometheus={"query": 'max(latency_seconds{revision="{{Revision}}"})'})]),
        "spec.gates[0].prometheus.query",
        _unknown("query", "{{Revision}}"),
        SAME,
    ),
    Refused(
        "slice-matched-with-equals",
        stack(gates=[gate(prometheus={"query": QUERY.replace('slice=~"', 'slice="')})]),
        "spec.gates[0].prometheus.query",
        "spec.gates[].prometheus.query " + SLICE_EQ,
    ),
    Refused(
        "slice-matched-with-not-equals",
        stack(gates=[gate(prometheus={"samplesQuery": SAMPLES.replace('slice=~"{{slice}}"', "slice != '{{slice}}'")})]),
        "spec.gates[0].prometheus.samplesQuery",
        "spec.gates[].prometheus.samplesQuery " + SLICE_EQ,
    ),
    Refused(
        "empty-samples-query",
        stack(gates=[gate(prometheus={"samplesQuery": ""})]),
        "spec.gates[0].prometheus.samplesQuery",
        "spec.gates[0].prometheus.samplesQuery in body should be at least 1 chars long",
        SCHEMA,
    ),
    Refused(
        "compare-without-revision",
        stack(gates=[gate(prometheus={"query": QUERY.replace(',revision="{{revision}}"', "")})]),
        "spec.gates[0].prometheus.query",
        "spec.gates[].prometheus.query of a compare gate must select the measured revision with {{revision}} "
        '(e.g. revision="{{revision}}"): without it the candidate and the baseline are the same query and always equal',
        SAME,
    ),
    Refused(
        "slices-without-slice-placeholder",
        stack(gates=[gate(LATENCY, slices=["billing"])]),
        "spec.gates[0].slices",
        'spec.gates[].slices needs {{slice}} in prometheus.query (e.g. slice=~"{{slice}}"): without it every slice '
        "is judged on all traffic; add it or remove slices",
        SAME,
    ),
    Refused(
        "min-samples-without-samples-query",
        stack(gates=[gate(LATENCY, minSamples=10)]),
        "spec.gates[0].minSamples",
        "spec.gates[].minSamples needs prometheus.samplesQuery to count the samples: without it the gate is "
        "Inconclusive forever; add samplesQuery or remove minSamples",
        SAME,
    ),
    # ------------------------------------------------------------------ gate verdicts
    Refused(
        "threshold-min-over-max",
        stack(gates=[gate(LATENCY, threshold={"min": 3, "max": 2})]),
        "spec.gates[0].threshold",
        "spec.gates[].threshold.min must not be greater than threshold.max: no value could pass, so every "
        "candidate would be rolled back",
    ),
    Refused(
        "threshold-without-bounds",
        stack(gates=[gate(LATENCY, threshold={})]),
        "spec.gates[0].threshold",
        "a threshold needs min, max or both",
    ),
    Refused(
        "compare-without-limit",
        stack(gates=[gate(compare={})]),
        "spec.gates[0].compare",
        "a compare gate needs maxRelativeDrop (higher is better) or maxRelativeIncrease (lower is better)",
    ),
    Refused(
        "gate-without-verdict",
        stack(gates=[gate(LATENCY, threshold=None)]),
        "spec.gates[0]",
        "each gate needs exactly one of threshold (absolute) or compare (relative to the stable revision)",
    ),
    Refused(
        "duplicate-slice",
        stack(gates=[gate(slices=["billing", "general", "billing"])]),
        "spec.gates[0].slices",
        "spec.gates[].slices must not repeat a slice; remove the duplicate",
    ),
    Refused(
        "duplicate-gate-name",
        stack(gates=[GATE, gate(LATENCY, name="quality")]),
        "spec.gates[1]",
        'Duplicate value: {"name":"quality"}',
        "spec.gates names must be unique",
    ),
    Refused(
        "gates-without-traffic",
        stack(rollout=steps({"pause": {"duration": "1h"}})),
        "spec.gates",
        "spec.gates are never evaluated: no step of spec.rollout.steps sends the candidate traffic; add a shadow, "
        "canary or ramp step, or remove the gates",
    ),
    # ------------------------------------------------------------------ rollout steps
    Refused(
        "step-after-ramp",
        stack(rollout=steps({"canary": {"weight": 5}}, {"ramp": {"increment": 25}}, {"canary": {"weight": 50}})),
        "spec.rollout.steps",
        RAMP_LAST,
    ),
    Refused(
        "two-ramps",
        stack(rollout=steps({"ramp": {"increment": 10}}, {"ramp": {"increment": 25}})),
        "spec.rollout.steps",
        RAMP_LAST,
    ),
    Refused(
        "step-after-full-canary",
        stack(rollout=steps({"canary": {"weight": 5}}, {"canary": {"weight": 100}}, {"pause": {}})),
        "spec.rollout.steps",
        FULL_LAST,
    ),
    Refused(
        "canary-weight-decreasing",
        stack(rollout=steps({"canary": {"weight": 25}}, {"canary": {"weight": 5}})),
        "spec.rollout.steps",
        WEIGHTS,
    ),
    Refused(
        "canary-weight-repeated",
        stack(rollout=steps({"canary": {"weight": 5}}, {"pause": {}}, {"canary": {"weight": 5}})),
        "spec.rollout.steps",
        WEIGHTS,
    ),
    Refused(
        "ramp-increment-zero",
        stack(rollout=steps({"canary": {"weight": 5}}, {"ramp": {"increment": 0}})),
        "spec.rollout.steps[1].ramp.increment",
        "spec.rollout.steps[1].ramp.increment in body should be greater than or equal to 1",
        SCHEMA,
    ),
    Refused(
        "analysis-interval-zero",
        stack(rollout={"analysisInterval": "0s"}),
        "spec.rollout.analysisInterval",
        "spec.rollout.analysisInterval must be at least 1s: every analysis queries Prometheus for each gate and slice",
    ),
    Refused(
        "analysis-interval-sub-second",
        stack(rollout={"analysisInterval": "500ms"}),
        "spec.rollout.analysisInterval",
        "spec.rollout.analysisInterval must be at least 1s: every analysis queries Prometheus for each gate and slice",
    ),
    Refused(
        "progress-deadline-zero",
        stack(rollout={"progressDeadline": "0m"}),
        "spec.rollout.progressDeadline",
        "spec.rollout.progressDeadline must be at least 1s: it is how long a candidate's pods may take to become "
        "Ready before it is rolled back",
    ),
    Refused(
        "duration-over-a-year",
        stack(rollout={"scaleDownDelay": "9000h"}),
        "spec.rollout.scaleDownDelay",
        DURATION_MAX,
    ),
    Refused(
        "step-duration-over-a-year",
        stack(rollout=steps({"canary": {"weight": 5, "duration": "600000m"}})),
        "spec.rollout.steps[0].canary.duration",
        DURATION_MAX,
    ),
    Refused(
        "duration-in-days",
        stack(rollout=steps({"canary": {"weight": 5, "duration": "1d"}})),
        "spec.rollout.steps[0].canary.duration",
        'spec.rollout.steps[0].canary.duration in body should match \'^([0-9]+(\\.[0-9]+)?(ms|s|m|h))+$\'',
        SCHEMA,
    ),
    Refused(
        "revision-history-over-50",
        stack(rollout={"revisionHistoryLimit": 51}),
        "spec.rollout.revisionHistoryLimit",
        "spec.rollout.revisionHistoryLimit in body should be less than or equal to 50",
        SCHEMA,
    ),
    # ------------------------------------------------------------------ model
    Refused(
        "extra-args-set-tensor-parallel",
        stack(model=model(engine={"extraArgs": ["--enforce-eager", "--tensor-parallel-size=8"]})),
        "spec.model.engine.extraArgs",
        "spec.model.engine.extraArgs must not set a flag the operator sets from the spec (--model, --served-model-name, "
        "--port, --revision, --tensor-parallel-size/-tp, --pipeline-parallel-size/-pp, --gpu-memory-utilization, "
        "--dtype, --max-model-len, --[no-]enable-prefix-caching): set the spec.model or spec.model.engine field instead",
    ),
    Refused(
        "extra-args-set-port",
        stack(model=model(engine={"extraArgs": ["--port", "9000"]})),
        "spec.model.engine.extraArgs",
        "spec.model.engine.extraArgs must not set a flag the operator sets from the spec (--model, --served-model-name, "
        "--port, --revision, --tensor-parallel-size/-tp, --pipeline-parallel-size/-pp, --gpu-memory-utilization, "
        "--dtype, --max-model-len, --[no-]enable-prefix-caching): set the spec.model or spec.model.engine field instead",
    ),
    Refused(
        "endpoint-with-cache-volume",
        stack(model=model(**HOSTED, cacheVolume={"persistentVolumeClaim": "weights"})),
        "spec.model.cacheVolume",
        "spec.model.cacheVolume cannot be used with spec.model.endpoint: a hosted model runs no pods to mount it; "
        "remove cacheVolume",
    ),
    Refused(
        "empty-revision-tag",
        stack(model=model(revision="", revisionPolicy="ImmutableTag")),
        "spec.model.revision",
        "spec.model.revision in body should be at least 1 chars long",
        SCHEMA,
    ),
    Refused(
        "gpu-resource-without-domain",
        stack(model=model(gpuResourceName="gpu")),
        "spec.model.gpuResourceName",
        "spec.model.gpuResourceName in body should match",
        SCHEMA,
    ),
    Refused(
        "node-selector-value",
        stack(model=model(nodeSelector={"nvidia.com/gpu.product": "H100 80GB"})),
        "spec.model.nodeSelector.nvidia.com/gpu.product",
        "spec.model.nodeSelector.nvidia.com/gpu.product in body should match",
        SCHEMA,
    ),
    Refused(
        "endpoint-without-host",
        stack(model=model(gpus=0, endpoint={"url": "https:///v1"})),
        "spec.model.endpoint.url",
        "spec.model.endpoint.url in body should match",
        SCHEMA,
    ),
    Refused(
        "configmap-key-with-slash",
        stack(prompt={"version": "v1", "configMapRef": {"name": "prompts", "key": "support/system.txt"}}),
        "spec.prompt.configMapRef.key",
        "spec.prompt.configMapRef.key in body should match",
        SCHEMA,
    ),
    # ------------------------------------------------------------------ traffic
    Refused(
        "endpoint-with-gateway-api",
        stack(
            model=model(**HOSTED),
            traffic={"provider": "GatewayAPI", "gatewayApi": {"parentRefs": [{"name": "inference-gw"}]}},
        ),
        "spec.traffic.provider",
        "spec.traffic.provider GatewayAPI cannot serve spec.model.endpoint: the HTTPRoute would point at revision "
        "Services a hosted model does not have; use provider: Router",
    ),
    Refused(
        "gateway-api-settings-with-router",
        stack(traffic={"gatewayApi": {"parentRefs": [{"name": "inference-gw"}]}}),
        "spec.traffic.gatewayApi",
        "spec.traffic.gatewayApi is only read when provider is GatewayAPI; set provider: GatewayAPI or remove gatewayApi",
    ),
    Refused(
        "gateway-hostname",
        stack(traffic={"provider": "GatewayAPI", "gatewayApi": {"parentRefs": [{"name": "gw"}], "hostnames": ["Bot.Example.com"]}}),
        "spec.traffic.gatewayApi.hostnames[0]",
        "spec.traffic.gatewayApi.hostnames[0] in body should match",
        SCHEMA,
    ),
    # ------------------------------------------------------------------ evaluation
    Refused(
        "gate-without-query-or-evaluator",
        stack(evaluation=EVAL, gates=[{"name": "quality", "threshold": {"min": 1}}]),
        "spec.gates[0]",
        "each gate needs exactly one of prometheus (a PromQL query) or evaluator (a spec.evaluation.evaluators name)",
    ),
    Refused(
        "evaluator-gate-without-margin",
        stack(evaluation=EVAL, gates=[{"name": "quality", "evaluator": "no-refusal"}]),
        "spec.gates[0]",
        "spec.gates[] with an evaluator takes margin (the largest acceptable drop of the mean score vs stable, or rise with direction: LowerIsBetter), not threshold or compare",
    ),
    Refused(
        "evaluator-gate-with-threshold",
        stack(evaluation=EVAL, gates=[{**EGATE, "threshold": {"min": 0.9}}]),
        "spec.gates[0]",
        "spec.gates[] with an evaluator takes margin (the largest acceptable drop of the mean score vs stable, or rise with direction: LowerIsBetter), not threshold or compare",
    ),
    Refused(
        "margin-on-a-prometheus-gate",
        stack(gates=[gate(margin=0.1)]),
        "spec.gates[0].margin",
        "spec.gates[].margin is for evaluator gates; a prometheus gate uses threshold or compare",
    ),
    Refused(
        "direction-on-a-prometheus-gate",
        stack(gates=[gate(direction="LowerIsBetter")]),
        "spec.gates[0].direction",
        "spec.gates[].direction is for evaluator gates; a prometheus gate says which way is worse with threshold "
        "(min or max) or compare (maxRelativeDrop or maxRelativeIncrease): remove direction",
    ),
    Refused(
        "direction-not-a-direction",
        stack(evaluation=EVAL, gates=[{**EGATE, "direction": "Lower"}]),
        "spec.gates[0].direction",
        'spec.gates[0].direction: Unsupported value: "Lower"',
        SCHEMA,
    ),
    Refused(
        "lower-is-better-on-a-pairwise-judge",
        stack(evaluation={**EVAL, "evaluators": [{"name": "no-refusal", "judge": {**JUDGE, "mode": "Pairwise"}}]},
              gates=[{**EGATE, "direction": "LowerIsBetter"}], rollout=steps({"shadow": {}}, {"canary": {"weight": 5}})),
        "spec.gates",
        LOWER_IS_BETTER_PAIRED,
    ),
    Refused(
        "lower-is-better-on-a-golden-set",
        stack(evaluation=GOLDEN_EVAL, gates=[{**EGATE, "evaluator": "golden", "direction": "LowerIsBetter"}],
              rollout=steps({"evaluate": {}}, {"canary": {"weight": 5}})),
        "spec.gates",
        LOWER_IS_BETTER_PAIRED,
    ),
    Refused(
        "evaluator-gate-that-fails-when-inconclusive",
        stack(evaluation=EVAL, gates=[{**EGATE, "onInconclusive": "Fail"}]),
        "spec.gates[0].onInconclusive",
        "spec.gates[].onInconclusive: Fail is for prometheus gates; an evaluator gate is inconclusive while its evidence "
        "grows (its Fail is already a proven regression), so it holds",
    ),
    Refused(
        "undeclared-evaluator",
        stack(evaluation=EVAL, gates=[{**EGATE, "evaluator": "helpfulness"}]),
        "spec.gates",
        "spec.gates[].evaluator must name one of spec.evaluation.evaluators",
    ),
    Refused(
        "evaluator-gate-on-an-undeclared-slice",
        stack(evaluation=EVAL, gates=[{**EGATE, "slices": ["refunds"]}]),
        "spec.gates",
        "spec.gates[].slices of an evaluator gate must be declared in spec.evaluation.slices.values (or left empty: every declared slice)",
    ),
    Refused(
        "slice-declared-twice",
        stack(evaluation={**EVAL, "slices": {"values": ["billing", "billing"]}}, gates=[EGATE]),
        "spec.evaluation.slices.values",
        "spec.evaluation.slices.values must not repeat a slice; remove the duplicate",
    ),
    Refused(
        "other-declared",
        stack(evaluation={**EVAL, "slices": {"values": ["billing", "other"]}}, gates=[EGATE]),
        "spec.evaluation.slices.values",
        "spec.evaluation.slices.values must not declare 'other': it is every request that matches no declared slice",
    ),
    Refused(
        "rule-with-two-kinds",
        stack(evaluation={**EVAL, "evaluators": [{"name": "no-refusal", "rule": {"refusal": {}, "maxLength": 100}}]}, gates=[EGATE]),
        "spec.evaluation.evaluators[0].rule",
        "spec.evaluation.evaluators[].rule needs exactly one of refusal, json, jsonSchema, toolArguments, mustMatch, mustNotMatch, maxLength, citesRetrieved",
    ),
    Refused(
        "evaluator-with-two-kinds",
        stack(evaluation={**EVAL, "evaluators": [{"name": "no-refusal", "rule": {"refusal": {}}, "feedback": {}}]}, gates=[EGATE]),
        "spec.evaluation.evaluators[0]",
        "spec.evaluation.evaluators[] needs exactly one of rule, judge, feedback, goldenSet",
    ),
    Refused(
        "judge-with-endpoint-and-stack",
        stack(evaluation={**EVAL, "evaluators": [{"name": "no-refusal", "judge": {**JUDGE, "stack": "judge"}}]}, gates=[EGATE]),
        "spec.evaluation.evaluators[0].judge",
        "spec.evaluation.evaluators[].judge needs exactly one of endpoint (a hosted model) or stack (another InferenceStack of this namespace)",
    ),
    Refused(
        "evaluate-step-naming-a-rule",
        stack(
            evaluation={**GOLDEN_EVAL, "evaluators": [*GOLDEN_EVAL["evaluators"], *EVAL["evaluators"]]},
            gates=[EGATE],
            rollout=steps({"evaluate": {"evaluators": ["no-refusal"]}}, {"canary": {"weight": 5}}),
        ),
        "spec.rollout.steps",
        "spec.rollout.steps[].evaluate.evaluators must name goldenSet evaluators of spec.evaluation.evaluators",
    ),
    Refused(
        "evaluate-step-without-golden-set",
        stack(evaluation=EVAL, gates=[EGATE], rollout=steps({"evaluate": {}}, {"canary": {"weight": 5}})),
        "spec.rollout.steps",
        "spec.rollout.steps has an evaluate step but spec.evaluation.evaluators declares no goldenSet to replay",
    ),
    Refused(
        "golden-gate-without-evaluate-step",
        stack(evaluation=GOLDEN_EVAL, gates=[{**EGATE, "evaluator": "golden"}], rollout=steps({"canary": {"weight": 5}})),
        "spec.gates",
        "a gate names a goldenSet evaluator but spec.rollout.steps has no evaluate step to run it; add {evaluate: {}} before the first traffic step",
    ),
    Refused(
        "pairwise-gate-without-shadow",
        stack(evaluation={**EVAL, "evaluators": [{"name": "no-refusal", "judge": {**JUDGE, "mode": "Pairwise"}}]}, gates=[EGATE], rollout=steps({"canary": {"weight": 5}})),
        "spec.gates",
        "a gate names a Pairwise judge, which compares shadow answers with stable ones, but spec.rollout.steps has no shadow step; add one or use mode: Rubric",
    ),
    Refused(
        "feedback-gate-without-user-traffic",
        stack(evaluation={**EVAL, "evaluators": [{"name": "no-refusal", "feedback": {}}]}, gates=[EGATE], rollout=steps({"shadow": {}})),
        "spec.gates",
        "a gate names a feedback evaluator, but users give feedback only on answers they see and spec.rollout.steps has no canary or ramp step",
    ),
    Refused(
        "cites-retrieved-gate-without-store",
        stack(evaluation={**EVAL, "evaluators": [{"name": "no-refusal", "rule": {"citesRetrieved": {}}}]}, gates=[EGATE],
              retriever={k: v for k, v in RETRIEVER.items() if k not in ("store", "endpoint")}),
        "spec.gates",
        "a gate names a citesRetrieved evaluator, which scores only answers given retrieved documents, but "
        "spec.retriever has no store to retrieve them from; add one or remove the gate",
    ),
    Refused(
        "webhook-with-url-and-secret",
        stack(notifications={"webhooks": [{"name": "ops", "url": "https://hooks.example.com/x", "urlSecretRef": {"name": "hook", "key": "url"}}]}),
        "spec.notifications.webhooks[0]",
        "spec.notifications.webhooks[]: set exactly one of url and urlSecretRef",
    ),
    Refused(
        "webhook-without-url",
        stack(notifications={"webhooks": [{"name": "ops"}]}),
        "spec.notifications.webhooks[0]",
        "spec.notifications.webhooks[]: set exactly one of url and urlSecretRef",
    ),
    # ------------------------------------------------------------------ retriever served from a store
    # ------------------------------------------------------------------ an embedding model the operator deploys
    Refused(
        "deployed-embedder-unpinned",
        stack(retriever=deployed(revision=None)),
        "spec.retriever.embedding.revision",
        EMBEDDER_PIN,
    ),
    Refused(
        "deployed-embedder-tag-without-policy",
        stack(retriever=deployed(revision="main")),
        "spec.retriever.embedding.revision",
        EMBEDDER_PIN,
    ),
    Refused(
        "deployed-embedder-on-cpu-with-the-cuda-image",
        stack(retriever=deployed(image=None)),
        "spec.retriever.embedding.image",
        "spec.retriever.embedding.image must be a CPU build of vLLM when the operator deploys the embedding model "
        "on CPU (gpus: 0): the default vllm/vllm-openai:v0.32.0 runs on CUDA GPUs only; set image, or gpus: 1",
    ),
    Refused(
        "embedder-settings-with-an-endpoint",
        stack(retriever={**RETRIEVER, "embedding": {**RETRIEVER["embedding"], "gpus": 1}}),
        "spec.retriever.embedding",
        "spec.retriever.embedding image, gpus, replicas, resources and extraArgs are only read when the operator "
        "deploys the embedding model, and spec.retriever.endpoint names a server you run: remove them, or remove endpoint",
    ),
    Refused(
        "embedder-extra-args-set-the-runner",
        stack(retriever=deployed(extraArgs=["--max-model-len=512", "--runner=generate"])),
        "spec.retriever.embedding.extraArgs",
        "spec.retriever.embedding.extraArgs must not set a flag the operator sets (--model, --served-model-name, "
        "--port, --revision, --runner): set spec.retriever.embedding.model or revision instead",
    ),
    Refused(
        "embedder-two-gpus",
        stack(retriever=deployed(image=None, gpus=2)),
        "spec.retriever.embedding.gpus",
        "spec.retriever.embedding.gpus in body should be less than or equal to 1",
        SCHEMA,
    ),
    Refused(
        "embedder-memory-not-a-quantity",
        stack(retriever=deployed(resources={"limits": {"memory": "4 GB"}})),
        "spec.retriever.embedding.resources.limits.memory",
        "spec.retriever.embedding.resources.limits.memory in body should match",
        SCHEMA,
    ),
    Refused(
        "store-without-dimension",
        stack(retriever={**RETRIEVER, "embedding": {"model": "BAAI/bge-small-en-v1.5"}}),
        "spec.retriever.embedding.dimension",
        "spec.retriever.embedding.dimension is required with spec.retriever.store: "
        "set it to the length of the embedding model's vectors (the index's vector column)",
    ),
    Refused(
        "store-table-name-too-long",
        stack(retriever={**RETRIEVER, "index": {"name": "a" * 40, "version": "v" * 22}}),
        "spec.retriever.index",
        "spec.retriever.index: name and version together must be at most 61 characters with spec.retriever.store "
        "(the index version's table is <name>__<version>): shorten them",
    ),
]

# Accepted: near misses of the rules above (each must pass both the API server and pydantic).
ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("base", stack()),
    ("retriever-with-store", stack(retriever=RETRIEVER)),
    ("retriever-without-store", stack(retriever={"embedding": {"model": "bge"}, "index": {"name": "docs", "version": "1"}})),
    ("deployed-embedder-on-cpu", stack(retriever=deployed(
        replicas=2, resources={"requests": {"cpu": 2, "memory": "4Gi"}, "limits": {"cpu": "2500m", "memory": "4Gi"}},
        extraArgs=["--gpu-memory-utilization=0.2", "--max-model-len", "512"],
    ))),
    ("deployed-embedder-on-a-gpu", stack(retriever=deployed(image=None, gpus=1))),
    ("deployed-embedder-immutable-tag", stack(retriever=deployed(revision="v1.5", revisionPolicy="ImmutableTag"))),
    ("deployed-embedder-unpinned-by-choice", stack(retriever=deployed(revision=None, revisionPolicy="Unpinned"))),
    ("evaluator-gate", stack(evaluation=EVAL, gates=[EGATE, {**EGATE, "name": "billing-only", "slices": ["billing"]}])),
    ("lower-is-better-on-one-answer-scores", stack(
        evaluation={**EVAL, "evaluators": [
            *EVAL["evaluators"],
            {"name": "harmful", "judge": {**JUDGE, "criteria": "10: states a fact the documents contradict. 1: none."}},
            {"name": "reports", "feedback": {}},
        ]},
        gates=[{**EGATE, "name": n, "evaluator": n, "direction": "LowerIsBetter"} for n in ("no-refusal", "harmful", "reports")],
        rollout=steps({"canary": {"weight": 5}}),
    )),
    ("higher-is-better-written-out-on-paired-evaluators", stack(
        evaluation={**GOLDEN_EVAL, "evaluators": [
            *GOLDEN_EVAL["evaluators"],
            {"name": "preferred", "judge": {"mode": "Pairwise", "stack": "judge", "criteria": "Prefer the correct answer."}},
        ]},
        gates=[{**EGATE, "name": n, "evaluator": n, "direction": "HigherIsBetter"} for n in ("golden", "preferred")],
        rollout=steps({"evaluate": {}}, {"shadow": {}}, {"canary": {"weight": 5}}),
    )),
    ("placeholders-with-spaces", stack(gates=[gate(prometheus={"query": QUERY.replace("{{revision}}", "{{ revision }}")})])),
    ("slice-not-matched-with-regex", stack(gates=[gate(prometheus={"query": QUERY.replace('slice=~"', 'slice!~"')})])),
    ("braces-that-are-no-placeholder", stack(gates=[gate(LATENCY, prometheus={"query": 'label_replace(max(latency_seconds{revision="{{revision}}"}), "x", "{{ a b }}", "", "")'})])),
    ("threshold-min-equals-max", stack(gates=[gate(LATENCY, threshold={"min": 1, "max": 1})])),
    ("threshold-without-revision", stack(gates=[gate(LATENCY, prometheus={"query": "max(up)"})])),
    ("full-canary-last", stack(rollout=steps({"shadow": {}}, {"canary": {"weight": 5}}, {"canary": {"weight": 100}}))),
    ("ramp-last-after-pause", stack(rollout=steps({"canary": {"weight": 5}}, {"pause": {}}, {"ramp": {"increment": 50}}))),
    ("no-steps-no-gates", stack(gates=None, rollout=steps())),
    ("longest-duration", stack(rollout={"scaleDownDelay": "8760h", "analysisInterval": "1s", "progressDeadline": "1s"})),
    ("extra-args-near-owned-flags", stack(model=model(engine={"extraArgs": ["--model-loader-extra-config={}", "--max-num-seqs=64", "--tokenizer-revision=main"]}))),
    ("hosted-model", stack(model=model(**HOSTED))),
    ("cites-retrieved-gate-with-store", stack(
        retriever=RETRIEVER, evaluation={**EVAL, "evaluators": [{"name": "no-refusal", "rule": {"citesRetrieved": {}}}]}, gates=[EGATE],
    )),
    ("cites-retrieved-without-gate-or-store", stack(
        evaluation={**EVAL, "evaluators": [*EVAL["evaluators"], {"name": "cites", "rule": {"citesRetrieved": {}}}]}, gates=[EGATE],
    )),
    ("every-evaluator-kind", stack(
        evaluation={**GOLDEN_EVAL, "evaluators": [
            *GOLDEN_EVAL["evaluators"],
            {"name": "helpful", "judge": JUDGE},
            {"name": "preferred", "judge": {"mode": "Pairwise", "stack": "judge", "criteria": "Prefer the correct answer."}},
            {"name": "thumbs", "feedback": {"maxAge": "1h"}},
        ]},
        gates=[{**EGATE, "name": n, "evaluator": n} for n in ("golden", "helpful", "preferred", "thumbs")],
        rollout=steps({"evaluate": {}}, {"shadow": {}}, {"canary": {"weight": 5}}),
    )),
]
