"""Where the router's API keys come from: key Secrets through the Kubernetes API, or a file.

* :class:`KubeKeySource`: lists and watches Secrets labelled
  ``inferstack.dev/api-key=true`` in one namespace, or in all of them, with
  the official client in a daemon thread, like the plan source: list, watch
  from its resourceVersion, re-list at once on 410, back off with jitter on
  other errors while the keys already known keep working. Every change goes to
  the :class:`~inferstack.router.auth.KeyTable` on the event loop's thread.
  Only the label-selected Secrets are ever listed, and only their ``sha256``,
  ``tenant`` and ``stacks`` are read. ``--api-key-namespaces a,b`` runs one
  source (one watch) per namespace, so the router needs ``list, watch`` on
  Secrets of those namespaces only (a Role in each); a re-list of one
  namespace replaces that namespace's keys and leaves the others'.
* :class:`FileKeySource` (``--api-key-file``): a JSON list of
  ``{"namespace", "name", "sha256", "tenant", "stacks"}`` (plain text values),
  polled for changes. For local runs and tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferstack.core.apikeys import API_KEY_SELECTOR
from inferstack.router.auth import KeyTable

log = logging.getLogger(__name__)


class KubeKeySource:
    def __init__(
        self,
        table: KeyTable,
        *,
        namespace: str | None = None,
        kubeconfig: str | None = None,
        in_cluster: bool = False,
        api_factory: Callable[[], Any] | None = None,
        watch_timeout: int = 300,
        backoff: tuple[float, float] = (0.5, 30.0),
    ) -> None:
        self.table = table
        self.namespace = namespace
        self._api_factory = api_factory or (lambda: _default_api(kubeconfig, in_cluster))
        self.watch_timeout = watch_timeout
        self.backoff_min, self.backoff_max = backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ready = False  # the first list has reached the table

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        name = f"kube-key-source-{self.namespace}" if self.namespace else "kube-key-source"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 1.0)

    # ------------------------------------------------------------ the thread

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop closed: the router is shutting down
            self._stop.set()

    @property
    def _scope(self) -> str:
        return f"in namespace {self.namespace}" if self.namespace else "in every namespace"

    def _list_call(self, api: Any) -> tuple[Callable[..., Any], tuple[str, ...]]:
        # The bound method itself: Watch reads its docstring to learn the type of events.
        if self.namespace:
            return api.list_namespaced_secret, (self.namespace,)
        return api.list_secret_for_all_namespaces, ()

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        delay = self.backoff_min
        api = None
        resource_version: str | None = None
        while not self._stop.is_set():
            try:
                if api is None:
                    api = self._api_factory()
                if resource_version is None:
                    resource_version = self._list(api)
                resource_version = self._watch_from(api, resource_version)
                delay = self.backoff_min
            except ApiException as exc:
                if exc.status == 410:
                    log.info("API-key watch %s expired (410), re-listing", self._scope)
                    resource_version = None
                    continue
                log.warning("API-key watch %s failed (HTTP %s), keeping the keys known: %s", self._scope, exc.status, exc.reason)
                self._backoff(delay)
                delay = min(delay * 2, self.backoff_max)
            except Exception as exc:
                log.warning("API-key watch %s failed, keeping the keys known: %s", self._scope, type(exc).__name__)
                self._backoff(delay)
                delay = min(delay * 2, self.backoff_max)

    def _backoff(self, delay: float) -> None:
        self._stop.wait(delay + random.uniform(0, delay / 2))

    def _listed(self, items: list[tuple[str, str, dict[str, str] | None]]) -> None:
        self.table.replace_all(items, self.namespace)
        self.ready = True

    def _list(self, api: Any) -> str:
        fn, args = self._list_call(api)
        result = fn(*args, label_selector=API_KEY_SELECTOR, _request_timeout=30)
        items = [(s.metadata.namespace, s.metadata.name, s.data) for s in result.items]
        self._post(self._listed, items)
        return str(result.metadata.resource_version)

    def _watch_from(self, api: Any, resource_version: str) -> str:
        from kubernetes import watch

        self._watch = w = watch.Watch()
        fn, args = self._list_call(api)
        stream = w.stream(
            fn, *args,
            label_selector=API_KEY_SELECTOR,
            resource_version=resource_version,
            timeout_seconds=self.watch_timeout,
            allow_watch_bookmarks=True,
            _request_timeout=self.watch_timeout + 30,
        )  # fmt: skip
        for event in stream:
            if self._stop.is_set():
                w.stop()
                break
            obj = event["object"]
            meta = getattr(obj, "metadata", None)
            if meta is None:
                continue
            if meta.resource_version:
                resource_version = meta.resource_version
            if event["type"] in ("ADDED", "MODIFIED"):
                self._post(self.table.upsert, meta.namespace, meta.name, obj.data)
            elif event["type"] == "DELETED":
                self._post(self.table.delete, meta.namespace, meta.name)
        return resource_version


def _default_api(kubeconfig: str | None, in_cluster: bool) -> Any:
    from inferstack.router.kubesource import default_api

    return default_api(kubeconfig, in_cluster)


class FileKeySource:
    """Keys from a JSON file (plain values, not base64), re-read when it changes."""

    def __init__(self, path: str | Path, table: KeyTable, interval: float = 0.5) -> None:
        self.path = Path(path)
        self.table = table
        self.interval = interval
        self._signature: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = False

    def scan(self) -> None:
        try:
            stat = self.path.stat()
            if (stat.st_mtime_ns, stat.st_size) == self._signature:
                return
            self._signature = (stat.st_mtime_ns, stat.st_size)
            entries = json.loads(self.path.read_bytes())
            if not isinstance(entries, list):
                raise ValueError("not a JSON list")
            items = [
                (str(e.get("namespace", "")), str(e.get("name", i)),
                 {k: base64.b64encode(str(e[k]).encode()).decode() for k in ("sha256", "tenant", "stacks") if k in e})
                for i, e in enumerate(entries) if isinstance(e, dict)
            ]  # fmt: skip
        except (OSError, ValueError) as exc:
            log.error("cannot read the API-key file %s, keeping the keys known: %s", self.path, type(exc).__name__)
            return
        self.table.replace_all(items)
        self.ready = True

    async def start(self) -> None:
        self.scan()
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.scan()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
