"""KubeKeySource against the fake API server of test_kubesource: key Secrets of every namespace,
or of listed namespaces only (``--api-key-namespaces``: one source, one watch, per namespace)."""

from __future__ import annotations

import base64
import logging

import pytest
from kubernetes import client
from test_kubesource import api_for, fake, until  # noqa: F401  (fake: the fixture)

from inferstack.core.apikeys import generate_key, key_digest
from inferstack.router.auth import Authenticator, KeyTable
from inferstack.router.keysource import KubeKeySource
from inferstack.router.main import key_namespaces, key_sources_from, main, parse_args


def key_data(key: str, tenant: str = "tests") -> dict[str, str]:
    fields = {"sha256": key_digest(key).hex(), "tenant": tenant, "stacks": "*"}
    return {k: base64.b64encode(v.encode()).decode() for k, v in fields.items()}


def keyed(url: str, *namespaces: str | None) -> Authenticator:
    table, make = KeyTable(), api_for(url)
    sources = [KubeKeySource(table, namespace=ns, api_factory=lambda: client.CoreV1Api(make()), watch_timeout=2,
                             backoff=(0.05, 0.2)) for ns in namespaces]  # fmt: skip
    return Authenticator("api-keys", table, sources=sources)


def tenant(auth: Authenticator, key: str) -> str | None:
    grant = auth.keys.lookup(key)
    return grant.qualified_tenant if grant else None


async def test_listed_namespaces_are_watched_one_watch_each_and_no_other(fake) -> None:  # noqa: F811
    kube, url = fake
    keys = {ns: generate_key() for ns in ("team-a", "team-b", "team-c")}
    for ns, key in keys.items():
        await kube.key_secrets.put(ns, "client", data=key_data(key))
    auth = keyed(url, "team-a", "team-b")
    await auth.start()
    await until(lambda: auth.ready)
    # Both lists reached the table: the second did not replace the keys of the first.
    assert tenant(auth, keys["team-a"]) == "team-a/tests" and tenant(auth, keys["team-b"]) == "team-b/tests"
    assert tenant(auth, keys["team-c"]) is None
    # A key made, and one revoked, after the lists: each through its namespace's watch.
    new, elsewhere = generate_key(), generate_key()
    await kube.key_secrets.put("team-b", "new", data=key_data(new))
    await kube.key_secrets.put("team-c", "new", data=key_data(elsewhere))
    await kube.key_secrets.delete("team-a", "client")
    await until(lambda: tenant(auth, new) == "team-b/tests" and tenant(auth, keys["team-a"]) is None)
    assert tenant(auth, keys["team-b"]) == "team-b/tests" and tenant(auth, elsewhere) is None
    # Namespaced lists and watches of the listed namespaces only: what a Role in each of them allows.
    assert {ns for _, ns in kube.key_secrets.requests} == {"team-a", "team-b"}
    assert {ns for watch, ns in kube.key_secrets.requests if watch} == {"team-a", "team-b"}
    await auth.stop()


async def test_ready_once_every_namespace_is_listed_and_a_relist_keeps_the_other_namespaces(fake, caplog) -> None:  # noqa: F811
    kube, url = fake
    a, b, gone = generate_key(), generate_key(), generate_key()
    await kube.key_secrets.put("team-a", "client", data=key_data(a))
    await kube.key_secrets.put("team-a", "gone", data=key_data(gone))
    await kube.key_secrets.put("team-b", "client", data=key_data(b))
    await kube.set_down(True)
    auth = keyed(url, "team-a", "team-b")
    await auth.start()
    await until(lambda: "in namespace team-a failed (HTTP 503)" in caplog.text)
    assert not auth.ready and len(auth.keys) == 0  # good keys would get 401: /readyz says 503
    await kube.set_down(False)
    await until(lambda: auth.ready)
    assert {tenant(auth, k) for k in (a, gone, b)} == {"team-a/tests", "team-b/tests"}
    # Revoked while the watches are down and the history compacted: each source re-lists (410)
    # its own namespace; the key is gone and the other namespace's keys never left.
    with caplog.at_level(logging.INFO, logger="inferstack.router.keysource"):
        await kube.set_down(True)
        await kube.key_secrets.delete("team-a", "gone")
        await kube.key_secrets.compact()
        await kube.set_down(False)
        await until(lambda: tenant(auth, gone) is None and kube.key_secrets.lists >= 4)
    assert "API-key watch in namespace team-a expired (410), re-listing" in caplog.text
    assert tenant(auth, a) == "team-a/tests" and tenant(auth, b) == "team-b/tests"
    await auth.stop()


async def test_without_namespaces_key_secrets_are_watched_in_every_namespace(fake) -> None:  # noqa: F811
    kube, url = fake
    keys = [generate_key(), generate_key()]
    await kube.key_secrets.put("team-a", "client", data=key_data(keys[0]))
    await kube.key_secrets.put("team-z", "client", data=key_data(keys[1]))
    auth = keyed(url, None)
    await auth.start()
    await until(lambda: auth.ready)
    assert [tenant(auth, k) for k in keys] == ["team-a/tests", "team-z/tests"]
    assert {ns for _, ns in kube.key_secrets.requests} == {None}  # /api/v1/secrets: the ClusterRole's rule
    await auth.stop()


def test_api_key_namespaces_flag() -> None:
    assert key_namespaces(parse_args([])) == [None]
    assert key_namespaces(parse_args(["--namespace", "team-a"])) == ["team-a"]
    assert key_namespaces(parse_args(["--api-key-namespaces", "team-a, team-b,,team-a"])) == ["team-a", "team-b"]
    auth = Authenticator("api-keys")
    sources = key_sources_from(parse_args(["--api-key-namespaces", "team-a,team-b"]), auth)
    assert [s.namespace for s in sources] == ["team-a", "team-b"]
    assert all(s.table is auth.keys for s in sources)
    assert key_sources_from(parse_args(["--auth", "none", "--api-key-namespaces", "team-a"]), Authenticator("none")) == []
    # --namespace already narrows the key Secrets, to the one namespace whose stacks are served.
    with pytest.raises(SystemExit, match="--api-key-namespaces and --namespace"):
        main(["--namespace", "team-a", "--api-key-namespaces", "team-b"])
