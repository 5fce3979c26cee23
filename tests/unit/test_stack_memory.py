"""What a stack costs the operator in memory: its loop keeps no kopf event, and one copy of its body."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from kopf._core.actions import execution
from kopf._core.engines import posting
from kopf._core.reactor import subhandling

from inferstack.controller import handlers


def test_the_per_event_variables_are_kopfs() -> None:
    """The names the loop's context leaves out are kopf's per-event variables (kopf is pinned; this catches a rename)."""
    kopf_vars = [
        execution.cause_var, execution.handler_var, execution.sublifecycle_var, execution.subrefs_var,
        execution.subsettings_var, subhandling.subregistry_var, subhandling.subexecuted_var,
    ]  # fmt: skip
    assert {v.name for v in kopf_vars} == handlers.KOPF_PER_EVENT_VARS
    assert posting.event_queue_var.name not in handlers.KOPF_PER_EVENT_VARS


async def test_a_stack_loop_does_not_keep_the_event_that_started_it(monkeypatch) -> None:
    """A loop started from a handler sees kopf's event queue (kopf.event posts to it) but not the handler's cause,
    which holds the stack's whole first body for as long as the loop runs."""
    seen: list[tuple[Any, Any]] = []
    passed = asyncio.Event()

    async def one_pass(body, indexes, emitted):
        seen.append((execution.cause_var.get(None), posting.event_queue_var.get(None)))
        passed.set()
        return handlers.PassResult()

    monkeypatch.setattr(handlers, "reconcile_once", one_pass)
    cause, queue = object(), asyncio.Queue()

    def handler() -> handlers.StackLoop:  # as kopf calls stack_changed: its variables set
        execution.cause_var.set(cause)  # type: ignore[arg-type]
        posting.event_queue_var.set(queue)
        return handlers.StackLoop(("ns", "s"), {"metadata": {"name": "s", "namespace": "ns"}}, ())

    loop = contextvars.copy_context().run(handler)
    try:
        await asyncio.wait_for(passed.wait(), 5)
    finally:
        loop.stop()
        await asyncio.gather(loop.task, return_exceptions=True)
    assert seen == [(None, queue)]


def _stack(rv: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "s", "namespace": "ns", "resourceVersion": rv, **extra}, "spec": {}, "status": {}}


async def _run_passes(monkeypatch, loop_body: dict[str, Any], patched: list[dict[str, Any] | None], resync: float = 5.0) -> handlers.StackLoop:
    """A StackLoop whose passes return ``patched`` in turn (the bodies its status patches got back)."""
    answers = list(patched)
    done = asyncio.Event()

    async def one_pass(body, indexes, emitted):
        if not answers:
            done.set()
            await asyncio.Event().wait()
        return handlers.PassResult(patched=answers.pop(0))

    monkeypatch.setattr(handlers, "reconcile_once", one_pass)
    monkeypatch.setattr(handlers.Runtime, "config", handlers.Runtime.config.model_copy(update={"resync_seconds": resync}))
    loop = handlers.StackLoop(("ns", "s"), loop_body, ())
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        loop.stop()
        await asyncio.gather(loop.task, return_exceptions=True)
    return loop


async def test_the_version_the_watch_brought_first_is_not_copied_again(monkeypatch) -> None:
    """The watch's copy of the version a pass wrote is kept (the one Runtime.stacks holds), not a second one."""
    watched = handlers.slim(_stack("7"))
    loop = await _run_passes(monkeypatch, watched, [_stack("7", managedFields=[{"manager": "x"}])], resync=0.01)
    assert loop.body is watched


async def test_a_pass_that_wrote_a_newer_version_decides_next_from_it_without_managed_fields(monkeypatch) -> None:
    loop = await _run_passes(monkeypatch, handlers.slim(_stack("7")), [_stack("9", managedFields=[{"manager": "x"}]), None], resync=0.01)
    assert loop.body["metadata"]["resourceVersion"] == "9" and "managedFields" not in loop.body["metadata"]


async def test_the_resync_wakes_a_loop_nothing_else_wakes(monkeypatch) -> None:
    """Three passes without a single wake-up: the resync alone (here 10 ms) runs them."""
    loop = await _run_passes(monkeypatch, handlers.slim(_stack("7")), [None, None, None], resync=0.01)
    assert not loop.wake.is_set()
