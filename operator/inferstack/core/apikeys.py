"""Client API keys of the router: how a key is made, stored and read back.

A key is ``isk_`` + 32 random bytes (urlsafe base64). It is stored only as its
SHA-256 in a Secret labelled ``inferstack.dev/api-key: "true"`` in the
namespace whose stacks it may call, with the tenant it stands for and the
stacks of that namespace it may call (``*`` for all). The key itself is
printed once, when it is made (``kubectl istack key create``), and never
stored anywhere by inferstack.

Pure: the CLI writes the Secret, the router (``inferstack.router.keysource``)
watches them; both use this module's rules.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass

from inferstack import GROUP

API_KEY_LABEL = f"{GROUP}/api-key"
API_KEY_SELECTOR = f"{API_KEY_LABEL}=true"
KEY_PREFIX = "isk_"
KEY_BYTES = 32
ALL_STACKS = "*"

_TENANT = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS label
_STACK = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a Kubernetes object name
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
MAX_STACKS = 256  # stack names one key may list


class KeySecretError(ValueError):
    """A key Secret that does not hold a usable grant. ``reason`` is a short metric label;
    the message never quotes the Secret's values."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    """What one key may do: call ``stacks`` (None: all) of ``namespace``, as ``tenant`` of it."""

    namespace: str
    tenant: str
    stacks: frozenset[str] | None
    # False: the tenant opted out of content recording; its messages are never in a trace or an audit line.
    record_content: bool = True

    @property
    def qualified_tenant(self) -> str:
        """The tenant as the caches see it: tenant ``acme`` of two namespaces is two tenants."""
        return f"{self.namespace}/{self.tenant}"

    def may_call(self, namespace: str, stack: str) -> bool:
        return namespace == self.namespace and (self.stacks is None or stack in self.stacks)


def generate_key() -> str:
    """A new key with 256 bits of entropy."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def parse_tenant(value: str) -> str:
    if not _TENANT.match(value):
        raise KeySecretError("bad_tenant", "`tenant` must be a DNS label: lower-case letters, digits and '-', at most 63")
    return value


def parse_stacks(value: str) -> frozenset[str] | None:
    """``*`` (None: every stack of the namespace) or a comma-separated list of stack names."""
    value = value.strip()
    if value == ALL_STACKS:
        return None
    names = [s.strip() for s in value.split(",") if s.strip()]
    if not names:
        raise KeySecretError("bad_stacks", "`stacks` must be `*` or a comma-separated list of stack names")
    if len(names) > MAX_STACKS:
        raise KeySecretError("bad_stacks", f"`stacks` lists more than {MAX_STACKS} stacks")
    if not all(_STACK.match(n) for n in names):
        raise KeySecretError("bad_stacks", "`stacks` holds a name that is not a stack name")
    return frozenset(names)


def parse_key_secret(namespace: str, data: dict[str, str] | None) -> tuple[bytes, Grant]:
    """The (digest, grant) of a key Secret's ``data`` (base64 values, as the API returns them).

    Raises :class:`KeySecretError`, whose message names the field but never its value.
    """
    data = data or {}
    fields: dict[str, str] = {}
    for name in ("sha256", "tenant", "stacks"):
        raw = data.get(name)
        if raw is None:
            raise KeySecretError("missing_field", f"no `{name}` in the Secret's data")
        if len(raw) > 16384:
            raise KeySecretError("too_large", f"`{name}` is too large")
        try:
            fields[name] = base64.b64decode(raw, validate=True).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            raise KeySecretError("bad_encoding", f"`{name}` is not base64 of UTF-8 text") from None
    digest = fields["sha256"].lower()
    if not _DIGEST.match(digest):
        raise KeySecretError("bad_sha256", "`sha256` must be 64 hex digits: the SHA-256 of the key, never the key")
    return bytes.fromhex(digest), Grant(
        namespace, parse_tenant(fields["tenant"]), parse_stacks(fields["stacks"]), _record_content(data.get(RECORD_CONTENT))
    )


RECORD_CONTENT = "recordContent"  # optional field of a key Secret: "false" opts the tenant out of content recording


def _record_content(raw: str | None) -> bool:
    """Absent: allowed. Anything but a clear "true" opts out (fail closed for privacy)."""
    if raw is None:
        return True
    try:
        return base64.b64decode(raw, validate=True).decode("utf-8").strip().lower() == "true"
    except (binascii.Error, UnicodeDecodeError):
        return False


def key_secret(
    name: str, namespace: str, key: str, tenant: str, stacks: str = ALL_STACKS, record_content: bool = True
) -> dict[str, object]:
    """The Secret that grants ``key``: its hash, tenant and stacks (validated as the router will)."""
    parse_tenant(tenant)
    parse_stacks(stacks)
    data = {"sha256": key_digest(key).hex(), "tenant": tenant, "stacks": stacks.strip()}
    if not record_content:
        data[RECORD_CONTENT] = "false"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": {API_KEY_LABEL: "true"}},
        "stringData": data,
    }
