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
