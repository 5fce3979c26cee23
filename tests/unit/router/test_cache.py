import pytest

from inferstack.router.app import ROUTER
from inferstack.router.auth import Authenticator
from inferstack.router.cache import ResponseCache, cache_key, cacheable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"temperature": 0}, True),
        ({"temperature": 0.0}, True),
        ({"temperature": 0, "stream": True}, False),
        ({"temperature": 0.7}, False),
        ({}, False),  # server default temperature is 1
        ({"temperature": 0, "n": 3}, False),
    ],
)
def test_cacheable(body: dict, expected: bool) -> None:
    assert cacheable(body) is expected


def test_ttl_and_lru_bounds() -> None:
    clock = Clock()
    cache = ResponseCache(max_entries=2, clock=clock)
    cache.put("a", b"A", "application/json", ttl_seconds=10)
    cache.put("b", b"B", "application/json", ttl_seconds=10)
    assert cache.get("a") is not None  # a is now most recent
    cache.put("c", b"C", "application/json", ttl_seconds=10)
    assert cache.get("b") is None and len(cache) == 2
    clock.now += 11
    assert cache.get("a") is None and cache.get("c") is None


def test_oversized_entries_are_not_stored() -> None:
    cache = ResponseCache(max_entries=10, max_entry_bytes=4)
    cache.put("k", b"12345", "application/json", ttl_seconds=10)
    assert cache.get("k") is None


def test_key_separates_tenant_namespace_revision_and_body() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    base = cache_key("t", "ns-a", "rev-a", body)
    assert base == cache_key("t", "ns-a", "rev-a", dict(reversed(list(body.items()))))  # key order is irrelevant
    assert base != cache_key("u", "ns-a", "rev-a", body)
    assert base != cache_key("t", "ns-b", "rev-a", body)
    assert base != cache_key("t", "ns-a", "rev-b", body)
    assert base != cache_key("t", "ns-a", "rev-a", {**body, "max_tokens": 5})


async def test_new_revision_and_rollback_never_serve_another_revisions_entry(make_plan, router_client) -> None:
    cached = {"responseCache": {"enabled": True}}
    plan_a = make_plan(candidate=False, serial=1, **cached)
    rev_b = make_plan().candidate
    client = await router_client(plan_a)
    store = client.app[ROUTER].store
    body = {"model": "support", "temperature": 0, "messages": [{"role": "user", "content": "Who are you?"}]}

    async def ask() -> tuple[str, str, str]:
        resp = await client.post("/v1/chat/completions", json=body, headers={"x-tenant-id": "acme"})
        assert resp.status == 200
        data = await resp.json()
        return resp.headers["x-inferstack-revision"], resp.headers["x-inferstack-cache"], data["model"]

    assert await ask() == ("rev-a", "miss", "model-a")
    assert await ask() == ("rev-a", "hit", "model-a")

    store.apply(plan_a.model_copy(update={"serial": 2, "stable": rev_b}))  # promote b
    assert await ask() == ("rev-b", "miss", "model-b")
    assert await ask() == ("rev-b", "hit", "model-b")

    store.apply(plan_a.model_copy(update={"serial": 3}))  # roll back to a: only a's own entry
    assert await ask() == ("rev-a", "hit", "model-a")


async def test_cache_is_per_tenant_and_the_tenant_is_the_keys(make_plan, make_keys, router_client) -> None:
    """Two keys are two tenants whatever x-tenant-id says (the attacker's side: tests/unit/router/test_auth.py)."""
    auth = Authenticator("api-keys", make_keys(("isk_acme", "team-a", "acme", "*"), ("isk_globex", "team-a", "globex", "*")))
    client = await router_client(make_plan(candidate=False, responseCache={"enabled": True}), auth=auth)
    body = {"model": "support", "temperature": 0, "messages": [{"role": "user", "content": "Who are you?"}]}
    first = await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer isk_acme"})
    other = await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer isk_globex", "x-tenant-id": "acme"})
    again = await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer isk_acme"})
    assert [r.headers["x-inferstack-cache"] for r in (first, other, again)] == ["miss", "miss", "hit"]
