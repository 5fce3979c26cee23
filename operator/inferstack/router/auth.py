"""Who is calling: client authentication, the tenant it stands for, and what it may call.

Three modes (``--auth``):

* ``api-keys`` (the default): ``Authorization: Bearer <key>``; the key's
  SHA-256 must be in the :class:`KeyTable`, which
  :mod:`inferstack.router.keysource` fills from Secrets labelled
  ``inferstack.dev/api-key``. A key calls stacks of its Secret's namespace
  only (all of them, or those its Secret lists) and its tenant is
  ``<namespace>/<tenant>``.
* ``trusted-proxy``: an authenticating proxy in front of the router names the
  user in a header (``--trusted-proxy-tenant-header``); the header is believed
  only when the TCP peer is inside ``--trusted-proxy-cidrs``, and anyone else
  gets 401. The proxy decides who may call what: its users may call every stack.
* ``none``: local development only. Every request may call every stack and
  has **no tenant**: no response-cache reads or writes, a random ``cache_salt``.

Refusals are OpenAI-shaped: 401 ``invalid_api_key`` with ``WWW-Authenticate:
Bearer``; 403 ``model_not_allowed`` for a stack of the key's own namespace that
the key does not list; 404 ``model_not_found`` for a stack that does not exist
**or lives in another namespace** (the same answer, so a key learns nothing
about other namespaces). No key, hash or header value is ever logged or echoed.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from inferstack.core.apikeys import Grant, KeySecretError, key_digest, parse_key_secret
from inferstack.core.trafficplan import TrafficPlan
from inferstack.router.errors import error_response
from inferstack.router.plansource import PlanStore, UnknownModel
from inferstack.router.server import Request, Response
from inferstack.router.settings import RouterSettings

log = logging.getLogger(__name__)

AuthMode = Literal["api-keys", "trusted-proxy", "none"]
AUTH_MODES: tuple[AuthMode, ...] = ("api-keys", "trusted-proxy", "none")
MAX_KEY_CHARS = 512  # longer bearer tokens are refused before hashing
MAX_USER_CHARS = 256  # a trusted proxy's user header
DEFAULT_MAX_KEYS_PER_NAMESPACE = 1000


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. ``tenant`` None: no tenant (``--auth none``); ``grant`` None: every stack."""

    tenant: str | None
    grant: Grant | None = None
    # A trusted proxy's user who opted out of content recording (--trusted-proxy-record-content-header).
    content_opt_out: bool = False

    def may_call(self, namespace: str, stack: str) -> bool:
        return self.grant is None or self.grant.may_call(namespace, stack)

    @property
    def record_content(self) -> bool:
        """False when the tenant opted out of content recording: a key Secret's ``recordContent: "false"``,
        or the trusted proxy's record-content header."""
        return not self.content_opt_out and (self.grant is None or self.grant.record_content)


ANONYMOUS = Identity(tenant=None)


class KeySource(Protocol):
    """Fills a :class:`KeyTable` while the router runs (router/keysource.py)."""

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ModelNotAllowed(LookupError):
    """The stack exists in the key's namespace, but the key does not list it."""


# ------------------------------------------------------------------- errors


def unauthorized(message: str = "Incorrect or missing API key: send `Authorization: Bearer <key>`.") -> Response:
    return error_response(401, message, "invalid_api_key", {"WWW-Authenticate": "Bearer"})


def forbidden(model: str) -> Response:
    return error_response(403, f"This API key may not call the model `{model[:128]}`.", "model_not_allowed")


# --------------------------------------------------------------------- keys


class AuthMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "inferstack_router_auth_refused", "Requests refused by authentication or authorization, by code.",
            ["code"], registry=registry,
        )  # fmt: skip
        self.key_errors = Counter(
            "inferstack_router_api_key_errors", "API-key Secrets ignored (malformed, duplicate hash, over the limit), by reason.",
            ["reason"], registry=registry,
        )  # fmt: skip
        self.keys = Gauge("inferstack_router_api_keys", "API keys in force.", registry=registry)


class KeyTable:
    """SHA-256 digest of a key -> its grant, from key Secrets. Only touched from the event loop's thread.

    Bounded: at most ``max_per_namespace`` keys per namespace (a list keeps the
    first by Secret name; a later Secret over the limit is ignored). A digest
    held by two Secrets grants nothing (fail closed: neither grant is "the"
    grant of that key). Ignored Secrets are counted, and logged once each by
    name and reason, never with their values.
    """

    def __init__(self, metrics: AuthMetrics | None = None, max_per_namespace: int = DEFAULT_MAX_KEYS_PER_NAMESPACE) -> None:
        self.metrics = metrics or AuthMetrics(CollectorRegistry())
        self.max_per_namespace = max_per_namespace
        self._sources: dict[str, tuple[bytes, Grant]] = {}  # "namespace/name" -> (digest, grant)
        self._per_namespace: dict[str, int] = {}
        self._by_digest: dict[bytes, list[str]] = {}
        self._logged: dict[str, str] = {}  # source -> reason already logged

    def __len__(self) -> int:
        return sum(1 for sources in self._by_digest.values() if len(sources) == 1)

    def lookup(self, key: str) -> Grant | None:
        """The grant of a presented key, or None.

        The lookup is a dict probe by the key's SHA-256, not a comparison of the
        secret: what its timing could leak is where the *presented* key's digest
        falls, and learning bits of a SHA-256 does not help find a key of 256
        random bits (preimage resistance). So no constant-time compare is needed.
        """
        sources = self._by_digest.get(key_digest(key))
        if sources is None or len(sources) != 1:
            return None
        return self._sources[sources[0]][1]

    def upsert(self, namespace: str, name: str, data: dict[str, str] | None) -> None:
        source = f"{namespace}/{name}"
        try:
            digest, grant = parse_key_secret(namespace, data)
        except KeySecretError as exc:
            self._remove(source)
            self._ignore(source, exc.reason, str(exc))
            return
        if source not in self._sources and self._per_namespace.get(namespace, 0) >= self.max_per_namespace:
            self._ignore(source, "over_limit", f"namespace {namespace} already has {self.max_per_namespace} keys")
            return
        self._remove(source)
        self._sources[source] = (digest, grant)
        self._per_namespace[namespace] = self._per_namespace.get(namespace, 0) + 1
        holders = self._by_digest.setdefault(digest, [])
        holders.append(source)
        if len(holders) > 1:
            for other in holders:
                self._ignore(other, "duplicate", "another key Secret holds the same sha256; the key grants nothing")
        else:
            self._logged.pop(source, None)
        self._count()

    def delete(self, namespace: str, name: str) -> None:
        source = f"{namespace}/{name}"
        self._remove(source)
        self._logged.pop(source, None)
        self._count()

    def replace_all(self, items: Iterable[tuple[str, str, dict[str, str] | None]], namespace: str | None = None) -> None:
        """A fresh list: forget every Secret and take these, in name order (the limit keeps the first).

        With ``namespace``, the list of that namespace only: the Secrets of other
        namespaces stay (a key source per namespace, ``--api-key-namespaces``).
        """
        if namespace is None:
            self._sources.clear()
            self._per_namespace.clear()
            self._by_digest.clear()
        else:
            for source in [s for s, (_, grant) in self._sources.items() if grant.namespace == namespace]:
                self._remove(source)
        for ns, name, data in sorted(items, key=lambda i: (i[0], i[1])):
            self.upsert(ns, name, data)
        self._count()

    def _remove(self, source: str) -> None:
        old = self._sources.pop(source, None)
        if old is None:
            return
        digest, grant = old
        self._per_namespace[grant.namespace] -= 1
        if not self._per_namespace[grant.namespace]:
            del self._per_namespace[grant.namespace]
        holders = self._by_digest[digest]
        holders.remove(source)
        if not holders:
            del self._by_digest[digest]

    def _ignore(self, source: str, reason: str, message: str) -> None:
        self.metrics.key_errors.labels(reason).inc()
        if self._logged.get(source) != reason and len(self._logged) < 10_000:
            self._logged[source] = reason
            log.error("ignoring API-key Secret %s: %s", source, message)

    def _count(self) -> None:
        self.metrics.keys.set(len(self))


# ------------------------------------------------------------ authenticator


def parse_cidrs(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``--trusted-proxy-cidrs``: comma-separated networks; at least one, each valid."""
    nets = tuple(ipaddress.ip_network(c.strip(), strict=False) for c in text.split(",") if c.strip())
    if not nets:
        raise ValueError("--trusted-proxy-cidrs needs at least one network")
    return nets


def peer_in(peer: str | None, nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether a TCP peer address is inside one of ``nets`` (IPv4-mapped IPv6 counts as IPv4)."""
    if not peer:
        return False
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in nets)


def bearer(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive), or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_KEY_CHARS:
        return None
    return token


class Authenticator:
    """Turns a request into an :class:`Identity`, or refuses it."""

    def __init__(
        self,
        mode: AuthMode = "api-keys",
        keys: KeyTable | None = None,
        trusted_cidrs: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        tenant_header: str = "",
        metrics: AuthMetrics | None = None,
        sources: Iterable[KeySource] = (),
        content_header: str = "",
    ) -> None:
        if mode not in AUTH_MODES:
            raise ValueError(f"unknown auth mode {mode!r}; one of {', '.join(AUTH_MODES)}")
        self.mode = mode
        self.metrics = metrics or (keys.metrics if keys is not None else AuthMetrics(CollectorRegistry()))
        self.keys = keys if keys is not None else KeyTable(self.metrics)
        self.trusted_cidrs = tuple(trusted_cidrs)
        self.tenant_header = tenant_header
        # trusted-proxy: a header in which the proxy says whether its user allows content recording.
        self.content_header = content_header
        self.sources = list(sources)  # fill ``keys`` (router/keysource.py)
        if mode == "trusted-proxy" and not (self.trusted_cidrs and tenant_header):
            raise ValueError("--auth trusted-proxy needs --trusted-proxy-cidrs and --trusted-proxy-tenant-header")
        if mode == "none":
            log.warning(
                "--auth none: every client may call every stack, with no tenant (no response cache, "
                "a random cache_salt per request). For local development only."
            )

    @classmethod
    def from_settings(cls, settings: RouterSettings, registry: CollectorRegistry) -> Authenticator:
        metrics = AuthMetrics(registry)
        return cls(
            settings.auth,  # type: ignore[arg-type]  # checked in __init__
            KeyTable(metrics, settings.max_keys_per_namespace),
            parse_cidrs(",".join(settings.trusted_proxy_cidrs)) if settings.trusted_proxy_cidrs else (),
            settings.trusted_proxy_tenant_header,
            metrics,
            content_header=settings.trusted_proxy_record_content_header,
        )

    async def start(self) -> None:
        for source in self.sources:
            await source.start()

    async def stop(self) -> None:
        for source in self.sources:
            await source.stop()

    @property
    def ready(self) -> bool:
        """Keys are known (every source has listed once): before that, good keys would get 401."""
        return all(source.ready for source in self.sources)

    def authenticate(self, request: Request) -> Identity | None:
        if self.mode == "api-keys":
            token = bearer(request.headers.get("Authorization"))
            grant = self.keys.lookup(token) if token is not None else None
            return Identity(grant.qualified_tenant, grant) if grant is not None else None
        if self.mode == "trusted-proxy":
            peer = request.transport.get_extra_info("peername") if request.transport is not None else None
            if not peer_in(peer[0] if isinstance(peer, tuple) and peer else None, self.trusted_cidrs):
                return None
            user = request.headers.get(self.tenant_header, "").strip()
            if not user or len(user) > MAX_USER_CHARS or not user.isprintable():
                return None
            # As a key Secret's recordContent: absent allows, anything but a clear "true" opts out.
            said = request.headers.get(self.content_header) if self.content_header else None
            opted_out = said is not None and said.strip().lower() != "true"
            # "proxy:" cannot start a key tenant (namespace/tenant has no colon): the two never meet.
            return Identity(f"proxy:{user}", content_opt_out=opted_out)
        return ANONYMOUS

    def admit(self, request: Request) -> Response | None:
        """Authenticate ``request`` before its body is read: None and ``request.identity`` set, or the 401."""
        identity = self.authenticate(request)
        if identity is None:
            self.metrics.refused.labels("invalid_api_key").inc()
            if self.mode == "trusted-proxy":
                return unauthorized("The request did not come through the authenticating proxy.")
            return unauthorized()
        request.identity = identity
        return None

    def refused(self, code: str) -> None:
        self.metrics.refused.labels(code).inc()


def identity_of(request: Request) -> Identity:
    """The identity :meth:`Authenticator.admit` put on the request (a request that reached a handler has one)."""
    identity = request.identity
    return identity if isinstance(identity, Identity) else ANONYMOUS


def authorize(identity: Identity, namespace: str, stack: str, model: str = "") -> None:
    """Raise unless ``identity`` may call ``namespace/stack``: :class:`UnknownModel` for another
    namespace (as if it did not exist), :class:`ModelNotAllowed` for an unlisted stack of its own."""
    grant = identity.grant
    if grant is None or grant.may_call(namespace, stack):
        return
    if namespace != grant.namespace:
        raise UnknownModel(model or f"{namespace}/{stack}")
    raise ModelNotAllowed(model or f"{namespace}/{stack}")


def resolve(identity: Identity, store: PlanStore, model: str) -> TrafficPlan:
    """The plan ``model`` names, as seen by ``identity``.

    A key sees only its own namespace: ``name`` means ``<its namespace>/name``,
    and ``other/name`` is :class:`UnknownModel` whether or not it exists (the
    same 404 as a stack that does not exist). A stack of its namespace that it
    does not list is :class:`ModelNotAllowed` (403).
    """
    grant = identity.grant
    if grant is None:
        return store.resolve(model)
    namespace, _, name = model.rpartition("/")
    if namespace and namespace != grant.namespace:
        raise UnknownModel(model)
    plan = store.get(f"{grant.namespace}/{name}")
    if plan is None:
        raise UnknownModel(model)
    authorize(identity, plan.namespace, plan.stack, model)
    return plan


def visible(identity: Identity, plans: Iterable[TrafficPlan]) -> list[TrafficPlan]:
    """The plans ``identity`` may call (``/v1/models``)."""
    return [p for p in plans if identity.may_call(p.namespace, p.stack)]
