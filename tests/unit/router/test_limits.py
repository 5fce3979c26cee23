"""Bounded resources: the response caches' bytes per router, and slice labels only from declared lists."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from inferstack.router.app import ROUTER
from inferstack.router.cache import ENTRY_OVERHEAD, CacheMemory, ResponseCache
from inferstack.router.metrics import SliceLabels
from inferstack.router.settings import RouterSettings

KIB = 1024


def test_caches_of_one_router_share_a_byte_budget_lru_first() -> None:
    memory = CacheMemory(max_bytes=10 * (KIB + 600))
    a = ResponseCache(max_entries=1000, memory=memory)
    b = ResponseCache(max_entries=1000, memory=memory)
    for i in range(40):
        (a if i % 2 else b).put(f"k{i}", b"x" * KIB, "application/json", ttl_seconds=60)
        assert memory.used <= memory.max_bytes
    assert len(a) + len(b) == len(memory) <= 10
    assert memory.used == a.size_bytes + b.size_bytes
    assert a.get("k39") is not None and b.get("k38") is not None  # the newest stay
    assert a.get("k1") is None and b.get("k0") is None  # the oldest went, whichever cache held them
    # Touching the oldest entry makes it the last to go.
    oldest = "k30" if b.get("k30") is not None else "k31"
    assert (a.get(oldest) or b.get(oldest)) is not None
    for i in range(40, 49):
        a.put(f"k{i}", b"x" * KIB, "application/json", ttl_seconds=60)
    assert (a.get(oldest) or b.get(oldest)) is not None
    assert b.get("k32") is None  # older than the nine new ones and not touched


def test_entries_over_the_per_entry_cap_or_the_budget_are_not_cached() -> None:
    memory = CacheMemory(max_bytes=4 * KIB)
    cache = ResponseCache(max_entries=10, max_entry_bytes=8 * KIB, memory=memory)
    cache.put("big", b"x" * (5 * KIB), "application/json", ttl_seconds=60)  # under the entry cap, over the budget
    cache.put("huge", b"x" * (9 * KIB), "application/json", ttl_seconds=60)
    assert len(cache) == 0 and memory.used == 0


def test_replacing_expiring_and_clearing_give_the_bytes_back() -> None:
    now = [0.0]
    memory = CacheMemory(max_bytes=1 << 20)
    cache = ResponseCache(max_entries=10, memory=memory, clock=lambda: now[0])
    cache.put("k", b"x" * 100, "application/json", ttl_seconds=1)
    cache.put("k", b"x" * 200, "application/json", ttl_seconds=1)  # replaced, charged once
    assert memory.used == 200 + len("k") + len("application/json") + ENTRY_OVERHEAD
    now[0] = 5
    assert cache.get("k") is None and memory.used == 0
    cache.put("a", b"1", "application/json", ttl_seconds=10)
    cache.put("b", b"2", "application/json", ttl_seconds=10)
    cache.clear()
    assert memory.used == 0 and len(memory) == 0


async def test_router_caches_stay_within_cache_max_bytes(make_plan, router_client) -> None:
    """Many distinct cacheable answers through a router with a small budget: bytes never exceed it."""
    budget = 8 * KIB
    settings = RouterSettings(upstream_timeout=5, cache_max_bytes=budget)
    client = await router_client(make_plan(candidate=False, responseCache={"enabled": True, "maxEntries": 100_000}),
                                 settings=settings)
    router = client.app[ROUTER]
    for i in range(60):
        body = {"model": "support", "temperature": 0, "messages": [{"role": "user", "content": f"Where is parcel {i}?"}]}
        resp = await client.post("/v1/chat/completions", json=body)
        assert resp.status == 200
        assert router.cache_memory.used <= budget
    cache = router.caches["team-a/support"]
    assert 0 < len(cache) < 60 and cache.size_bytes == router.cache_memory.used
    # The plan's cache going away gives its bytes back.
    router.plan_changed("team-a/support", None)
    assert router.cache_memory.used == 0


def test_slice_labels_are_never_learnt() -> None:
    declared = SliceLabels(["billing", "shipping"])
    assert [declared.label(v) for v in ("billing", " shipping ", "BILLING", "junk", "", None)] == [
        "billing", "shipping", "other", "other", "default", "default",
    ]
    undeclared = SliceLabels()
    assert {undeclared.label(f"s{i}") for i in range(1000)} == {"default"}


async def test_a_thousand_invented_slices_add_no_label_value(make_plan, router_client) -> None:
    """1,000 distinct slice headers on a stack without declared slices: only declared values in the registry."""
    settings = RouterSettings(upstream_timeout=5, slices=("billing", "shipping"))
    client = await router_client(make_plan(candidate=False), settings=settings)
    body = {"model": "support", "messages": [{"role": "user", "content": "Where is my parcel?"}]}
    for i in range(1000):
        resp = await client.post("/v1/chat/completions", json=body, headers={"x-inferstack-slice": f"slice-{i}"})
        assert resp.status == 200
    for value in ("billing", "shipping"):
        resp = await client.post("/v1/chat/completions", json=body, headers={"x-inferstack-slice": value})
        assert resp.status == 200
    registry: CollectorRegistry = client.app[ROUTER].metrics.registry
    seen = {s.labels["slice"] for metric in registry.collect() for s in metric.samples if "slice" in s.labels}
    assert seen == {"billing", "shipping", "other"}
    requests = registry.get_sample_value(
        "inferstack_router_requests_total",
        {"namespace": "team-a", "stack": "support", "revision": "rev-a", "role": "stable", "slice": "other"},
    )
    assert requests == 1000
