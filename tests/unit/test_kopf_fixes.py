"""controller/kopf_fixes.py against kopf's own orchestration objects: a vanished namespace's watcher
no longer holds the operator's readiness (and so every handler) forever."""

from __future__ import annotations

import asyncio
import inspect

from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.structs import references
from kopf._core.reactor import orchestration

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
