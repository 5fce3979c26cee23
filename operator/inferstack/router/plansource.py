"""Where plans come from: the PlanSource interface and the file source for local runs and tests.

The Kubernetes source lives in :mod:`inferstack.router.kubesource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Protocol

from inferstack.router.metrics import RouterMetrics
from inferstack.router.plans import PlanError, PlanStore, parse_plan

log = logging.getLogger(__name__)


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
