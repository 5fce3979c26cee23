"""The API server's audit log, as the e2e tests read it: who sent which request, and when.

The local cluster writes it when started with ``INFERSTACK_AUDIT=1``
(e2e/cluster.py: metadata level, one JSON line per request, never rotated);
``INFERSTACK_AUDIT_LOG`` in .run/env names the file. A test marks the byte
offset before what it measures and reads from there, so the requests of
earlier runs and of other sessions' namespaces cost nothing.

The operator's user agent names the replica that sent a request
(``inferstack-operator/<version> (<identity>)``, kopf's
``kopf/<version> (<identity>)``; controller/kube.py), so a request is
attributed to a replica by the server's record, not by the process's own
counters.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
_IDENTITY = re.compile(r"\(([^()]*)\)$")


def audit_log() -> Path | None:
    path = os.environ.get("INFERSTACK_AUDIT_LOG")
    return Path(path) if path else None


@dataclass(frozen=True)
class Request:
    verb: str
    resource: str  # "leases", "inferencestacks/status", ...
    namespace: str
    name: str
    user_agent: str
    code: int  # the response's HTTP status
    received: datetime  # requestReceivedTimestamp, the API server's clock
    completed: datetime  # stageTimestamp of the last stage logged

    @property
    def write(self) -> bool:
        return self.verb in WRITE_VERBS

    @property
    def replica(self) -> str | None:
        """The identity the operator's user agent ends with, if any."""
        m = _IDENTITY.search(self.user_agent)
        return m.group(1) if m else None

    @property
    def what(self) -> str:
        return f"{self.verb} {self.resource}"


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Audit:
    """The audit log from a byte offset on: one Request per auditID (a watch logs two stages)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size

    def requests(self, start: int, end: int | None = None) -> list[Request]:
        end = self.mark() if end is None else end
        if end < start:
            raise AssertionError(f"{self.path} shrank (rotated?): start the cluster with e2e/cluster.py, which never rotates it")
        with self.path.open("rb") as f:
            f.seek(start)
            data = f.read(end - start)
        seen: dict[str, dict] = {}
        for line in data.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:  # a line cut at the mark
                continue
            first = seen.setdefault(ev.get("auditID", ""), ev)
            if first is not ev:
                first["stageTimestamp"] = ev.get("stageTimestamp", first.get("stageTimestamp"))
                first["responseStatus"] = ev.get("responseStatus", first.get("responseStatus"))
        out = []
        for ev in seen.values():
            ref = ev.get("objectRef") or {}
            resource = ref.get("resource", "") + ("/" + ref["subresource"] if ref.get("subresource") else "")
            received = _time(ev["requestReceivedTimestamp"])
            code = int((ev.get("responseStatus") or {}).get("code") or 0)
            completed = _time(ev["stageTimestamp"]) if ev.get("stageTimestamp") else received
            ua = str(ev.get("userAgent", ""))
            out.append(Request(ev.get("verb", ""), resource, ref.get("namespace", ""), ref.get("name", ""), ua, code, received, completed))
        return sorted(out, key=lambda r: r.received)
