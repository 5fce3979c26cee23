"""controller/handlers.apply_objects: a stack loop does not create again what it created a moment
ago and the watch has not shown yet (each such create was a 409 at 400 and 1,000 stacks)."""

from __future__ import annotations

from typing import Any

from inferstack.controller import handlers
from inferstack.core.reconcile import Actions

BODY = {"metadata": {"namespace": "team-a", "name": "shop"}}


class CountingKube:
    def __init__(self) -> None:
        self.created: list[str] = []

    async def create(self, manifest: dict[str, Any]) -> bool:
        self.created.append(f"{manifest['kind']}/{manifest['metadata']['name']}")
        return True


def revision_objects(rev: str) -> Actions:
    return Actions(create=[{"kind": kind, "metadata": {"namespace": "team-a", "name": f"shop-{rev}"}}
                           for kind in ("Service", "Deployment", "ControllerRevision")])  # fmt: skip


async def test_a_second_pass_before_the_watch_caught_up_creates_nothing() -> None:
    kube, created = CountingKube(), {}
    assert await handlers.apply_objects(kube, BODY, revision_objects("abc"), created) is None  # type: ignore[arg-type]
    assert await handlers.apply_objects(kube, BODY, revision_objects("abc"), created) is None  # type: ignore[arg-type]
    assert kube.created == ["Service/shop-abc", "Deployment/shop-abc", "ControllerRevision/shop-abc"]


async def test_once_the_watch_shows_the_objects_a_later_loss_is_created_again() -> None:
    kube, created = CountingKube(), {}
    await handlers.apply_objects(kube, BODY, revision_objects("abc"), created)  # type: ignore[arg-type]
    await handlers.apply_objects(kube, BODY, Actions(), created)  # type: ignore[arg-type]  # the watch shows them: nothing to create
    assert created == {}
    await handlers.apply_objects(kube, BODY, revision_objects("abc"), created)  # type: ignore[arg-type]  # someone deleted them
    assert len(kube.created) == 6


async def test_the_memory_lasts_a_bounded_time(monkeypatch) -> None:
    kube, created = CountingKube(), {}
    await handlers.apply_objects(kube, BODY, revision_objects("abc"), created)  # type: ignore[arg-type]
    monkeypatch.setattr(handlers.time, "monotonic", lambda: 10**9)  # long after CREATED_MEMORY_SECONDS
    await handlers.apply_objects(kube, BODY, revision_objects("abc"), created)  # type: ignore[arg-type]
    assert len(kube.created) == 6


async def test_without_a_memory_every_pass_creates() -> None:
    kube = CountingKube()
    await handlers.apply_objects(kube, BODY, revision_objects("abc"))  # type: ignore[arg-type]
    await handlers.apply_objects(kube, BODY, revision_objects("abc"))  # type: ignore[arg-type]
    assert len(kube.created) == 6
