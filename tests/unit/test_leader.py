"""The leader elector's state machine, on a fake clock and an in-memory Lease.

Acquire, renew, lose at the renew deadline, hand over to a standby, and the
two properties HA rests on: a replica that lost the lease sends no write, and
two replicas never may write at the same moment.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from inferstack.controller.kube import Kube, NotLeader
from inferstack.controller.leader import Elector, LeaseConflict
from inferstack.core.config import LeaderElectionConfig, OperatorConfig
from inferstack.core.lease import LeaseRecord, claim, released, taken

CONFIG = LeaderElectionConfig(enabled=True)  # 15 s / 10 s / 2 s


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.t)


class Store:
    """One Lease object with a resourceVersion, as the API server keeps it."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.version = 0
        self.writes: list[tuple[str, str, str | None]] = []  # (who, verb, holder written)
        self.reads = 0


class FakeLeases:
    """One replica's view of the store; ``down`` makes its calls fail, ``hang`` blocks them."""

    def __init__(self, store: Store, who: str) -> None:
        self.store, self.who = store, who
        self.down = False
        self.hang: asyncio.Event | None = None

    async def _reach(self) -> None:
        if self.hang is not None:
            await self.hang.wait()
        if self.down:
            raise OSError("connection refused")

    async def get(self) -> tuple[LeaseRecord, str] | None:
        await self._reach()
        self.store.reads += 1
        return (self.store.record, str(self.store.version)) if self.store.record else None

    async def create(self, record: LeaseRecord) -> str:
        await self._reach()
        if self.store.record is not None:
            raise LeaseConflict
        return self._write("create", record)

    async def update(self, record: LeaseRecord, resource_version: str) -> str:
        await self._reach()
        if self.store.record is None or resource_version != str(self.store.version):
            raise LeaseConflict
        return self._write("update", record)

    def _write(self, verb: str, record: LeaseRecord) -> str:
        self.store.record, self.store.version = record, self.store.version + 1
        self.store.writes.append((self.who, verb, record.holder))
        return str(self.store.version)


class Replica:
    def __init__(self, name: str, store: Store, clock: Clock, config: LeaderElectionConfig = CONFIG) -> None:
        self.api = FakeLeases(store, name)
        self.started = self.stopped = 0
        self.elector = Elector(self.api, name, config, on_started=self._start, on_stopped=self._stop, clock=clock, wall=clock.wall)

    def _start(self) -> None:
        self.started += 1

    async def _stop(self) -> None:
        self.stopped += 1


class NoAPI:
    """An API client that must not be called: a write reaching it fails the test."""

    def call_api(self, *args, **kwargs):
        raise AssertionError("a write was sent")

    def __getattr__(self, name):
        raise AssertionError(f"the API client was used: {name}")


def writers(store: Store) -> set[str]:
    return {who for who, _, _ in store.writes}


async def test_the_first_replica_creates_the_lease_and_leads():
    store, clock = Store(), Clock()
    a = Replica("a", store, clock)
    await a.elector.tick()
    assert a.elector.leading and a.elector.may_write() and a.started == 1
    assert store.writes == [("a", "create", "a")]
    assert store.record is not None and store.record.lease_duration_seconds == 15 and store.record.transitions == 0


async def test_the_leader_renews_with_one_write_per_retry_period_and_no_read():
    store, clock = Store(), Clock()
    a = Replica("a", store, clock)
    await a.elector.tick()
    reads = store.reads
    for _ in range(30):  # one minute at a 2 s retry period
        clock.t += CONFIG.retry_period_seconds
        await a.elector.tick()
    assert store.reads == reads, "a renewal of our own lease is one write, not a read and a write"
    assert len(store.writes) == 31 and writers(store) == {"a"}
    assert store.record is not None and store.record.renew_time == clock.wall() and store.record.transitions == 0
    assert store.record.acquire_time == clock.wall() - timedelta(seconds=60)
    assert a.started == 1 and a.stopped == 0


async def test_a_standby_reads_writes_nothing_and_never_leads_while_the_leader_renews():
    store, clock = Store(), Clock()
    a, b = Replica("a", store, clock), Replica("b", store, clock)
    await a.elector.tick()
    for _ in range(60):
        clock.t += 1
        await b.elector.tick()
        if clock.t % 2 == 0:
            await a.elector.tick()
        assert not b.elector.leading and not b.elector.may_write()
    assert writers(store) == {"a"} and b.started == 0


async def test_a_standby_takes_a_dead_leaders_lease_one_lease_duration_after_it_last_changed():
    store, clock = Store(), Clock()
    a, b = Replica("a", store, clock), Replica("b", store, clock)
    await a.elector.tick()
    await b.elector.tick()  # sees a's record now
    seen = clock.t
    # a is killed: it never ticks again. b tries every retry period.
    while not b.elector.leading:
        clock.t += 0.5
        await b.elector.tick()
        assert b.elector.leading == (clock.t >= seen + CONFIG.lease_duration_seconds)
    assert clock.t == seen + CONFIG.lease_duration_seconds
    assert store.record is not None and store.record.holder == "b" and store.record.transitions == 1
    assert b.started == 1


async def test_a_standby_counts_from_when_it_saw_the_record_not_from_the_record_time():
    """Clocks of two machines are never compared: an old renewTime does not make the lease free."""
    store, clock = Store(), Clock()
    store.record = LeaseRecord("a", 15, clock.wall() - timedelta(hours=1), clock.wall() - timedelta(hours=1))
    b = Replica("b", store, clock)
    await b.elector.tick()
    assert not b.elector.leading
    clock.t += 14.9
    await b.elector.tick()
    assert not b.elector.leading
    clock.t += 0.1
    await b.elector.tick()
    assert b.elector.leading


async def test_renewals_failing_stop_the_leader_at_the_renew_deadline_and_it_sends_no_write_after():
    store, clock = Store(), Clock()
    a = Replica("a", store, clock)
    await a.elector.tick()
    renewed = clock.t
    kube = Kube(NoAPI(), fence=a.elector.may_write)  # type: ignore[arg-type]
    a.api.down = True
    while clock.t < renewed + 12:
        clock.t += 0.5
        await a.elector.tick()
        before_deadline = clock.t < renewed + CONFIG.renew_deadline_seconds
        assert a.elector.may_write() == before_deadline
        assert a.elector.leading == before_deadline
        assert a.stopped == (0 if before_deadline else 1)
        if not before_deadline:
            # The fence: refused before anything is sent (no API server is reachable from here).
            with pytest.raises(NotLeader):
                await kube.patch_status("ns", "shop", {"phase": "Healthy"})
    assert writers(store) == {"a"} and len(store.writes) == 1


async def test_a_renewal_that_hangs_does_not_keep_the_leader_writing():
    """Safety does not wait for the elector's task: may_write() is computed from the clock."""
    store, clock = Store(), Clock()
    a = Replica("a", store, clock)
    await a.elector.tick()
    renewed = clock.t
    a.api.hang = asyncio.Event()
    pending = asyncio.create_task(a.elector.tick())
    await asyncio.sleep(0)
    clock.t = renewed + CONFIG.renew_deadline_seconds - 0.01
    assert a.elector.may_write()
    clock.t = renewed + CONFIG.renew_deadline_seconds
    assert not a.elector.may_write(), "the deadline passed while the renewal hangs"
    a.api.down, a.api.hang = True, None
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await a.elector.tick()
    assert not a.elector.leading and a.stopped == 1


async def test_two_replicas_never_may_write_at_once_across_a_partition_and_a_takeover():
    """a is cut off from the API server; b takes over. At every instant at most one may write,
    and the old leader stopped at least leaseDuration - renewDeadline before the new one started."""
    store, clock = Store(), Clock()
    a, b = Replica("a", store, clock), Replica("b", store, clock)
    await a.elector.tick()
    await b.elector.tick()
    a.api.down = True
    a_stopped_at = b_started_at = None
    for _ in range(200):
        clock.t += 0.25
        await a.elector.tick()
        await b.elector.tick()
        assert not (a.elector.may_write() and b.elector.may_write()), clock.t
        if a_stopped_at is None and not a.elector.leading:
            a_stopped_at = clock.t
        if b_started_at is None and b.elector.leading:
            b_started_at = clock.t
    assert a_stopped_at is not None and b_started_at is not None
    assert b_started_at - a_stopped_at >= CONFIG.lease_duration_seconds - CONFIG.renew_deadline_seconds
    # a comes back: it sees b's lease and stays a standby, writing nothing.
    a.api.down = False
    count = len(store.writes)
    for _ in range(20):
        clock.t += 1
        await a.elector.tick()
        await b.elector.tick()
        assert not a.elector.leading
    assert all(who == "b" for who, _, _ in store.writes[count:])


async def test_a_leader_that_finds_another_holder_stops_at_once():
    store, clock = Store(), Clock()
    a = Replica("a", store, clock)
    await a.elector.tick()
    # Someone (a replica with a wrong clock, a human) wrote the lease to themselves.
    assert store.record is not None
    store.record, store.version = replace(store.record, holder="z"), store.version + 1
    clock.t += 2
    await a.elector.tick()  # the renewal conflicts
    clock.t += 2
    await a.elector.tick()  # the read shows z
    assert not a.elector.leading and not a.elector.may_write() and a.stopped == 1


async def test_release_on_shutdown_lets_a_standby_take_over_at_its_next_try():
    store, clock = Store(), Clock()
    a, b = Replica("a", store, clock), Replica("b", store, clock)
    await a.elector.tick()
    await b.elector.tick()
    await a.elector.release()
    assert not a.elector.may_write()
    assert store.record is not None and store.record.holder is None
    clock.t += CONFIG.retry_period_seconds
    await b.elector.tick()
    assert b.elector.leading and store.record.holder == "b"


async def test_release_after_a_renewal_the_elector_did_not_see_through():
    """The election task cancelled at shutdown while a renewal was on its way: the server has a
    newer version than the elector knows. The release reads it and still gives the lease up."""
    store, clock = Store(), Clock()
    a = Replica("a", store, clock)
    await a.elector.tick()
    store.record, store.version = claim(store.record, "a", clock.wall(), 15), store.version + 1  # the renewal that landed
    await a.elector.release()
    assert store.record is not None and store.record.holder is None
    # Someone else's lease by then: left alone.
    b = Replica("b", store, clock)
    await a.elector.tick()
    store.record, store.version = claim(store.record, "b", clock.wall(), 15), store.version + 1
    await a.elector.release()
    assert store.record.holder == "b" and not b.elector.leading


async def test_the_delay_wakes_a_standby_right_when_the_lease_ends():
    store, clock = Store(), Clock()
    a, b = Replica("a", store, clock), Replica("b", store, clock)
    await a.elector.tick()
    await b.elector.tick()
    assert b.elector._delay() == CONFIG.retry_period_seconds
    clock.t += 14.5
    assert b.elector._delay() == pytest.approx(0.5)


def test_lease_rules():
    wall = datetime(2026, 1, 1, tzinfo=UTC)
    first = claim(None, "a", wall, 15)
    assert first == LeaseRecord("a", 15, wall, wall, 0)
    later = wall + timedelta(seconds=2)
    assert claim(first, "a", later, 15) == LeaseRecord("a", 15, wall, later, 0)  # renewal keeps acquireTime
    assert claim(first, "b", later, 15.5) == LeaseRecord("b", 16, later, later, 1)  # whole seconds, rounded up
    assert released(first, later) == LeaseRecord(None, 1, wall, later, 0)
    assert taken(first, "b", observed_at=100, now=114.9, lease_duration=15)
    assert not taken(first, "b", observed_at=100, now=115, lease_duration=15)
    assert not taken(first, "a", observed_at=100, now=101, lease_duration=15)  # our own
    assert not taken(released(first, later), "b", observed_at=100, now=101, lease_duration=15)  # free


def test_the_configuration_orders_the_durations_and_is_off_by_default():
    assert OperatorConfig().leader_election.enabled is False
    cfg = OperatorConfig.model_validate({"leaderElection": {"enabled": True}}).leader_election
    assert (cfg.lease_duration_seconds, cfg.renew_deadline_seconds, cfg.retry_period_seconds) == (15, 10, 2)
    for bad in ({"renewDeadlineSeconds": 15}, {"retryPeriodSeconds": 10}, {"leaseDurationSeconds": 5}):
        with pytest.raises(ValidationError, match="retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds"):
            OperatorConfig.model_validate({"leaderElection": bad})


# ------------------------------------------------ which replica sent a request


def test_every_replica_keeps_one_field_manager_and_names_itself_after_the_first_slash():
    from inferstack import __version__
    from inferstack.controller.kube import FIELD_MANAGER, new_client, user_agent

    a, b = user_agent("shop-op-a_1f2e"), user_agent("shop-op-b_77aa")
    assert a == f"inferstack-operator/{__version__} (shop-op-a_1f2e)" and a != b
    # The API server names the manager of a write without fieldManager after the
    # user agent up to its first "/": the same for every replica, and the one
    # the operator's server-side applies name.
    assert {a.split("/")[0], b.split("/")[0]} == {FIELD_MANAGER}
    assert user_agent(None) == f"inferstack-operator/{__version__}"
    assert user_agent("x(y)\n") == f"inferstack-operator/{__version__} (xy)"  # one comment, one line
    assert new_client("op-a").user_agent == user_agent("op-a")


async def test_kopf_sends_the_replicas_user_agent():
    import kopf
    from kopf._cogs.clients.auth import APIContext  # where kopf builds its session's headers

    from inferstack.controller.main import IdentifiedConnection

    info = IdentifiedConnection(server="https://127.0.0.1:1", token="t0k", user_agent="kopf/1 (op-a)")
    assert isinstance(info, kopf.ConnectionInfo)
    context = APIContext(info)
    try:
        assert context.session.headers["User-Agent"] == "kopf/1 (op-a)"
        assert context.session.headers["Authorization"] == "Bearer t0k"
    finally:
        await context.session.close()
