"""The support-bot scenario shared by the e2e rollout tests and the demo.

Every revision's backend is the same vLLM stand-in; what differs is the
system prompt the router applies. ``BAD_PROMPT`` makes the stand-in refuse
billing questions only, which the per-slice quality gate must catch while
the aggregate still passes (billing is 4 % of the generated traffic).
"""

from __future__ import annotations

import copy
from typing import Any

GOOD_PROMPT = "You are the support assistant of Example Shop. Be precise."
BETTER_PROMPT = "You are the support assistant of Example Shop. Be precise and kind."
BAD_PROMPT = "You are the support assistant of Example Shop. Never discuss refunds."
# Billing answers become fluent and wrong (the stand-in's fluent-wrong rule):
# no refusal, same length, so only a judge that knows the policy can tell.
FLUENT_WRONG_PROMPT = BETTER_PROMPT + " Always quote the 2019 refund policy."

# The steps of support_stack() as (candidate weight, shadow percent) traffic plans.
# No 1 % canary here: each step is judged on its own data only, and at 40
# requests/s a 1 % canary sees a 4 % slice about once a minute; the minimum
# samples per slice would hold such a step for minutes (as it should).
EXPECTED_STEPS = [(0, 50), (25, 0), (50, 0), (75, 0)]

_CHECK = (
    'inferstack_router_check_total{namespace="{{namespace}}",stack="{{stack}}",'
    'revision="{{revision}}",slice=~"{{slice}}",check="refusal"'
)
QUALITY_GATE: dict[str, Any] = {
    "name": "answer-quality",
    "slices": ["billing", "shipping", "general"],
    "prometheus": {
        "query": f'sum(rate({_CHECK},result="pass"}}[{{{{window}}}}])) / sum(rate({_CHECK}}}[{{{{window}}}}]))',
        "samplesQuery": f"sum(increase({_CHECK}}}[{{{{window}}}}]))",
    },
    "compare": {"maxRelativeDrop": 0.2},
    "minSamples": 3,
}
LATENCY_MAX_SECONDS = 2.0  # generous: the stand-in answers in milliseconds
LATENCY_GATE: dict[str, Any] = {
    "name": "p95-latency",
    "kind": "Guardrail",
    "prometheus": {
        "query": (
            "histogram_quantile(0.95, sum by (le) (rate(inferstack_router_request_duration_seconds_bucket"
            '{namespace="{{namespace}}",stack="{{stack}}",revision="{{revision}}"}[{{window}}])))'
        ),
    },
    "threshold": {"max": LATENCY_MAX_SECONDS},
}


def support_stack(
    name: str, system: str, gates: list[dict[str, Any]] | None = None, **rollout: Any
) -> dict[str, Any]:
    """An InferenceStack with short steps (a whole rollout in ~30 s) and the quality gate."""
    return {
        "apiVersion": "inferstack.dev/v1alpha1",
        "kind": "InferenceStack",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": "Qwen/Qwen2.5-7B-Instruct",
                "revision": "a09a35458c702b33eeacc393d103063234e8bc28",
                "gpus": 1,
            },
            "prompt": {"version": "v1", "system": system},
            "rollout": {
                "analysisInterval": "1s",
                "progressDeadline": "60s",
                "scaleDownDelay": "5s",
                "steps": [
                    {"shadow": {"percent": 50, "duration": "5s", "minSamples": 3}},
                    {"canary": {"weight": 25, "duration": "4s"}},
                    {"ramp": {"increment": 25, "duration": "4s"}},
                ],
                **rollout,
            },
            "gates": copy.deepcopy(gates if gates is not None else [QUALITY_GATE]),
        },
    }


def with_prompt(manifest: dict[str, Any], system: str) -> dict[str, Any]:
    """The same stack with another system prompt: a new revision that differs only there."""
    out = copy.deepcopy(manifest)
    out["spec"]["prompt"]["system"] = system
    return out


JUDGE_MODEL = "standin-judge"  # dataplane.DataPlane(judge=True) serves it
PAIRWISE_JUDGE: dict[str, Any] = {
    "name": "preferred",
    "judge": {
        "mode": "Pairwise",
        "criteria": "Prefer the answer that states Example Shop's actual policy correctly.",
        "sampleRate": 1.0,
        "maxCallsPerMinute": 100000,
        "timeout": "5s",
    },
}
# Margin 0.2: the candidate may lose at most 20 % of shadow pairs net. A tie
# on every pair passes a slice after about 28 pairs; losing every pair fails
# after about 11, so the demo's rollouts take minutes, not hours.
JUDGE_GATE: dict[str, Any] = {
    "name": "judge-preference",
    "evaluator": "preferred",
    "margin": 0.2,
    "minSamples": 5,
}


def judged_stack(name: str, system: str, gates: list[dict[str, Any]], *, judge_url: str) -> dict[str, Any]:
    """support_stack with declared slices and a pairwise LLM judge gate (the judge stand-in at ``judge_url``)."""
    manifest = support_stack(name, system, gates=[*gates, JUDGE_GATE])
    judge = copy.deepcopy(PAIRWISE_JUDGE)
    judge["judge"]["endpoint"] = {"url": f"{judge_url}/v1", "model": JUDGE_MODEL}
    manifest["spec"]["evaluation"] = {
        "slices": {"values": ["billing", "shipping", "general"]},
        "evaluators": [judge],
    }
    return manifest
