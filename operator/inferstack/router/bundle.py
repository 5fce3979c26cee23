"""Apply a revision's bundle (model name, system prompt, tools, cache salt) to a request body."""

from __future__ import annotations

import copy
import hashlib
from functools import lru_cache
from typing import Any

from inferstack.core.trafficplan import RevisionBundle
from inferstack.router.randomness import token_bytes


def cache_salt(tenant: str | None, cache_namespace: str) -> str:
    """vLLM's ``cache_salt``: prefix-cache blocks are only shared between equal salts.

    Tenant and cache namespace together mean no tenant reads another's cached
    prefix (a timing side channel) and no revision reuses another's. The tenant
    is the authenticated one (router/auth.py). No tenant (``--auth none``): a
    random salt per request, which shares no prefix with anyone.
    """
    if tenant is None:
        return token_bytes(32).hex()
    return _salt(tenant, cache_namespace)


@lru_cache(maxsize=4096)
def _salt(tenant: str, cache_namespace: str) -> str:
    return hashlib.sha256(f"{tenant}\x00{cache_namespace}".encode()).hexdigest()


def without_system(body: dict[str, Any]) -> list[Any]:
    """The client's messages but its system messages: the stack owns the system prompt."""
    return [m for m in body.get("messages") or [] if not (isinstance(m, dict) and m.get("role") == "system")]


def apply_bundle(
    body: dict[str, Any], bundle: RevisionBundle, tenant: str | None, *, chat: bool, system_prompt: str | None = None,
) -> dict[str, Any]:
    """A new body for ``bundle``'s backend; ``body`` itself is left untouched (shadows reuse it).

    ``system_prompt``: the system message rendered from the revision's template
    (router/app.py), instead of the bundle's own text.
    """
    out = dict(body)  # shallow: only top-level fields are replaced
    out["model"] = bundle.served_model
    out["cache_salt"] = cache_salt(tenant, bundle.cache_namespace)
    if chat:
        system = system_prompt if system_prompt is not None else bundle.system_prompt
        if system is not None:
            out["messages"] = [{"role": "system", "content": system}, *without_system(body)]
        # The stack owns the tool set, but a client that sends its own keeps it.
        if bundle.tools and not body.get("tools"):
            out["tools"] = copy.deepcopy(bundle.tools)
    return out
