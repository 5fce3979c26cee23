"""What a stack costs the operator in memory: its loop keeps no kopf event, and one copy of its body."""

from __future__ import annotations

import asyncio
import contextvars
import copy
import json
from typing import Any, cast

from kopf._core.actions import execution
from kopf._core.engines import posting
from kopf._core.reactor import subhandling

from inferstack.controller import handlers
from inferstack.core.rollout import parse_command


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

    async def one_pass(body, indexes, emitted, created=None):
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


async def test_loops_started_by_the_leader_election_can_post_events(monkeypatch) -> None:
    """A standby that takes the lease starts its loops outside any kopf handler, where kopf has not
    set the queue kopf.event posts to: they get it from what the standby's handlers saw."""
    seen: list[Any] = []
    passed = asyncio.Event()

    async def one_pass(body, indexes, emitted, created=None):
        seen.append(posting.event_queue_var.get(None))
        passed.set()
        return handlers.PassResult()

    monkeypatch.setattr(handlers, "reconcile_once", one_pass)
    monkeypatch.setattr(handlers.Runtime, "stacks", {})
    monkeypatch.setattr(handlers.Runtime, "loops", {})
    monkeypatch.setattr(handlers.Runtime, "handler_context", None)
    monkeypatch.setattr(handlers, "leading", lambda: False)  # a standby: its handler only remembers the stack
    cause, queue = object(), asyncio.Queue()
    body = {"metadata": {"name": "s", "namespace": "ns", "resourceVersion": "1"}, "spec": {}}

    async def handler() -> None:  # as kopf calls stack_changed: its variables set
        execution.cause_var.set(cause)  # type: ignore[arg-type]
        posting.event_queue_var.set(queue)
        await handlers.stack_changed("ADDED", body, "ns", "s", None, None, None, None, None)

    await asyncio.create_task(handler(), context=contextvars.Context())
    assert not handlers.Runtime.loops and ("ns", "s") in handlers.Runtime.stacks
    # The lease taken, in the election's own task: no kopf variable there.
    contextvars.Context().run(handlers.start_all_loops)
    (loop,) = handlers.Runtime.loops.values()
    try:
        await asyncio.wait_for(passed.wait(), 5)
    finally:
        loop.stop()
        await asyncio.gather(loop.task, return_exceptions=True)
    assert seen == [queue]


def _stack(rv: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "s", "namespace": "ns", "resourceVersion": rv, **extra}, "spec": {}, "status": {}}


async def _run_passes(monkeypatch, loop_body: dict[str, Any], patched: list[dict[str, Any] | None], resync: float = 5.0) -> handlers.StackLoop:
    """A StackLoop whose passes return ``patched`` in turn (the bodies its status patches got back)."""
    answers = list(patched)
    done = asyncio.Event()

    async def one_pass(body, indexes, emitted, created=None):
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


def _watched(name: str, uid: str) -> dict[str, Any]:
    """A stack as the watch sends it: managedFields, kubectl's last-applied copy, a command."""
    spec = {"model": {"name": "Qwen/Qwen2.5-7B-Instruct", "gpus": 1, "engine": {"dtype": "auto", "extraArgs": []}}}
    body = {
        "apiVersion": "inferstack.dev/v1alpha1",
        "kind": "InferenceStack",
        "metadata": {
            "name": name, "namespace": "team-a", "uid": uid, "resourceVersion": "12", "generation": 1,
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": json.dumps({"spec": spec}) + "\n",
                "inferstack.dev/command": "promote", "inferstack.dev/command-id": "1",
            },
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": spec,
        "status": {"phase": "Healthy", "conditions": [{"type": "Ready", "status": "True", "message": "x" * 100}]},
    }  # fmt: skip
    return cast(dict[str, Any], json.loads(json.dumps(body)))  # strings of its own, as decoded from the watch


def test_a_kept_stack_is_the_watched_one_without_what_the_operator_never_reads() -> None:
    watched = _watched("s1", "u1")
    kept = handlers.slim(watched)
    want = copy.deepcopy(watched)
    del want["metadata"]["managedFields"], want["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
    assert kept == want
    assert watched["metadata"]["managedFields"] and len(watched["metadata"]["annotations"]) == 3  # the watch's own untouched
    assert parse_command(kept["metadata"]["annotations"]).key == "promote#1"  # type: ignore[union-attr]


def test_kept_stacks_share_their_keys_and_short_strings_not_their_containers() -> None:
    a, b = handlers.slim(_watched("s1", "u1")), handlers.slim(_watched("s2", "u2"))
    (ka,), (kb,) = ([k for k in x["spec"]["model"] if k == "name"] for x in (a, b))
    assert ka is kb and a["spec"]["model"]["engine"]["dtype"] is b["spec"]["model"]["engine"]["dtype"]
    assert a["spec"]["model"]["engine"]["extraArgs"] is not b["spec"]["model"]["engine"]["extraArgs"]
    a["status"]["conditions"][0]["status"] = "False"
    assert b["status"]["conditions"][0]["status"] == "True"


async def test_a_vanished_namespace_takes_its_stacks_loops_and_nothing_else(monkeypatch) -> None:
    async def one_pass(body, indexes, emitted, created=None):
        await asyncio.Event().wait()  # a pass that would retry its writes for ever

    monkeypatch.setattr(handlers, "reconcile_once", one_pass)
    monkeypatch.setattr(handlers.Runtime, "stacks", {})
    monkeypatch.setattr(handlers.Runtime, "loops", {})
    for key in (("gone", "a"), ("gone", "b"), ("kept", "a")):
        body = {"metadata": {"name": key[1], "namespace": key[0], "resourceVersion": "1"}, "spec": {}}
        handlers.Runtime.stacks[key] = body
        handlers.Runtime.loops[key] = handlers.StackLoop(key, body, ())
    stopped = [handlers.Runtime.loops[("gone", "a")], handlers.Runtime.loops[("gone", "b")]]
    handlers.forget_namespace("gone")
    assert set(handlers.Runtime.stacks) == set(handlers.Runtime.loops) == {("kept", "a")}
    await asyncio.gather(*(loop.task for loop in stopped), return_exceptions=True)
    assert all(loop.task.cancelled() for loop in stopped) and not handlers.Runtime.loops[("kept", "a")].task.done()
    handlers.Runtime.loops[("kept", "a")].stop()
    await asyncio.gather(handlers.Runtime.loops[("kept", "a")].task, return_exceptions=True)
