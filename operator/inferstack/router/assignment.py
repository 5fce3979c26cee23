"""Which revision serves a request, and whether it is mirrored.

Thin glue over :mod:`inferstack.core.traffic`, which holds the hashing that
every replica must compute identically.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from inferstack.core.traffic import RevisionBundle, Role, TrafficPlan, in_candidate, shadowed


@dataclass(frozen=True)
class Route:
    role: Role  # "stable" or "candidate": who answers the client
    bundle: RevisionBundle
    shadow: RevisionBundle | None  # a mirror target whose answer is measured and discarded
    sticky: bool  # whether the choice came from a user identity (else per request)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def identity(plan: TrafficPlan, headers: Mapping[str, str]) -> str | None:
    """The user identity to hash, or None for anonymous traffic.

    API keys get a prefix so that a user id and an API key with the same text
    are different identities.
    """
    user = headers.get(plan.stickiness.header, "").strip()
    if user:
        return "user:" + user
    if plan.stickiness.fallback_to_api_key:
        token = bearer_token(headers.get("Authorization"))
        if token:
            return "key:" + token
    return None


def choose(plan: TrafficPlan, headers: Mapping[str, str], request_id: str) -> Route:
    """Pick the serving revision and the optional shadow target for one request.

    Anonymous requests are split per request: hashing a fresh random id with
    the same function keeps one code path and the same weight arithmetic.
    Only requests served by stable are mirrored; mirroring a request the
    candidate already serves would measure it twice.
    """
    who = identity(plan, headers)
    key = who if who is not None else uuid.uuid4().hex
    if plan.candidate is not None and in_candidate(plan, key):
        return Route("candidate", plan.candidate, None, who is not None)
    shadow = plan.candidate if plan.candidate is not None and shadowed(plan, request_id) else None
    return Route("stable", plan.stable, shadow, who is not None)
