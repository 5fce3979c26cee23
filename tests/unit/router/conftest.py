"""Router unit-test fixtures: stand-in backends and a router in the same event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from inferstack.core.trafficplan import TrafficPlan
from inferstack.router.app import build_app
from inferstack.router.plansource import PlanStore
from inferstack.router.settings import RouterSettings
from inferstack.standin.app import StandinSettings
from inferstack.standin.app import build_app as build_standin

PlanFactory = Callable[..., TrafficPlan]


@pytest.fixture
async def stable_server() -> AsyncIterator[TestServer]:
    async with TestServer(build_standin(StandinSettings(served_model="model-a"))) as server:
        yield server


@pytest.fixture
async def candidate_server() -> AsyncIterator[TestServer]:
    async with TestServer(build_standin(StandinSettings(served_model="model-b"))) as server:
        yield server


@pytest.fixture
def make_plan(stable_server: TestServer, candidate_server: TestServer) -> PlanFactory:
    def make(candidate: bool = True, stable_extra: dict[str, Any] | None = None,
             candidate_extra: dict[str, Any] | None = None, **fields: Any) -> TrafficPlan:
        data: dict[str, Any] = {
            "stack": "support",
            "namespace": "team-a",
            "serial": 1,
            "stable": {
                "revision": "rev-a",
                "url": str(stable_server.make_url("")),
                "servedModel": "model-a",
                "cacheNamespace": "team-a.support.rev-a",
                "promptHash": "hash-a",
                **(stable_extra or {}),
            },
        }
        if candidate:
            data["candidate"] = {
                "revision": "rev-b",
                "url": str(candidate_server.make_url("")),
                "servedModel": "model-b",
                "cacheNamespace": "team-a.support.rev-b",
                "promptHash": "hash-b",
                **(candidate_extra or {}),
            }
        data.update(fields)
        return TrafficPlan.model_validate(data)

    return make




@pytest.fixture
async def router_client() -> AsyncIterator[Callable[..., Any]]:
    """``await router_client(plan, settings=...)`` -> a TestClient for a router serving ``plan``."""
    clients: list[TestClient] = []

    async def start(*plans: TrafficPlan, settings: RouterSettings | None = None) -> TestClient:
        store = PlanStore()
        for plan in plans:
            store.apply(plan)
        client = TestClient(TestServer(build_app(store, settings or RouterSettings(upstream_timeout=5))))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()

