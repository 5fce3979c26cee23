"""The router's plans: the table in force, the rules for accepting one, and where they come from.

* :class:`PlanStore`: the plans in force by ``namespace/stack``, and which
  stack an OpenAI ``model`` value names.
* :func:`parse_plan`: a plan is accepted whole or rejected whole.
* :class:`PlanSource`: what feeds the store while the router runs;
  :class:`FilePlanSource` (here) polls a file or a directory, for local runs
  and tests. The Kubernetes source (list + watch of ConfigMaps) is
  :class:`inferstack.router.kubesource.KubePlanSource`, in a module of its own
  because the kubernetes client is slow to import and a file source needs none of it.

The plan itself (schema, and how the operator builds it) is
:mod:`inferstack.core.trafficplan`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from inferstack.core.trafficplan import TrafficPlan
from inferstack.router.metrics import RouterMetrics

log = logging.getLogger(__name__)

Listener = Callable[[str, TrafficPlan | None], None]


class PlanError(ValueError):
    """A plan that does not parse or validate; the whole plan is rejected."""


def parse_plan(text: str | bytes) -> TrafficPlan:
    try:
        plan = TrafficPlan.model_validate_json(text)
    except ValidationError as exc:
        raise PlanError(validation_summary(exc)) from None
    for bundle in filter(None, (plan.stable, plan.candidate)):
        if bundle.api_key_secret_ref is not None and not bundle.api_key:
            # Serving without the token would turn every request into a 401.
            ref = bundle.api_key_secret_ref
            raise PlanError(f"revision {bundle.revision}: token from Secret {ref.name} key {ref.key} could not be read")
        if bundle.retrieval is not None and not bundle.retrieval.store_dsn:
            # Searching without the store's address cannot work: keep the last good plan.
            ref = bundle.retrieval.store_secret_ref
            raise PlanError(f"revision {bundle.revision}: store DSN from Secret {ref.name} key {ref.key} could not be read")
    return plan


def validation_summary(exc: ValidationError) -> str:
    """Where and what kind of error, never the input: a plan's ``input_value`` can hold an endpoint token."""
    where = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(plan)'}: {e['type']}" for e in exc.errors()[:10])
    more = exc.error_count() - 10
    return f"{exc.error_count()} validation error(s): {where}" + (f"; and {more} more" if more > 0 else "")


class UnknownModel(LookupError):
    pass


class AmbiguousModel(LookupError):
    pass


class PlanStore:
    """Plans by ``namespace/stack``. Only touched from the event loop's thread.

    A plan with a lower serial than the one in force is ignored: a slow or
    replayed watch event must never roll traffic back behind the operator.
    Equal serials are applied, so a re-list is harmless.
    """

    def __init__(self) -> None:
        self._plans: dict[str, TrafficPlan] = {}
        self._by_name: dict[str, set[str]] = {}
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(key, plan)`` on every applied plan and ``(key, None)`` on removal."""
        self._listeners.append(listener)

    def __len__(self) -> int:
        return len(self._plans)

    def plans(self) -> list[TrafficPlan]:
        return [self._plans[k] for k in sorted(self._plans)]

    def get(self, key: str) -> TrafficPlan | None:
        return self._plans.get(key)

    def apply(self, plan: TrafficPlan) -> bool:
        current = self._plans.get(plan.key)
        if current is not None and plan.serial < current.serial:
            log.warning("ignoring plan %s serial %d: serial %d is in force", plan.key, plan.serial, current.serial)
            return False
        self._plans[plan.key] = plan
        self._by_name.setdefault(plan.stack, set()).add(plan.key)
        if current is None or current != plan:
            log.info("plan %s serial %d: stable %s, candidate %s at %d%%, shadow %d%%", plan.key, plan.serial,
                     plan.stable.revision, plan.candidate.revision if plan.candidate else "-",
                     plan.candidate_weight, plan.shadow_percent)
        for listener in self._listeners:
            listener(plan.key, plan)
        return True

    def remove(self, key: str) -> None:
        plan = self._plans.pop(key, None)
        if plan is None:
            return
        names = self._by_name.get(plan.stack, set())
        names.discard(key)
        if not names:
            self._by_name.pop(plan.stack, None)
        log.info("plan %s removed", key)
        for listener in self._listeners:
            listener(key, None)

    def resolve(self, model: str) -> TrafficPlan:
        """The plan for an OpenAI ``model`` value: ``namespace/name`` or a unique ``name``."""
        if "/" in model:
            plan = self._plans.get(model)
            if plan is None:
                raise UnknownModel(model)
            return plan
        keys = self._by_name.get(model)
        if not keys:
            raise UnknownModel(model)
        if len(keys) > 1:
            raise AmbiguousModel(f"{model} exists in several namespaces: use one of {', '.join(sorted(keys))}")
        return self._plans[next(iter(keys))]


# ---------------------------------------------------------------- sources


class PlanSource(Protocol):
    """Feeds a :class:`PlanStore` while the router runs; ``start`` returns once running."""

    async def start(self, store: PlanStore) -> None: ...

    async def stop(self) -> None: ...


class FilePlanSource:
    """Plans from a JSON file or a directory of ``*.json`` files, polled for changes.

    Polling (by mtime and size) rather than inotify: it is for local runs and
    tests, and it behaves the same on every filesystem. A file that no longer
    parses keeps its last good plan; a removed file removes its stack.
    """

    def __init__(self, path: str | Path, metrics: RouterMetrics, interval: float = 0.5) -> None:
        self.path = Path(path)
        self.metrics = metrics
        self.interval = interval
        self._seen: dict[Path, tuple[int, int]] = {}
        self._keys: dict[Path, str] = {}
        self._task: asyncio.Task[None] | None = None

    def _files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.glob("*.json") if p.is_file())
        return [self.path] if self.path.is_file() else []

    def scan(self, store: PlanStore) -> None:
        """One poll: apply new or changed files, remove stacks whose file is gone."""
        files = self._files()
        for path in files:
            try:
                stat = path.stat()
                signature = (stat.st_mtime_ns, stat.st_size)
                if self._seen.get(path) == signature:
                    continue
                self._seen[path] = signature
                plan = parse_plan(path.read_bytes())
            except (OSError, PlanError) as exc:
                log.error("rejected plan file %s, keeping the last good plan: %s", path, exc)
                self.metrics.plan_errors.labels(str(path)).inc()
                continue
            old_key = self._keys.get(path)
            if old_key is not None and old_key != plan.key:
                store.remove(old_key)
            self._keys[path] = plan.key
            store.apply(plan)
        for path in set(self._keys) - set(files):
            store.remove(self._keys.pop(path))
            self._seen.pop(path, None)

    async def start(self, store: PlanStore) -> None:
        self.scan(store)
        self._task = asyncio.get_running_loop().create_task(self._poll(store))

    async def _poll(self, store: PlanStore) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.scan(store)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
