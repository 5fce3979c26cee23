"""Work-arounds for kopf 1.45's namespace tracking (``--namespace 'team-*'``).

**A namespace created while the operator starts is never served.** kopf lists
the namespaces once, then starts a watch, which lists them again and ignores
that second listing (its events have no type). A namespace created between
the two listings is in neither the first listing nor the watch's events: kopf
starts no watcher for it, and its stacks are not reconciled until the
namespace itself changes (for a test, when it is deleted). Seen twice in CI:
an operator started while the test created its namespace did nothing for
two minutes, then reconciled the stack as the namespace was being deleted.
The same gap opens at each reconnection of the namespace watch.
``install()`` makes kopf take the watch's listing into account too; it wakes
the orchestrator only when that adds a namespace, so a restart with many
namespaces costs nothing more.

**A vanished namespace must not hold every handler forever.**

With a namespace glob (``--namespace 'team-*'``) kopf runs one watcher per
(resource, namespace) and holds every handler until each watcher has listed
its namespace once (so that indexes are complete before handlers read them).
When a matching namespace is deleted before its watchers got that far, kopf
cancels the watchers but leaves their readiness toggles behind, and the
operator never runs a handler again: no stack is reconciled, while the
process looks healthy. Seen in CI, where earlier tests' namespaces were
still terminating when an operator started.

``install()`` also wraps kopf's ``terminate_redundancies`` so that, after it stops
the watchers of vanished namespaces, their readiness toggles are dropped too.
A namespace that no longer exists has nothing left to index.

Both patch private functions, so the kopf version is pinned in pyproject.toml
and ``tests/unit/test_kopf_fixes.py`` checks they still have the shape this
relies on.

``report_held_readiness()`` says, in the log, when kopf has held every new
handler for longer than a moment, and which watchers hold it: a stall that
is otherwise silent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from kopf._core.reactor import observation, orchestration

log = logging.getLogger(__name__)
_original = orchestration.terminate_redundancies
_original_namespace_event = observation.process_discovered_namespace_event
SLOW_STOP_SECONDS = 5.0
# The orchestrator's ensemble, seen at its first adjustment: read by report_held_readiness only.
_ensemble: Any = None
# Called with each namespace whose watchers kopf stopped because it vanished. A stack's DELETED
# event comes on its own watch, the namespace's on another: kopf may stop the first before it
# delivers the event, and the operator would keep a loop for a stack that no longer exists,
# retrying its writes into a namespace that does not either (seen in CI).
namespace_gone: list[Callable[[str], None]] = []


def _watcher_name(key: Any) -> str:
    # The name kopf gives the per-(resource, namespace) readiness toggle in spawn_missing_watchers.
    return f"{key.resource}@{key.namespace}"


async def _terminate_redundancies(
    *, remaining_resources: Any, remaining_namespaces: Any, ensemble: Any
) -> None:
    global _ensemble
    _ensemble = ensemble
    redundant = {
        _watcher_name(key)
        for key in ensemble.get_keys()
        if key.namespace not in remaining_namespaces or key.resource not in remaining_resources
    }
    gone = {key.namespace for key in ensemble.get_keys() if key.namespace is not None and key.namespace not in remaining_namespaces}
    started = time.monotonic()
    await _original(remaining_resources=remaining_resources, remaining_namespaces=remaining_namespaces, ensemble=ensemble)
    if (took := time.monotonic() - started) > SLOW_STOP_SECONDS:
        # kopf holds its orchestration (no watcher starts for a new namespace) while it stops these.
        log.warning("kopf took %.0fs to stop the watchers of %s", took, "; ".join(sorted(redundant)[:20]))
    for toggle in list(ensemble.operator_indexed):
        if toggle.name in redundant:
            log.info("dropping the readiness of a watcher that is gone: %s", toggle.name)
            await ensemble.operator_indexed.drop_toggle(toggle)
    for namespace in sorted(gone):
        for forget in namespace_gone:
            forget(namespace)


async def _process_discovered_namespace_event(*, raw_event: Any, namespaces: Any, insights: Any, **kwargs: Any) -> None:
    if raw_event["type"] is not None:
        await _original_namespace_event(raw_event=raw_event, namespaces=namespaces, insights=insights, **kwargs)
        return
    # A listing (the watch's first, or one after a reconnection): kopf drops these.
    async with insights.revised:
        before = set(insights.namespaces)
        observation.revise_namespaces(raw_events=[raw_event], insights=insights, namespaces=namespaces)
        if insights.namespaces != before:
            log.info("namespaces changed while kopf was not watching: %s", raw_event["object"]["metadata"]["name"])
            insights.revised.notify_all()


def held(ensemble: Any) -> list[str]:
    """What holds kopf's readiness: each toggle not yet dropped, with its watcher's state."""
    tasks = {_watcher_name(key): task for key, task in ensemble.watcher_tasks.items()}
    out = []
    for toggle in ensemble.operator_indexed:
        if toggle.is_on():
            continue
        task = tasks.get(toggle.name)
        state = "no watcher" if task is None else "watcher done" if task.done() else "watcher running"
        out.append(f"{toggle.name} ({state})")
    return sorted(out)


async def report_held_readiness(interval: float = 5.0, after: float = 15.0) -> None:
    """Log a warning, every ``after`` seconds, while kopf holds new handlers for want of a listing."""
    since: float | None = None
    reported = 0.0
    while True:
        await asyncio.sleep(interval)
        names = held(_ensemble) if _ensemble is not None else []
        now = time.monotonic()
        if not names:
            if since is not None and reported:
                log.warning("handlers run again after %.0fs", now - since)
            since, reported = None, 0.0
            continue
        since = since or now
        if now - since >= after and now - reported >= after:
            reported = now
            log.warning("kopf holds new handlers for %.0fs, waiting on: %s", now - since, "; ".join(names[:20]))


def install() -> None:
    orchestration.terminate_redundancies = _terminate_redundancies  # type: ignore[assignment]
    # namespace_observer looks this name up in its module at each start of the namespace watch.
    observation.process_discovered_namespace_event = _process_discovered_namespace_event  # type: ignore[assignment]
