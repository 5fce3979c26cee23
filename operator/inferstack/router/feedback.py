"""User feedback as an evaluator: signed response ids and ``POST /v1/feedback``.

Every answer the router serves carries ``x-inferstack-response-id``: a compact
payload (namespace, stack, revision, role, slice, the time it was served, a
random nonce and, when the request was traced, its trace and span ids) and an
HMAC-SHA256 over it, base64url-encoded. The trace ids let feedback land in the
answer's own trace, from any replica. Any replica that
holds the same key can verify an id and attribute the feedback to the revision
and slice that produced the answer, with no shared store. The payload carries
no prompt, no answer and nothing secret: it is readable by whoever holds it,
only not forgeable.

Feedback becomes one sample of the stack's feedback evaluator, in the one
metric shape every evaluator uses (``RouterMetrics.record_samples``), so an
evaluator gate judges it like any other evaluator.

Signing and verification (``Signer``) are pure; ``FeedbackEndpoint`` is the
HTTP handler around them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from inferstack.api.v1alpha1 import Evaluator
from inferstack.core.durations import parse_seconds
from inferstack.router import tracing
from inferstack.router.audit import AuditLog, evaluation_record
from inferstack.router.auth import ANONYMOUS, Identity, ModelNotAllowed, authorize, identity_of
from inferstack.router.errors import error_response, json_response
from inferstack.router.metrics import Labels, RouterMetrics
from inferstack.router.plansource import PlanStore, UnknownModel
from inferstack.router.server import BodyError, BodyTooLarge, Request, Response

log = logging.getLogger(__name__)

HEADER = "x-inferstack-response-id"
KEY_ENV = "INFERSTACK_FEEDBACK_KEY"
MIN_KEY_BYTES = 16

_VERSION = 1  # without trace context
_VERSION_TRACED = 2  # the payload ends with the answer's trace id (16 bytes) and span id (8 bytes)
_TRACE = struct.Struct(">16s8s")
_ROLES = ("stable", "candidate")  # role code in the id: the index
_HEAD = struct.Struct(">BIB8s")  # version, issued (unix seconds), role code, nonce
_MAC_BYTES = 32  # the whole HMAC-SHA256
_MAX_FIELD_BYTES = 255  # each string is length-prefixed with one byte
# The longest id the router can issue: head + four fields of at most 255 bytes + MAC,
# base64url without padding. Anything longer is refused before it is decoded.
MAX_ID_CHARS = math.ceil((_HEAD.size + 4 * (1 + _MAX_FIELD_BYTES) + _TRACE.size + _MAC_BYTES) * 4 / 3)
# An id issued this far in the future (a replica whose clock is ahead) is still accepted.
CLOCK_SKEW_SECONDS = 300
MAX_BODY_BYTES = 16 * 1024  # a feedback request is a few hundred bytes
DEFAULT_SEEN_LIMIT = 65_536  # response ids remembered per replica, to refuse duplicates

# Why feedback was refused: the only values of the refused counter's label.
REASONS = (
    "invalid_json", "invalid_request", "too_large", "malformed_id", "bad_signature", "expired",
    "unknown_stack", "not_allowed", "no_feedback_evaluator", "unknown_evaluator", "invalid_value", "duplicate",
)  # fmt: skip


# base64url is base64 with "-_" for "+/": binascii's encoder and one translate, which is
# base64.urlsafe_b64encode without its two Python layers (0.46 -> 0.25 µs an id).
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text.isascii() or "=" in text:
        raise ValueError("not base64url without padding")
    # validate: a character outside the alphabet is an error, not silently skipped
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


# ------------------------------------------------------------------- keys


def load_keys(path: str | None = None, env_value: str | None = None) -> tuple[bytes, ...]:
    """The shared keys: one per line of the file (else of the env value); the first signs, all verify.

    Several lines let a key be rotated without refusing the ids issued under
    the old one: add the new key first, keep the old one for the longest
    ``maxAge``, then drop it. Blank lines and ``#`` comments are skipped.
    """
    text = Path(path).read_text(encoding="utf-8") if path else (env_value or "")
    keys = tuple(s.encode() for line in text.splitlines() if (s := line.strip()) and not s.startswith("#"))
    short = [i for i, k in enumerate(keys) if len(k) < MIN_KEY_BYTES]
    if short:
        raise ValueError(f"feedback key on line {short[0] + 1} is shorter than {MIN_KEY_BYTES} bytes")
    if (path or env_value) and not keys:
        raise ValueError("the feedback key file or variable holds no key")
    return keys


# ---------------------------------------------------------------- signing


@dataclass(frozen=True)
class ResponseRef:
    """What a verified response id says: who served the answer, to which slice, and when."""

    namespace: str
    stack: str
    revision: str
    role: str
    slice: str
    issued: int  # unix seconds
    nonce: bytes
    mac: bytes  # identifies the answer whatever spelling of its id a client sends
    trace_id: int = 0  # the answer's trace, when it was traced (0: none)
    span_id: int = 0

    @property
    def span_context(self) -> tracing.SpanContext | None:
        if not self.trace_id:
            return None
        return tracing.SpanContext(self.trace_id, self.span_id, is_remote=True, trace_flags=tracing.TraceFlags(1))

    @property
    def labels(self) -> Labels:
        return Labels(self.namespace, self.stack, self.revision, self.role, self.slice)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.stack}"


class InvalidId(ValueError):
    """A response id that does not verify; ``reason`` is ``malformed_id`` or ``bad_signature``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@lru_cache(maxsize=4096)
def _fields(*texts: str) -> bytes | None:
    """The length-prefixed label fields of an id, once per label set (they are few); None when one is too long."""
    parts = []
    for text in texts:
        raw = text.encode()
        if len(raw) > _MAX_FIELD_BYTES:
            return None
        parts += [bytes([len(raw)]), raw]
    return b"".join(parts)


_BLOCK = 64  # SHA-256's block size: the HMAC key is padded (or first hashed) to it


def _hmac_pads(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 states after HMAC's inner and outer padded key (RFC 2104), made once per key: an id's MAC is
    then two copies, two updates and two digests (0.6 µs), where ``hmac.digest`` sets up the key and looks
    up the digest by name on every call (1.3-1.9 µs). The same bytes as ``hmac.digest(key, msg, "sha256")``."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return (hashlib.sha256(key.translate(bytes(b ^ 0x36 for b in range(256)))),
            hashlib.sha256(key.translate(bytes(b ^ 0x5C for b in range(256)))))


class Signer:
    """Issues and verifies response ids with HMAC-SHA256 under shared keys (the first one signs)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a Signer needs at least one key")
        self._keys = tuple(keys)
        self._pads = {key: _hmac_pads(key) for key in self._keys}

    @classmethod
    def ephemeral(cls) -> Signer:
        """A random key of this process only: feedback then works only on the replica that served the answer."""
        return cls([secrets.token_bytes(32)])

    def _mac(self, key: bytes, payload: bytes) -> bytes:
        """HMAC-SHA256 of ``payload`` under ``key`` (one of the signer's), from its precomputed pads."""
        inner_pad, outer_pad = self._pads[key]
        inner = inner_pad.copy()
        inner.update(payload)
        outer = outer_pad.copy()
        outer.update(inner.digest())
        return outer.digest()

    def sign(self, labels: Labels, now: float | None = None, nonce: bytes | None = None,
             trace: tracing.SpanContext | None = None) -> str | None:
        """The response id of an answer served now under ``labels``; None when a label cannot fit (never in practice).

        ``trace``: the answer's span when it is traced, so feedback joins that trace."""
        if labels.role not in _ROLES:
            return None
        issued = int(time.time() if now is None else now)
        traced = trace is not None and trace.is_valid and trace.trace_flags.sampled
        version = _VERSION_TRACED if traced else _VERSION
        head = _HEAD.pack(version, issued & 0xFFFFFFFF, _ROLES.index(labels.role), nonce or secrets.token_bytes(8))
        fields = _fields(labels.namespace, labels.stack, labels.revision, labels.slice)
        if fields is None:
            return None
        parts = [head, fields]
        if traced:
            assert trace is not None
            parts.append(_TRACE.pack(trace.trace_id.to_bytes(16, "big"), trace.span_id.to_bytes(8, "big")))
        payload = b"".join(parts)
        return _b64encode(payload + self._mac(self._keys[0], payload))

    def verify(self, token: str) -> ResponseRef:
        """The reference an id carries; raises ``InvalidId`` for anything the router did not issue under these keys.

        Length is checked before decoding and the MAC before parsing, so a
        hostile id costs at most one base64 decode of a bounded string and a
        few HMACs; the comparison is constant-time.
        """
        if not isinstance(token, str) or not token:
            raise InvalidId("malformed_id", "`response_id` must be a non-empty string")
        if len(token) > MAX_ID_CHARS:
            raise InvalidId("malformed_id", "`response_id` is longer than any id the router issues")
        try:
            raw = _b64decode(token)
        except (ValueError, binascii.Error):
            raise InvalidId("malformed_id", "`response_id` is not a response id issued by the router") from None
        if len(raw) < _HEAD.size + 4 + _MAC_BYTES:
            raise InvalidId("malformed_id", "`response_id` is truncated")
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        # Every key is tried, matched or not, so timing tells nothing about which matched.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(self._mac(key, payload), mac)
        if not ok:
            raise InvalidId("bad_signature", "`response_id` was not signed by this router's key (forged, altered or from another cluster)")
        # Signed by us: the payload is well-formed unless the format changed.
        version, issued, role, nonce = _HEAD.unpack_from(payload)
        fields: list[str] = []
        pos = _HEAD.size
        try:
            for _ in range(4):
                n = payload[pos]
                fields.append(payload[pos + 1 : pos + 1 + n].decode())
                pos += 1 + n
        except (IndexError, UnicodeDecodeError):
            raise InvalidId("malformed_id", "`response_id` has an unknown format") from None
        trace_id = span_id = 0
        if version == _VERSION_TRACED and len(payload) - pos == _TRACE.size:
            raw_trace, raw_span = _TRACE.unpack_from(payload, pos)
            trace_id, span_id = int.from_bytes(raw_trace, "big"), int.from_bytes(raw_span, "big")
            pos += _TRACE.size
        if version not in (_VERSION, _VERSION_TRACED) or role >= len(_ROLES) or pos != len(payload):
            raise InvalidId("malformed_id", "`response_id` has an unknown format")
        namespace, stack, revision, slice_ = fields
        return ResponseRef(namespace, stack, revision, _ROLES[role], slice_, issued, nonce, mac, trace_id, span_id)


# ---------------------------------------------------------------- values


def parse_value(value: Any) -> float | None:
    """A feedback value as a score in 0..1: a number in range, true/false, or "up"/"down"; None otherwise."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        v = float(value)
        return v if math.isfinite(v) and 0.0 <= v <= 1.0 else None
    if isinstance(value, str):
        return {"up": 1.0, "down": 0.0}.get(value.strip().lower())
    return None


class SeenIds:
    """The ids (and evaluators) this replica already recorded feedback for: a bounded LRU.

    Per replica: with N replicas behind a load balancer the same feedback can
    be recorded at most N times (once per replica), and an id evicted here (after
    ``limit`` newer ones) can be recorded again. Both are bounded and far
    cheaper than a shared store.
    """

    def __init__(self, limit: int = DEFAULT_SEEN_LIMIT) -> None:
        self.limit = max(1, limit)
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, key: bytes) -> bool:
        return key in self._seen

    def add(self, key: bytes) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)


def seen_key(ref: ResponseRef, evaluator: str) -> bytes:
    # A digest of the MAC, not the id's text: 32 bytes per entry, the same
    # however a client spells the id (base64 has equivalent spellings).
    return hashlib.sha256(evaluator.encode() + b"\0" + ref.mac).digest()


# ---------------------------------------------------------------- metrics


class FeedbackMetrics:
    """Feedback recorded per stack and evaluator, and refused per reason (``REASONS``: a closed set)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.recorded = Counter(
            "inferstack_router_feedback_recorded", "User feedback recorded as an evaluator sample.",
            ("namespace", "stack", "evaluator"), registry=registry,
        )  # fmt: skip
        self.refused = Counter("inferstack_router_feedback_refused", "User feedback refused, by reason.", ("reason",), registry=registry)
        for reason in REASONS:  # every reason's series exists from the start, at 0
            self.refused.labels(reason)


# ------------------------------------------------------------ the endpoint


class Refused(Exception):
    def __init__(self, status: int, reason: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.code = status, reason, message, code or reason


_FIELDS = frozenset({"response_id", "value", "evaluator"})


class FeedbackEndpoint:
    """``POST /v1/feedback``, and the response ids the router puts on its answers."""

    def __init__(
        self, store: PlanStore, metrics: RouterMetrics, signer: Signer,
        seen_limit: int = DEFAULT_SEEN_LIMIT, clock: Callable[[], float] = time.time,
        tracer: tracing.Tracing | None = None, audit: AuditLog | None = None,
    ) -> None:  # fmt: skip
        self.tracing = tracer or tracing.Tracing.off()
        self.audit = audit
        self.store = store
        self.metrics = metrics
        self.signer = signer
        self.seen = SeenIds(seen_limit)
        self.clock = clock
        self.counters = FeedbackMetrics(metrics.registry)

    @classmethod
    def from_keys(
        cls, store: PlanStore, metrics: RouterMetrics, keys: Sequence[bytes], seen_limit: int = DEFAULT_SEEN_LIMIT,
        tracer: tracing.Tracing | None = None, audit: AuditLog | None = None,
    ) -> FeedbackEndpoint:
        if keys:
            signer = Signer(keys)
        else:
            log.warning(
                "no feedback key (--feedback-key-file or %s): using a random key of this process; "
                "POST /v1/feedback only accepts ids issued by this replica, and none after a restart",
                KEY_ENV,
            )
            signer = Signer.ephemeral()
        return cls(store, metrics, signer, seen_limit, tracer=tracer, audit=audit)

    def response_id(self, labels: Labels, trace: tracing.SpanContext | None = None) -> str:
        """The ``x-inferstack-response-id`` of an answer served now under ``labels`` (empty if it cannot be issued)."""
        return self.signer.sign(labels, self.clock(), trace=trace) or ""

    async def handle(self, request: Request) -> Response:
        try:
            evaluator, ref, score, token = self._accept(await _read_bounded(request), identity_of(request))
        except Refused as r:
            self.counters.refused.labels(r.reason).inc()
            return error_response(r.status, r.message, r.code)
        # The labels come from the id, which only the router issues (the HMAC
        # proves it): namespace, stack, revision and slice are values the router
        # itself labelled an answer with, so feedback creates no label value a
        # client chose. Feedback for a revision no longer in the plan is still
        # recorded: Prometheus decides its relevance by the revision label.
        self.metrics.record_samples(ref.labels, {evaluator: score})
        self.counters.recorded.labels(ref.namespace, ref.stack, evaluator).inc()
        # In the answer's own trace, and in the audit log beside its request line.
        result = tracing.Evaluation(evaluator, score, "up" if score >= 0.5 else "down")
        self.tracing.later(ref.span_context, f"evaluate {evaluator}", [result],
                           {"inferstack.stack": ref.stack, "inferstack.namespace": ref.namespace,
                            "inferstack.revision": ref.revision, "inferstack.role": ref.role, "inferstack.slice": ref.slice,
                            "inferstack.evaluator.kind": "feedback"})
        if self.audit is not None:
            self.audit.write(evaluation_record(
                namespace=ref.namespace, stack=ref.stack, revision=ref.revision, role=ref.role, slice_=ref.slice,
                evaluator=evaluator, score=score, label=result.label, response_id=token,
                trace_id=format(ref.trace_id, "032x") if ref.trace_id else None,
            ))
        return json_response({"status": "recorded", "evaluator": evaluator})

    def _accept(self, data: bytes | None, identity: Identity = ANONYMOUS) -> tuple[str, ResponseRef, float, str]:
        if data is None:
            raise Refused(413, "too_large", f"the feedback body is larger than {MAX_BODY_BYTES} bytes", "request_too_large")
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            raise Refused(400, "invalid_json", "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "invalid_json", "the request body must be a JSON object")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise Refused(400, "invalid_request", f"unknown field `{unknown[0][:64]}`; expected response_id, value, evaluator")
        if "response_id" not in body or "value" not in body:
            raise Refused(400, "invalid_request", "`response_id` and `value` are required")
        token = body["response_id"]
        name = body.get("evaluator")
        if name is not None and not isinstance(name, str):
            raise Refused(400, "invalid_request", "`evaluator` must be a string")
        try:
            ref = self.signer.verify(token)
        except InvalidId as e:
            raise Refused(400, e.reason, e.message, "invalid_response_id") from None

        gone = Refused(404, "unknown_stack", f"the stack `{ref.key}` of this response no longer exists", "model_not_found")
        try:  # a key gives feedback only on answers of stacks it may call
            authorize(identity, ref.namespace, ref.stack)
        except UnknownModel:  # another namespace: as if the stack did not exist
            raise gone from None
        except ModelNotAllowed:
            raise Refused(403, "not_allowed", f"this API key may not call the stack `{ref.key}`", "model_not_allowed") from None
        plan = self.store.get(ref.key)
        if plan is None:
            raise gone
        evaluator = self._evaluator(plan.evaluation.evaluators, name, ref.key)
        assert evaluator.feedback is not None
        age = self.clock() - ref.issued
        if age > parse_seconds(evaluator.feedback.max_age):
            raise Refused(400, "expired", f"the response is older than the evaluator's maxAge ({evaluator.feedback.max_age})", "response_id_expired")
        if age < -CLOCK_SKEW_SECONDS:
            raise Refused(400, "malformed_id", "`response_id` was issued in the future", "invalid_response_id")
        score = parse_value(body["value"])
        if score is None:
            raise Refused(400, "invalid_value", '`value` must be a number in 0..1, true/false, or "up"/"down"', "invalid_value")
        key = seen_key(ref, evaluator.name)
        if key in self.seen:
            raise Refused(409, "duplicate", "feedback on this response was already recorded", "duplicate_feedback")
        self.seen.add(key)
        return evaluator.name, ref, score, token

    @staticmethod
    def _evaluator(evaluators: Sequence[Evaluator], name: str | None, stack: str) -> Evaluator:
        feedback = [e for e in evaluators if e.feedback is not None]
        if not feedback:
            raise Refused(400, "no_feedback_evaluator", f"the stack `{stack}` declares no feedback evaluator", "feedback_not_enabled")
        if name is None:
            if len(feedback) > 1:
                names = ", ".join(e.name for e in feedback)
                raise Refused(400, "unknown_evaluator", f"the stack `{stack}` has several feedback evaluators; name one in `evaluator`: {names}")
            return feedback[0]
        for e in feedback:
            if e.name == name:
                return e
        raise Refused(400, "unknown_evaluator", f"the stack `{stack}` has no feedback evaluator `{name[:64]}`")


async def _read_bounded(request: Request) -> bytes | None:
    """The body, or None when it is larger than ``MAX_BODY_BYTES`` (read no further than that); one that cannot
    be decoded is empty (and refused as invalid JSON)."""
    try:
        return await request.read(MAX_BODY_BYTES)
    except BodyTooLarge:
        return None
    except BodyError:
        return b""


def keys_from(path: str | None) -> tuple[bytes, ...]:
    """The keys of ``--feedback-key-file``, else of ``$INFERSTACK_FEEDBACK_KEY``, else none."""
    return load_keys(path, None) if path else load_keys(None, os.environ.get(KEY_ENV))
