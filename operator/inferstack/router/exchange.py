"""What the router learnt about one client request: the record its span and its audit line are written from.

One record per request, filled as the request is served (who called, which
revision answered, what the model server said, what the rule checks
scored) and read once at the end by both sinks: the request's span
(:mod:`inferstack.router.tracing`) and the audit line
(:mod:`inferstack.router.audit`). Neither sink decides a fact of its own,
so the trace and the audit log can never disagree about a request.

Whether a request's message contents are recorded is decided here, once
(:func:`records_content`): the stack opts in with a share of requests, and a
tenant whose key opts out is never recorded, whatever the stack says.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from inferstack.router import proxy
from inferstack.router.tracing import Evaluation, clip

_random = random.Random()


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer past 64 bits, which json writes
        return json.dumps(value)


def records_content(sample_rate: float, tenant_allows: bool) -> bool:
    """Record this request's messages and answer? Only where the stack opts in, sampled, and the tenant allows."""
    return sample_rate > 0 and tenant_allows and _random.random() < sample_rate


def rule_evaluations(scores: dict[str, float]) -> list[Evaluation]:
    """Rule checks are pass/fail: a score of 1 passes."""
    return [Evaluation(name, score, "pass" if score >= 1.0 else "fail") for name, score in scores.items()]


@dataclass
class Exchange:
    operation: str  # GenAI operation: chat | text_completion
    model: str  # the model the client asked for (a stack name)
    namespace: str
    stack: str
    tenant: str | None
    slice: str
    request_id: str
    record_content: bool = False
    started: float = field(default_factory=time.perf_counter)
    time: float = field(default_factory=time.time)  # wall clock, for the audit line
    revision: str = ""
    role: str = ""
    prompt_hash: str = ""
    response_id: str = ""  # the signed x-inferstack-response-id (feedback)
    completion_id: str = ""  # the model server's id of the answer
    response_model: str = ""
    status: int = 0
    error: str | None = None
    cache_hit: bool = False
    fallback: bool = False  # a candidate that could not be reached: served by stable
    retrieved: str | None = None  # the x-inferstack-retrieved value
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: tuple[str, ...] = ()
    evaluations: dict[str, float] = field(default_factory=dict)
    trace_id: str = ""
    input_messages: Any = None  # what the model received: only when record_content
    output_text: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None

    @classmethod
    def begin(cls, body: dict[str, Any], *, chat: bool, namespace: str, stack: str, tenant: str | None, slice_: str,
              request_id: str, record_content: bool) -> Exchange:
        ex = cls("chat" if chat else "text_completion", str(body.get("model")), namespace, stack, tenant, slice_, request_id,
                 record_content)
        mt = body.get("max_completion_tokens", body.get("max_tokens"))
        ex.max_tokens = mt if isinstance(mt, int) and not isinstance(mt, bool) else None
        t = body.get("temperature")
        ex.temperature = float(t) if isinstance(t, int | float) and not isinstance(t, bool) else None
        return ex

    @property
    def span_name(self) -> str:
        return f"{self.operation} {self.model}"

    def sent(self, upstream_body: dict[str, Any]) -> None:
        """The body the model server received (after the bundle, retrieval and template)."""
        if self.record_content:
            self.input_messages = upstream_body.get("messages") if self.operation == "chat" else upstream_body.get("prompt")

    def answered(self, answer: proxy.Answer, evaluations: dict[str, float]) -> None:
        self.completion_id = answer.id
        self.response_model = answer.model
        self.prompt_tokens = answer.prompt_tokens
        self.completion_tokens = answer.completion_tokens
        self.finish_reasons = tuple(answer.finish_reasons)
        self.evaluations = evaluations
        if self.record_content:
            self.output_text = answer.text

    @property
    def latency(self) -> float:
        return time.perf_counter() - self.started

    # ---------------------------------------------------------------- sinks

    def span_attributes(self) -> dict[str, Any]:
        """The request span's attributes: GenAI conventions (``gen_ai.*``), then inferstack's own."""
        a: dict[str, Any] = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.request.model": self.model,
            "inferstack.stack": self.stack,
            "inferstack.namespace": self.namespace,
            "inferstack.slice": self.slice,
            "inferstack.request_id": self.request_id,
            "inferstack.cache_hit": self.cache_hit,
        }
        optional: dict[str, Any] = {
            "gen_ai.request.max_tokens": self.max_tokens,
            "gen_ai.request.temperature": self.temperature,
            "gen_ai.response.id": self.completion_id or None,
            "gen_ai.response.model": self.response_model or None,
            "gen_ai.response.finish_reasons": list(self.finish_reasons) or None,
            "gen_ai.usage.input_tokens": self.prompt_tokens or None,
            "gen_ai.usage.output_tokens": self.completion_tokens or None,
            "inferstack.revision": self.revision or None,
            "inferstack.role": self.role or None,
            "inferstack.prompt_hash": self.prompt_hash or None,
            "inferstack.response_id": self.response_id or None,
            "inferstack.tenant": self.tenant,
            "inferstack.retrieved_ids": self.retrieved.split(",") if self.retrieved else None,
            "inferstack.fallback": self.fallback or None,
            "http.response.status_code": self.status or None,
            "error.type": self.error,
        }
        a.update({k: v for k, v in optional.items() if v is not None})
        if self.record_content:
            if self.input_messages is not None:
                a["gen_ai.input.messages"] = clip(_json(self.input_messages))
            if self.output_text is not None:
                a["gen_ai.output.messages"] = clip(_json([{"role": "assistant", "content": self.output_text}]))
        return a

    def audit_record(self) -> dict[str, Any]:
        """The audit line: who asked what of which revision and what came back; contents only when recorded."""
        rec: dict[str, Any] = {
            "event": "request",
            "time": round(self.time, 3),
            "tenant": self.tenant,
            "namespace": self.namespace,
            "stack": self.stack,
            "revision": self.revision or None,
            "role": self.role or None,
            "slice": self.slice,
            "prompt_hash": self.prompt_hash or None,
            "request_id": self.request_id,
            "response_id": self.response_id or None,
            "completion_id": self.completion_id or None,
            "status": self.status,
            "error": self.error,
            "cache": "hit" if self.cache_hit else "miss",
            "input_tokens": self.prompt_tokens,
            "output_tokens": self.completion_tokens,
            "latency_ms": round(self.latency * 1000, 1),
            "retrieved": self.retrieved.split(",") if self.retrieved else [],
            "evaluations": self.evaluations,
            "trace_id": self.trace_id or None,
        }
        if self.record_content:
            rec["input_messages"] = self.input_messages
            rec["output_text"] = self.output_text
        return rec
