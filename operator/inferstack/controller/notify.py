"""Webhook delivery of notifications, off the reconcile path.

``Notifier.submit`` only puts deliveries on a bounded in-memory queue and
returns: a reconcile pass never waits for a webhook. Workers POST them; a
failure (connection error, timeout, 408, 429, 5xx) is retried with doubling
backoff up to ``maxAttempts``, other 4xx are final. A full queue drops the
new delivery; every drop and every final failure is counted in
``inferstack_operator_notifications_dropped_total{reason}``.

URLs and tokens may be secrets (a Slack webhook's URL is its token): they are
read from their Secrets at delivery and never logged. Logs and metrics name
the webhook (``stack/<name>``, ``cluster/<name>``), the stack and the kind;
an error is logged by its class alone, as aiohttp's messages carry the URL.
The guarantee (at most once per decision across restarts, retried while the
operator runs) is written down in ``core/notifications.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

import aiohttp

from inferstack.controller import metrics
from inferstack.controller.kube import Kube
from inferstack.core.config import NotificationsConfig
from inferstack.core.notifications import Notification, SecretKey, Target

log = logging.getLogger(__name__)
WORKERS = 2  # a slow receiver holds one worker, not every delivery
RETRYABLE = {408, 429}


@dataclass
class Delivery:
    target: Target
    kind: str
    where: str  # namespace/stack, for logs
    body: bytes
    attempt: int = 1


class Undeliverable(Exception):
    """Final: retrying cannot help (a missing Secret key, a 4xx)."""


class Notifier:
    def __init__(self, config: NotificationsConfig, kube: Kube) -> None:
        self.config = config
        self.kube = kube
        self.queue: asyncio.Queue[Delivery] = asyncio.Queue(maxsize=config.queue_size)
        self.tasks: list[asyncio.Task] = []
        self.session: aiohttp.ClientSession | None = None

    def submit(self, notification: Notification, targets: list[Target]) -> None:
        """Queue one delivery per target; never blocks, never raises."""
        if not targets:
            return
        self._start()
        body = json.dumps(notification.payload()).encode()
        where = f"{notification.namespace}/{notification.stack}"
        for target in targets:
            self._put(Delivery(target, notification.kind.value, where, body))

    def _put(self, delivery: Delivery) -> None:
        try:
            self.queue.put_nowait(delivery)
        except asyncio.QueueFull:
            metrics.NOTIFICATIONS_DROPPED.labels("queue_full").inc()
            log.warning("notification %s of %s to %s dropped: queue full", delivery.kind, delivery.where, delivery.target.name)

    def _start(self) -> None:
        # Lazily, inside kopf's event loop: the first notification starts the workers.
        if not self.tasks:
            self.tasks = [asyncio.create_task(self._work(), name=f"notify-{i}") for i in range(WORKERS)]

    async def _work(self) -> None:
        while True:
            delivery = await self.queue.get()
            try:
                await self._deliver(delivery)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end the worker
                log.exception("notification %s of %s to %s: unexpected error", delivery.kind, delivery.where, delivery.target.name)
            finally:
                self.queue.task_done()

    async def _secret(self, ref: SecretKey) -> str:
        value = await self.kube.read_secret_key(ref.namespace, ref.name, ref.key)
        if value is None:
            raise Undeliverable(f"Secret {ref.namespace}/{ref.name} has no key {ref.key}")
        return value.strip()

    async def _deliver(self, d: Delivery) -> None:
        t, cfg = d.target, self.config
        try:
            url = t.url if t.url is not None else await self._secret(t.url_secret)  # type: ignore[arg-type]
            headers = {"Content-Type": "application/json"}
            if t.token_secret is not None:
                headers["Authorization"] = f"Bearer {await self._secret(t.token_secret)}"
            if self.session is None:
                self.session = aiohttp.ClientSession()
            timeout = aiohttp.ClientTimeout(total=cfg.timeout_seconds)
            async with self.session.post(url, data=d.body, headers=headers, timeout=timeout, allow_redirects=False) as resp:
                status = resp.status
            if 200 <= status < 300:
                metrics.NOTIFICATIONS.labels(d.kind, "delivered").inc()
                log.info("notification %s of %s delivered to %s (attempt %d)", d.kind, d.where, t.name, d.attempt)
                return
            if status < 500 and status not in RETRYABLE:
                raise Undeliverable(f"HTTP {status}")
            why = f"HTTP {status}"
        except Undeliverable as e:
            metrics.NOTIFICATIONS_DROPPED.labels("undeliverable").inc()
            log.warning("notification %s of %s to %s not delivered: %s", d.kind, d.where, t.name, e)
            return
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            why = type(e).__name__  # never str(e): it names the URL
        except Exception as e:  # a refused Secret read (ApiException) and the like: retried
            why = type(e).__name__
        if d.attempt >= cfg.max_attempts:
            metrics.NOTIFICATIONS_DROPPED.labels("attempts").inc()
            log.warning("notification %s of %s to %s not delivered after %d attempts: %s", d.kind, d.where, t.name, d.attempt, why)
            return
        delay = min(cfg.backoff_seconds * 2 ** (d.attempt - 1), cfg.max_backoff_seconds)
        metrics.NOTIFICATIONS.labels(d.kind, "retried").inc()
        log.info("notification %s of %s to %s failed (%s); attempt %d in %.3gs", d.kind, d.where, t.name, why, d.attempt + 1, delay)
        d.attempt += 1
        # The wait is a timer, not a sleeping worker: other deliveries go on meanwhile.
        asyncio.get_running_loop().call_later(delay, self._put, d)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks = []
        if self.session is not None:
            await self.session.close()
            self.session = None
