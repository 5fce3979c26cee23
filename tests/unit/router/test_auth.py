"""Client authentication, played by the attacker: keys, key Secrets, the trusted proxy,
what a key sees and calls, and the tenant the caches use.

Keys: A (tenant acme of team-a, every stack), A2 (tenant globex of team-a),
ONLY_OTHER (team-a, only the stack "other"), B (tenant acme of team-b).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from inferstack.core.apikeys import (
    API_KEY_LABEL,
    KeySecretError,
    generate_key,
    key_digest,
    key_secret,
    parse_key_secret,
)
from inferstack.router.app import ROUTER
from inferstack.router.auth import Authenticator, KeyTable, bearer, parse_cidrs, peer_in
from inferstack.router.feedback import HEADER as RESPONSE_ID
from inferstack.router.settings import RouterSettings

A, A2, ONLY_OTHER, B = (f"isk_{n}-{'x' * 40}" for n in ("a", "a2", "only-other", "b"))
GRANTS = [(A, "team-a", "acme", "*"), (A2, "team-a", "globex", "*"), (ONLY_OTHER, "team-a", "acme", "other,billing"),
          (B, "team-b", "acme", "*")]
CACHED_BODY = {"model": "support", "temperature": 0, "messages": [{"role": "user", "content": "Who are you?"}]}


def data(**fields: str) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in fields.items()}


def bearer_of(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ------------------------------------------------------------ key Secrets


def test_generated_keys_are_prefixed_high_entropy_and_distinct() -> None:
    keys = {generate_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("isk_") and len(k) == 4 + 43 for k in keys)  # 32 bytes, urlsafe base64


def test_the_secret_holds_the_hash_never_the_key() -> None:
    key = generate_key()
    secret = key_secret("ci", "team-a", key, "acme", "support, billing")
    assert secret["metadata"]["labels"] == {API_KEY_LABEL: "true"}  # type: ignore[index]
    assert key not in repr(secret)
    string = secret["stringData"]
    assert string == {"sha256": key_digest(key).hex(), "tenant": "acme", "stacks": "support, billing"}  # type: ignore[comparison-overlap]
    digest, grant = parse_key_secret("team-a", data(**string))  # type: ignore[arg-type]
    assert digest == key_digest(key) and grant.stacks == frozenset({"support", "billing"})
    assert grant.qualified_tenant == "team-a/acme"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"tenant": "acme", "stacks": "*"}, "missing_field"),
        ({"sha256": "isk_the-key-itself", "tenant": "acme", "stacks": "*"}, "bad_sha256"),
        ({"sha256": "ab" * 32, "tenant": "Acme Corp", "stacks": "*"}, "bad_tenant"),
        ({"sha256": "ab" * 32, "tenant": "a" * 64, "stacks": "*"}, "bad_tenant"),
        ({"sha256": "ab" * 32, "tenant": "acme", "stacks": " , "}, "bad_stacks"),
        ({"sha256": "ab" * 32, "tenant": "acme", "stacks": "ok,../etc"}, "bad_stacks"),
    ],
)
def test_malformed_key_secrets_are_refused_without_quoting_them(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(KeySecretError) as err:
        parse_key_secret("team-a", data(**fields))
    assert err.value.reason == reason
    for value in fields.values():
        assert not value.strip(" ,") or value not in str(err.value)


def test_undecodable_secret_data_is_refused() -> None:
    with pytest.raises(KeySecretError, match="base64") as err:
        parse_key_secret("team-a", {"sha256": "!!not base64!!", "tenant": "YWNtZQ==", "stacks": "Kg=="})
    assert err.value.reason == "bad_encoding"


def test_key_table_lookup_delete_and_namespaces(make_keys) -> None:
    table = make_keys(*GRANTS)
    assert len(table) == 4
    grant = table.lookup(A)
    assert grant is not None and grant.namespace == "team-a" and grant.qualified_tenant == "team-a/acme"
    b = table.lookup(B)
    assert b is not None and b.qualified_tenant == "team-b/acme" != grant.qualified_tenant  # same name, two tenants
    assert table.lookup(A + "x") is None and table.lookup("") is None
    table.delete("team-a", "key-0")
    assert table.lookup(A) is None and len(table) == 3


def test_key_table_is_bounded_per_namespace_keeping_the_first_by_name() -> None:
    table = KeyTable(max_per_namespace=2)
    keys = [f"isk_k{i}" for i in range(4)]
    table.replace_all([("ns", f"k{i}", data(sha256=key_digest(k).hex(), tenant="t", stacks="*")) for i, k in reversed(list(enumerate(keys)))])
    assert [table.lookup(k) is not None for k in keys] == [True, True, False, False]
    table.upsert("other", "k", data(sha256=key_digest("isk_other").hex(), tenant="t", stacks="*"))
    assert table.lookup("isk_other") is not None  # the bound is per namespace
    assert table.metrics.key_errors.labels("over_limit")._value.get() == 2


def test_a_list_of_one_namespace_replaces_that_namespaces_keys_only(make_keys) -> None:
    """--api-key-namespaces: one key source per namespace, each re-list scoped to its own namespace."""
    table = make_keys(*GRANTS)
    a3 = "isk_a3-" + "x" * 40
    table.replace_all([("team-a", "k3", data(sha256=key_digest(a3).hex(), tenant="initech", stacks="*"))], "team-a")
    assert [table.lookup(k) is not None for k in (A, A2, ONLY_OTHER, B, a3)] == [False, False, False, True, True]
    assert len(table) == 2 and table.metrics.keys._value.get() == 2
    # A hash that two namespaces held (so granting nothing) grants again once one namespace's list drops it.
    table.replace_all([("team-a", "copy", data(sha256=key_digest(B).hex(), tenant="mallory", stacks="*"))], "team-a")
    assert table.lookup(B) is None and table.lookup(a3) is None
    table.replace_all([], "team-a")
    grant = table.lookup(B)
    assert grant is not None and grant.qualified_tenant == "team-b/acme"
    table.replace_all([])  # no namespace: every namespace's list
    assert len(table) == 0


def test_a_hash_in_two_secrets_grants_nothing(make_keys, caplog: pytest.LogCaptureFixture) -> None:
    """A namespace owner who copies another namespace's hash gains nothing and the key fails closed."""
    table = make_keys((A, "team-a", "acme", "*"))
    table.upsert("team-b", "stolen", data(sha256=key_digest(A).hex(), tenant="mallory", stacks="*"))
    assert table.lookup(A) is None
    table.delete("team-b", "stolen")
    grant = table.lookup(A)
    assert grant is not None and grant.namespace == "team-a"
    assert key_digest(A).hex() not in caplog.text


def test_a_malformed_secret_is_logged_once_without_contents_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    table = KeyTable()
    raw_key = "isk_pasted-the-key-instead-of-its-hash"
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            table.upsert("team-a", "oops", data(sha256=raw_key, tenant="acme", stacks="*"))
    assert [r.getMessage() for r in caplog.records if "team-a/oops" in r.getMessage()] == [
        "ignoring API-key Secret team-a/oops: `sha256` must be 64 hex digits: the SHA-256 of the key, never the key"
    ]
    assert raw_key not in caplog.text
    assert table.metrics.key_errors.labels("bad_sha256")._value.get() == 3
    assert table.lookup(raw_key) is None


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer isk_x", "isk_x"), ("bearer   isk_x ", "isk_x"), ("Basic isk_x", None), ("Bearer", None), ("Bearer ", None),
     (None, None), ("isk_x", None), ("Bearer " + "x" * 513, None)],
)
def test_bearer_parsing(header: str | None, token: str | None) -> None:
    assert bearer(header) == token


def test_trusted_proxy_peer_check() -> None:
    nets = parse_cidrs("10.0.0.0/8, fd00::/8")
    assert peer_in("10.1.2.3", nets) and peer_in("::ffff:10.1.2.3", nets) and peer_in("fd00::1", nets)
    assert not peer_in("11.0.0.1", nets) and not peer_in("127.0.0.1", nets) and not peer_in("fe80::1", nets)
    assert not peer_in(None, nets) and not peer_in("", nets) and not peer_in("not-an-ip", nets)
    with pytest.raises(ValueError):
        parse_cidrs(" , ")
    with pytest.raises(ValueError):
        parse_cidrs("10.0.0.0/33")
    assert parse_cidrs("10.0.0.1/8") == (ipaddress.ip_network("10.0.0.0/8"),)  # host bits are forgiven


def test_trusted_proxy_must_be_configured_and_none_warns(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="trusted-proxy-cidrs"):
        Authenticator("trusted-proxy")
    with pytest.raises(ValueError, match="trusted-proxy"):
        Authenticator("trusted-proxy", trusted_cidrs=parse_cidrs("10.0.0.0/8"))
    with pytest.raises(ValueError, match="unknown auth mode"):
        Authenticator("open")  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING):
        Authenticator("none")
    assert "development only" in caplog.text


# ------------------------------------------------------- the running router


@pytest.fixture
def keyed(make_keys) -> Authenticator:  # type: ignore[no-untyped-def]
    return Authenticator("api-keys", make_keys(*GRANTS))


def expect_401(resp_status: int, body: dict[str, Any], headers: Any) -> None:
    assert resp_status == 401
    assert body == {"error": {"message": body["error"]["message"], "type": "invalid_request_error", "param": None,
                              "code": "invalid_api_key"}}  # fmt: skip
    assert headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("auth", [None, "", "Bearer", "Bearer isk_guess", "Basic " + A, A, "Bearer " + A + " "])
async def test_no_or_unknown_key_is_401_on_every_endpoint(keyed, make_plan, router_client, auth: str | None, caplog) -> None:
    client = await router_client(make_plan(), auth=keyed, headers={} if auth is None else {"Authorization": auth})
    if auth == "Bearer " + A + " ":  # surrounding blanks are forgiven: the key itself matches
        assert (await client.get("/v1/models")).status == 200
        return
    for method, path, body in [("POST", "/v1/chat/completions", CACHED_BODY), ("POST", "/v1/completions", {"model": "support"}),
                               ("GET", "/v1/models", None), ("POST", "/v1/feedback", {"response_id": "x", "value": 1}),
                               ("GET", "/v1/nothing-here", None)]:  # fmt: skip
        resp = await client.request(method, path, json=body)
        expect_401(resp.status, await resp.json(), resp.headers)
    if auth:
        assert auth.split()[-1] not in caplog.text


async def test_a_key_of_another_namespace_cannot_tell_whether_a_stack_exists(keyed, make_plan, router_client) -> None:
    client = await router_client(make_plan(), make_plan(namespace="team-b", stack="shop"), auth=keyed)

    async def ask(model: str, key: str) -> tuple[int, dict[str, Any]]:
        resp = await client.post("/v1/chat/completions", json={**CACHED_BODY, "model": model}, headers=bearer_of(key))
        return resp.status, await resp.json()

    exists, missing = await ask("team-a/support", B), await ask("team-a/nope", B)
    assert exists[0] == missing[0] == 404
    assert exists[1]["error"]["code"] == missing[1]["error"]["code"] == "model_not_found"
    assert exists[1]["error"]["message"].replace("support", "nope") == missing[1]["error"]["message"]
    assert (await ask("support", B))[0] == 404  # the bare name means team-b/support, which does not exist
    assert (await ask("shop", B))[0] == 200 and (await ask("team-b/shop", B))[0] == 200
    assert (await ask("shop", A))[0] == 404


async def test_a_name_in_two_namespaces_is_not_ambiguous_to_a_key(keyed, make_plan, router_client) -> None:
    """Without keys "support" in two namespaces is a 400 naming both; a key sees its own only."""
    client = await router_client(make_plan(), make_plan(namespace="team-b"), auth=keyed)
    resp = await client.post("/v1/chat/completions", json=CACHED_BODY, headers=bearer_of(B))
    assert resp.status == 200 and resp.headers["x-inferstack-stack"] == "team-b/support"
    assert "team-a" not in await resp.text()


async def test_a_stack_the_key_does_not_list_is_403(keyed, make_plan, router_client) -> None:
    client = await router_client(make_plan(), make_plan(stack="other"), auth=keyed)
    resp = await client.post("/v1/chat/completions", json=CACHED_BODY, headers=bearer_of(ONLY_OTHER))
    assert resp.status == 403
    assert await resp.json() == {"error": {"message": "This API key may not call the model `support`.",
                                           "type": "invalid_request_error", "param": None, "code": "model_not_allowed"}}  # fmt: skip
    resp = await client.post("/v1/chat/completions", json={**CACHED_BODY, "model": "other"}, headers=bearer_of(ONLY_OTHER))
    assert resp.status == 200
    assert client.app[ROUTER].auth.metrics.refused.labels("model_not_allowed")._value.get() == 1


async def test_models_lists_only_what_the_key_may_call(keyed, make_plan, router_client) -> None:
    plans = [make_plan(), make_plan(stack="other"), make_plan(namespace="team-b"), make_plan(namespace="team-c", stack="x")]
    client = await router_client(*plans, auth=keyed)

    async def models(key: str) -> list[tuple[str, str]]:
        resp = await client.get("/v1/models", headers=bearer_of(key))
        assert resp.status == 200
        return [(m["id"], m["owned_by"]) for m in (await resp.json())["data"]]

    assert await models(A) == [("other", "team-a"), ("support", "team-a")]
    assert await models(ONLY_OTHER) == [("other", "team-a")]
    assert await models(B) == [("support", "team-b")]  # a bare name: team-a's "support" is not counted


async def test_cross_tenant_cache_probe_misses(keyed, make_plan, router_client) -> None:
    """A second tenant asking acme's prompt, claiming to be acme by header, never gets acme's answer."""
    client = await router_client(make_plan(candidate=False, responseCache={"enabled": True}), auth=keyed)

    async def ask(key: str, **headers: str) -> str:
        resp = await client.post("/v1/chat/completions", json=CACHED_BODY, headers={**bearer_of(key), **headers})
        assert resp.status == 200
        return resp.headers["x-inferstack-cache"]

    assert [await ask(A), await ask(A)] == ["miss", "hit"]
    assert await ask(A2, **{"x-tenant-id": "acme"}) == "miss"
    assert await ask(A2, **{"x-tenant-id": "team-a/acme"}) == "hit"  # its own entry, from the line above
    assert await ask(A, **{"x-tenant-id": "globex"}) == "hit"  # the header selects nothing


@pytest.fixture
async def recording_backend() -> AsyncIterator[tuple[TestServer, list[dict[str, Any]]]]:
    """A model server that records what the router sends it."""
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    async with TestServer(app) as server:
        yield server, seen


async def test_cache_salt_is_the_authenticated_tenants(keyed, make_plan, router_client, recording_backend) -> None:
    server, seen = recording_backend
    plan = make_plan(candidate=False, stable_extra={"url": str(server.make_url(""))})
    client = await router_client(plan, auth=keyed)
    for key, claimed in [(A, "x"), (A, "y"), (A2, "acme"), (B, "acme")]:
        model = "team-b/support" if key == B else "support"
        if key == B:
            client.app[ROUTER].store.apply(plan.model_copy(update={"namespace": "team-b"}))
        resp = await client.post("/v1/chat/completions", json={**CACHED_BODY, "model": model},
                                 headers={**bearer_of(key), "x-tenant-id": claimed})  # fmt: skip
        assert resp.status == 200
    salts = [body["cache_salt"] for body in seen]
    assert salts[0] == salts[1]  # one tenant, whatever it claims
    assert len(set(salts[1:])) == 3  # acme of team-a, globex of team-a, acme of team-b


async def test_no_tenant_gets_no_cache_and_a_fresh_salt(make_plan, router_client, recording_backend) -> None:
    server, seen = recording_backend
    plan = make_plan(candidate=False, responseCache={"enabled": True}, stable_extra={"url": str(server.make_url(""))})
    client = await router_client(plan, auth=Authenticator("none"), headers={})
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", json=CACHED_BODY, headers={"x-tenant-id": "acme"})
        assert resp.status == 200 and resp.headers["x-inferstack-cache"] == "miss"
    assert len(seen) == 3 and len({body["cache_salt"] for body in seen}) == 3
    assert len(client.app[ROUTER].caches["team-a/support"]) == 0  # nothing written for anyone either


def proxied(cidrs: str) -> Authenticator:
    return Authenticator("trusted-proxy", trusted_cidrs=parse_cidrs(cidrs), tenant_header="x-forwarded-user")


async def test_trusted_proxy_header_counts_only_from_the_proxy(make_plan, router_client) -> None:
    plan = make_plan(candidate=False, responseCache={"enabled": True})
    # The test client connects from 127.0.0.1: inside 127.0.0.0/8, outside 10.0.0.0/8.
    trusted = await router_client(plan, auth=proxied("127.0.0.0/8"), headers={})
    stranger = await router_client(plan, auth=proxied("10.0.0.0/8"), headers={})

    async def ask(client, **headers: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
        resp = await client.post("/v1/chat/completions", json=CACHED_BODY, headers=headers)
        return resp.status, resp.headers.get("x-inferstack-cache", "")

    assert await ask(trusted, **{"x-forwarded-user": "alice"}) == (200, "miss")
    assert await ask(trusted, **{"x-forwarded-user": "alice"}) == (200, "hit")
    assert await ask(trusted, **{"x-forwarded-user": "bob", "x-tenant-id": "alice"}) == (200, "miss")
    assert (await ask(trusted))[0] == 401  # the proxy did not say who
    assert (await ask(trusted, **{"x-forwarded-user": "u" * 300}))[0] == 401
    assert (await ask(trusted, **{"Authorization": "Bearer " + A}))[0] == 401  # keys mean nothing here
    resp = await stranger.post("/v1/chat/completions", json=CACHED_BODY, headers={"x-forwarded-user": "alice"})
    expect_401(resp.status, await resp.json(), resp.headers)


async def test_feedback_only_on_stacks_the_key_may_call(keyed, make_plan, router_client) -> None:
    evaluation = {"slices": ["billing"], "sliceHeader": "x-inferstack-slice",
                  "evaluators": [{"name": "thumbs", "feedback": {"maxAge": "1h"}}]}
    client = await router_client(
        make_plan(candidate=False, evaluation=evaluation), make_plan(candidate=False, stack="other", evaluation=evaluation),
        auth=keyed, settings=RouterSettings(upstream_timeout=5, feedback_keys=(b"k" * 32,)),
    )  # fmt: skip
    resp = await client.post("/v1/chat/completions", json=CACHED_BODY, headers=bearer_of(A))
    token = resp.headers[RESPONSE_ID]

    async def feedback(headers: dict[str, str]) -> tuple[int, str]:
        fb = await client.post("/v1/feedback", json={"response_id": token, "value": "down"}, headers=headers)
        return fb.status, (await fb.json())["error"]["code"] if fb.status != 200 else "recorded"

    assert await feedback({"Authorization": ""}) == (401, "invalid_api_key")
    assert await feedback(bearer_of(B)) == (404, "model_not_found")  # another namespace: as if gone
    assert await feedback(bearer_of(ONLY_OTHER)) == (403, "model_not_allowed")
    assert await feedback(bearer_of(A2)) == (200, "recorded")  # refusals did not use the id up
