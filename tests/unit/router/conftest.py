"""Router unit-test fixtures: stand-in backends and a router in the same event loop."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from inferstack.core.apikeys import key_digest
from inferstack.core.trafficplan import TrafficPlan
from inferstack.router.app import ROUTER, RouterTestServer, build_admin_app, build_app
from inferstack.router.auth import Authenticator, KeyTable
from inferstack.router.plansource import PlanStore
from inferstack.router.settings import RouterSettings
from inferstack.router.tracing import Tracing
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




# The key every router_client request carries: tenant "tests" of team-a, every stack of it.
TEST_KEY = "isk_unit-test-key-for-team-a"


def key_table(*grants: tuple[str, str, str, str]) -> KeyTable:
    """A KeyTable of (key, namespace, tenant, stacks) grants, as key Secrets would hold them."""
    table = KeyTable()
    table.replace_all(
        (ns, f"key-{i}", {k: base64.b64encode(v.encode()).decode() for k, v in
                          {"sha256": key_digest(key).hex(), "tenant": tenant, "stacks": stacks}.items()})
        for i, (key, ns, tenant, stacks) in enumerate(grants)
    )  # fmt: skip
    return table


@pytest.fixture
def make_keys() -> Callable[..., KeyTable]:
    return key_table


@pytest.fixture
async def router_client() -> AsyncIterator[Callable[..., Any]]:
    """``await router_client(plan, settings=..., auth=...)`` -> a TestClient for a router serving ``plan``.

    Its requests carry ``TEST_KEY`` (``headers=`` replaces that); ``auth`` defaults to
    API keys with that one key. ``client.admin`` is a client of the same router's
    metrics/health port.
    """
    clients: list[TestClient] = []

    async def start(
        *plans: TrafficPlan, settings: RouterSettings | None = None, auth: Authenticator | None = None,
        headers: dict[str, str] | None = None, tracer: Tracing | None = None,
    ) -> TestClient:
        store = PlanStore()
        for plan in plans:
            store.apply(plan)
        auth = auth or Authenticator("api-keys", key_table((TEST_KEY, "team-a", "tests", "*")))
        app = build_app(store, settings or RouterSettings(upstream_timeout=5), auth=auth, tracer=tracer)
        client = TestClient(RouterTestServer(app), headers={"Authorization": f"Bearer {TEST_KEY}"} if headers is None else headers)
        await client.start_server()
        admin = TestClient(TestServer(build_admin_app(app[ROUTER])))
        await admin.start_server()
        client.admin = admin  # type: ignore[attr-defined]
        clients.extend((client, admin))
        return client

    yield start
    for client in clients:
        await client.close()
