"""controller/kopf_fixes.py against kopf's own orchestration objects: a vanished namespace's watcher
no longer holds the operator's readiness (and so every handler) forever."""

from __future__ import annotations

import asyncio
import inspect
import logging

from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.structs import references
from kopf._core.reactor import observation, orchestration

from inferstack.controller import kopf_fixes

STACKS = references.Resource("inferstack.dev", "v1alpha1", "inferencestacks", namespaced=True)


async def _ensemble_with_a_watcher_that_never_listed(namespace: str) -> orchestration.Ensemble:
    ensemble = orchestration.Ensemble(
        operator_indexed=aiotoggles.ToggleSet(all),
        operator_paused=aiotoggles.ToggleSet(any),
        peering_missing=aiotoggles.Toggle(),
    )
    # What spawn_missing_watchers does for an indexed resource, before the watcher's first listing.
    await ensemble.operator_indexed.make_toggle(name=f"{STACKS}@{namespace}")
    task = asyncio.create_task(asyncio.Event().wait(), name="watcher that never lists")
    ensemble.watcher_tasks[orchestration.EnsembleKey(resource=STACKS, namespace=namespace)] = task
    return ensemble


async def test_without_the_fix_a_vanished_namespace_blocks_readiness_forever() -> None:
    ensemble = await _ensemble_with_a_watcher_that_never_listed("e2e-gone")
    await kopf_fixes._original(remaining_resources={STACKS}, remaining_namespaces=set(), ensemble=ensemble)
    assert not ensemble.watcher_tasks and not ensemble.operator_indexed.is_on()  # the defect, as kopf has it


async def test_the_fix_drops_the_readiness_of_watchers_it_stops() -> None:
    ensemble = await _ensemble_with_a_watcher_that_never_listed("e2e-gone")
    still = await ensemble.operator_indexed.make_toggle(name=f"{STACKS}@e2e-alive")
    await kopf_fixes._terminate_redundancies(
        remaining_resources={STACKS}, remaining_namespaces={"e2e-alive"}, ensemble=ensemble
    )
    assert [t.name for t in ensemble.operator_indexed] == [f"{STACKS}@e2e-alive"]  # only the living one waits
    await ensemble.operator_indexed.drop_toggle(still)
    await asyncio.wait_for(ensemble.operator_indexed.wait_for(True), timeout=1)


def test_kopf_still_names_and_calls_what_the_fix_relies_on() -> None:
    spawn = inspect.getsource(orchestration.spawn_missing_watchers)
    assert 'what = f"{resource}@{namespace}"' in spawn and "make_toggle(name=what)" in spawn
    assert "await terminate_redundancies(" in inspect.getsource(orchestration.adjust_tasks)
    assert set(inspect.signature(kopf_fixes._original).parameters) == {"remaining_resources", "remaining_namespaces", "ensemble"}


async def test_held_names_each_watcher_that_has_not_listed_yet_and_its_state() -> None:
    ensemble = await _ensemble_with_a_watcher_that_never_listed("e2e-slow")
    await ensemble.operator_indexed.make_toggle(name=f"{STACKS}@e2e-orphan")  # a toggle whose watcher is gone
    assert kopf_fixes.held(ensemble) == [f"{STACKS}@e2e-orphan (no watcher)", f"{STACKS}@e2e-slow (watcher running)"]
    for task in ensemble.watcher_tasks.values():
        task.cancel()
    for toggle in list(ensemble.operator_indexed):
        await ensemble.operator_indexed.drop_toggle(toggle)
    assert kopf_fixes.held(ensemble) == []


async def test_a_held_readiness_is_reported_once_it_lasts() -> None:
    ensemble = await _ensemble_with_a_watcher_that_never_listed("e2e-slow")
    kopf_fixes._ensemble = ensemble
    records: list[str] = []
    handler = _Collect(records)
    kopf_fixes.log.addHandler(handler)
    task = asyncio.create_task(kopf_fixes.report_held_readiness(interval=0.01, after=0.05))
    try:
        async with asyncio.timeout(5):
            while not any("holds new handlers" in r for r in records):
                await asyncio.sleep(0.01)
            assert f"{STACKS}@e2e-slow (watcher running)" in records[-1]
            for toggle in list(ensemble.operator_indexed):
                await ensemble.operator_indexed.drop_toggle(toggle)
            while not any("handlers run again" in r for r in records):
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        kopf_fixes.log.removeHandler(handler)
        kopf_fixes._ensemble = None
        for t in ensemble.watcher_tasks.values():
            t.cancel()


class _Collect(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record) -> None:
        self.records.append(record.getMessage())


def _namespace_listed(name: str) -> dict:
    # An item of a watch's first listing, as kopf's watcher hands it on: no event type.
    return {"type": None, "object": {"metadata": {"name": name}}}


async def _served_after(handler, *, known: set[str], listed: str) -> tuple[set[str], bool]:
    insights = references.Insights()
    insights.namespaces.update(known)
    woken = asyncio.Event()

    async def orchestrator() -> None:  # what kopf's orchestrator waits on before starting watchers
        async with insights.revised:
            await insights.revised.wait()
            woken.set()

    waiter = asyncio.create_task(orchestrator())
    await asyncio.sleep(0)
    await handler(raw_event=_namespace_listed(listed), namespaces=["e2e-*"], insights=insights, stream_pressure=None)
    await asyncio.sleep(0.01)
    waiter.cancel()
    return set(insights.namespaces), woken.is_set()


async def test_without_the_fix_a_namespace_created_between_kopfs_two_listings_is_never_served() -> None:
    served, woken = await _served_after(kopf_fixes._original_namespace_event, known={"e2e-a"}, listed="e2e-new")
    assert served == {"e2e-a"} and not woken  # the defect, as kopf has it


async def test_the_fix_serves_a_namespace_seen_only_in_the_watchs_listing() -> None:
    served, woken = await _served_after(kopf_fixes._process_discovered_namespace_event, known={"e2e-a"}, listed="e2e-new")
    assert served == {"e2e-a", "e2e-new"} and woken


async def test_the_fix_does_not_wake_kopf_for_namespaces_it_knows_or_does_not_watch() -> None:
    for listed in ("e2e-a", "kube-system"):
        served, woken = await _served_after(kopf_fixes._process_discovered_namespace_event, known={"e2e-a"}, listed=listed)
        assert served == {"e2e-a"} and not woken


def test_kopf_still_ignores_the_listing_and_looks_the_processor_up_by_name() -> None:
    observer = inspect.getsource(observation.namespace_observer)
    assert "functools.partial(process_discovered_namespace_event," in observer
    assert "if raw_event['type'] is None:\n        return" in inspect.getsource(kopf_fixes._original_namespace_event)
    kopf_fixes.install()
    assert observation.process_discovered_namespace_event is kopf_fixes._process_discovered_namespace_event


async def test_the_operator_hears_of_each_namespace_whose_watchers_kopf_stopped(monkeypatch) -> None:
    ensemble = await _ensemble_with_a_watcher_that_never_listed("e2e-gone")
    await ensemble.operator_indexed.make_toggle(name=f"{STACKS}@e2e-alive")
    ensemble.watcher_tasks[orchestration.EnsembleKey(resource=STACKS, namespace="e2e-alive")] = asyncio.create_task(asyncio.Event().wait())
    heard: list[str] = []
    monkeypatch.setattr(kopf_fixes, "namespace_gone", [heard.append])
    await kopf_fixes._terminate_redundancies(remaining_resources={STACKS}, remaining_namespaces={"e2e-alive"}, ensemble=ensemble)
    assert heard == ["e2e-gone"]  # a stack's DELETED event may have died with its watcher
    await kopf_fixes._terminate_redundancies(remaining_resources={STACKS}, remaining_namespaces={"e2e-alive"}, ensemble=ensemble)
    assert heard == ["e2e-gone"]  # nothing more is gone
    for task in ensemble.watcher_tasks.values():
        task.cancel()
