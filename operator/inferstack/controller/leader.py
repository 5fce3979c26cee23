"""Leader election among operator replicas, on a ``coordination.k8s.io/v1`` Lease.

Every replica runs kopf's watches and indexes (its caches stay warm); only
the leader runs the per-stack reconcile loops. The elector calls
``on_started`` when it takes the lease and ``on_stopped`` when it loses it.
The rules (when a lease is free, what a takeover writes) are
``core/lease.py``'s; this module does the I/O and the timing.

Why not kopf's peering: it freezes operators of lower priority, but it is not
a lease (no renew deadline after which the old leader is sure to have
stopped), and its heartbeats are written by every replica, standbys included.

Safety does not rest on this task being scheduled on time: ``may_write()`` is
computed from the clock and the last renewal sent, and every API write of the
operator checks it (``Kube(fence=...)``). A leader whose event loop stalls,
or whose renewals hang, stops writing at the renew deadline all the same; its
loops are stopped at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from inferstack.controller import metrics
from inferstack.core.config import LeaderElectionConfig
from inferstack.core.lease import LeaseRecord, claim, released, taken

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class LeaseConflict(Exception):
    """Someone else created or changed the Lease between our read and our write."""


class LeaseAPI(Protocol):
    async def get(self) -> tuple[LeaseRecord, str] | None:
        """The record and its resourceVersion; None when there is no Lease."""

    async def create(self, record: LeaseRecord) -> str:
        """Create the Lease; its resourceVersion. LeaseConflict when it exists."""

    async def update(self, record: LeaseRecord, resource_version: str) -> str:
        """Replace the Lease if it is still at ``resource_version``; the new one. LeaseConflict otherwise."""


def default_identity() -> str:
    """Unique per process: the pod's name (or host) and a random suffix, so a restarted
    container never mistakes its predecessor's lease for its own."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def default_namespace() -> str:
    if ns := os.environ.get("POD_NAMESPACE"):
        return ns
    with contextlib.suppress(OSError):
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    return "default"


def _micro_time(value: datetime | None) -> str | None:
    # A Lease's times are MicroTime: RFC 3339 with microseconds.
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


class KubeLeases:
    """The Lease through the official client, on its own thread: renewals never queue
    behind the reconcile loops' API calls in the default executor."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, timeout: float) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.namespace, self.name, self.timeout = namespace, name, timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease")

    async def _call(self, fn, *args, **kwargs):
        call = lambda: fn(*args, _request_timeout=self.timeout, **kwargs)  # noqa: E731
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _body(self, record: LeaseRecord, resource_version: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace, "labels": {"app.kubernetes.io/name": "inferstack"}}
        if resource_version:
            meta["resourceVersion"] = resource_version
        spec = {
            "holderIdentity": record.holder,
            "leaseDurationSeconds": record.lease_duration_seconds,
            "acquireTime": _micro_time(record.acquire_time),
            "renewTime": _micro_time(record.renew_time),
            "leaseTransitions": record.transitions,
        }
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    async def get(self) -> tuple[LeaseRecord, str] | None:
        try:
            lease = await self._call(self.coordination.read_namespaced_lease, self.name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        spec = lease.spec or client.V1LeaseSpec()
        record = LeaseRecord(
            spec.holder_identity or None, spec.lease_duration_seconds or 0, spec.acquire_time, spec.renew_time, spec.lease_transitions or 0
        )
        return record, lease.metadata.resource_version

    async def create(self, record: LeaseRecord) -> str:
        metrics.LEASE_WRITES.labels("create").inc()
        try:
            lease = await self._call(self.coordination.create_namespaced_lease, self.namespace, self._body(record))
        except ApiException as e:
            if e.status == 409:
                raise LeaseConflict from e
            raise
        return lease.metadata.resource_version

    async def update(self, record: LeaseRecord, resource_version: str) -> str:
        metrics.LEASE_WRITES.labels("update").inc()
        try:
            lease = await self._call(
                self.coordination.replace_namespaced_lease, self.name, self.namespace, self._body(record, resource_version)
            )
        except ApiException as e:
            if e.status in (404, 409):  # deleted, or changed since we read it
                raise LeaseConflict from e
            raise
        return lease.metadata.resource_version


class Elector:
    """One replica's side of the election: a standby until it takes the lease, then the
    leader until a renewal fails past the renew deadline (or another holder shows up)."""

    def __init__(
        self,
        api: LeaseAPI,
        identity: str,
        config: LeaderElectionConfig,
        *,
        on_started: Callable[[], None],
        on_stopped: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.api, self.identity, self.config = api, identity, config
        self.on_started, self.on_stopped = on_started, on_stopped
        self.clock, self.wall = clock, wall
        self.leading = False  # our loops run
        self._renewed_at: float | None = None  # clock() when our last successful write was sent
        self._observed: LeaseRecord | None = None  # the last record read or written ...
        self._observed_at = 0.0  # ... and when it was first seen, on our clock
        self._version: str | None = None  # its resourceVersion, while it is ours
        metrics.LEADER.labels(identity).set(0)

    def may_write(self) -> bool:
        """Whether this replica may write to the API server now: it leads, and its last renewal
        is younger than the renew deadline. Checked before every write (the fence)."""
        renewed = self._renewed_at
        return self.leading and renewed is not None and self.clock() < renewed + self.config.renew_deadline_seconds

    def _observe(self, record: LeaseRecord) -> None:
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()

    async def _try(self) -> bool:
        """One try to take or renew the lease; True when it is ours now."""
        sent = self.clock()
        if self.leading and self._version and self._observed is not None:
            # Renewal of a lease we hold: one write, no read. A conflict means
            # someone changed it; the read of the next try tells what happened.
            mine = claim(self._observed, self.identity, self.wall(), self.config.lease_duration_seconds)
            try:
                self._version = await self.api.update(mine, self._version)
            except LeaseConflict:
                self._version = None
                return False
            self._observe(mine)
            self._renewed_at = sent
            return True
        got = await self.api.get()
        if got is None:
            mine = claim(None, self.identity, self.wall(), self.config.lease_duration_seconds)
            try:
                version = await self.api.create(mine)
            except LeaseConflict:
                return False
        else:
            record, version = got
            self._observe(record)
            if taken(record, self.identity, self._observed_at, self.clock(), self.config.lease_duration_seconds):
                return False
            mine = claim(record, self.identity, self.wall(), self.config.lease_duration_seconds)
            try:
                version = await self.api.update(mine, version)
            except LeaseConflict:
                return False
        self._observe(mine)
        self._version, self._renewed_at = version, sent
        return True

    async def tick(self) -> None:
        """One try, then start or stop the loops to match."""
        if self.leading and not self.may_write():
            await self._stop("the renew deadline passed")
        try:
            ok = await self._try()
        except Exception as e:  # the API server unreachable, a timeout: retried next tick
            log.warning("leader election: %s: %s", type(e).__name__, str(e).partition("\n")[0][:200])
            ok = False
        if ok and not self.leading:
            log.info("leader election: %s took lease %s; reconciling", self.identity, self._lease_name())
            self.leading = True
            metrics.LEADER.labels(self.identity).set(1)
            metrics.LEADERSHIP_CHANGES.labels("acquired").inc()
            self.on_started()
        elif self.leading and not ok:
            holder = self._observed.holder if self._observed else None
            if holder and holder != self.identity:
                await self._stop(f"{holder} holds the lease")
            elif not self.may_write():
                await self._stop("the renew deadline passed")

    async def _stop(self, why: str) -> None:
        log.warning("leader election: %s lost the lease (%s); stopping every reconcile loop", self.identity, why)
        self.leading = False
        self._version = None
        metrics.LEADER.labels(self.identity).set(0)
        metrics.LEADERSHIP_CHANGES.labels("lost").inc()
        await self.on_stopped()

    def _delay(self) -> float:
        """Until the next try: a retry period, or sooner when a leader's deadline or the
        observed holder's lease ends first."""
        now, delay = self.clock(), self.config.retry_period_seconds
        if self.leading and self._renewed_at is not None:
            delay = min(delay, max(0.0, self._renewed_at + self.config.renew_deadline_seconds - now))
        elif self._observed is not None and self._observed.holder and self._observed.holder != self.identity:
            delay = min(delay, max(0.0, self._observed_at + self.config.lease_duration_seconds - now))
        return max(delay, 0.01)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a loop that failed to start or stop: the fence still holds; try again
                log.exception("leader election: tick failed")
            await asyncio.sleep(self._delay())

    async def release(self) -> None:
        """On a clean shutdown, once the loops have stopped: give the lease up, so a standby
        takes it at its next try instead of after a lease duration."""
        if not self.leading or self._version is None or self._observed is None:
            return
        self.leading = False
        metrics.LEADER.labels(self.identity).set(0)
        try:
            try:
                await self.api.update(released(self._observed, self.wall()), self._version)
            except LeaseConflict:
                # A renewal cancelled with the election task may still have reached the server
                # (its call runs on in a thread): read the lease, and give up what is still ours.
                got = await self.api.get()
                if got is None or got[0].holder != self.identity:
                    return
                await self.api.update(released(got[0], self.wall()), got[1])
            log.info("leader election: %s released the lease", self.identity)
        except Exception as e:  # shutting down: the lease then ends a lease duration after the last renewal
            log.warning("leader election: %s could not release the lease: %s", self.identity, type(e).__name__)

    def _lease_name(self) -> str:
        api = self.api
        return f"{getattr(api, 'namespace', '?')}/{getattr(api, 'name', '?')}"
