"""Notifications: which decisions make one (core), and how they are delivered (controller/notify.py).

The core cases run real ``decide`` decisions; the delivery cases POST to a real
aiohttp server on loopback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from test_rollout import CANARY5, MIN, PAUSES, SPEC, T0, WAITING, C, S, analysis, at_step, obs, verdict

from inferstack.api.v1alpha1 import NotificationEvent
from inferstack.controller import metrics
from inferstack.controller.notify import Notifier
from inferstack.core.config import NotificationsConfig, WebhookConfig
from inferstack.core.gates import GateVerdict, Verdict
from inferstack.core.notifications import Notification, SecretKey, Target, notifications, targets
from inferstack.core.rollout import RolloutState, decide


def kinds(before: RolloutState, **kw: Any) -> list[Notification]:
    now = kw.pop("now", T0 + 10 * MIN)
    spec = kw.pop("spec", SPEC)
    d = decide(spec, before, obs(**kw), now)
    return notifications("team", "bot", spec, before, d, now)


def test_a_promotion_notifies_once_with_both_revisions() -> None:
    last = at_step(3, weight=75, ramp_weight=75, last_analysis_at=T0, verdicts=(verdict(),))
    [n] = kinds(last, analysis=analysis(T0 + 10 * MIN, verdict(slice_="billing"), verdict()))
    assert (n.kind, n.revision, n.stable, n.previous_stable) == (NotificationEvent.PROMOTED, C, C, S)
    p = n.payload()
    assert p["kind"] == "Promoted" and p["stack"] == "bot" and p["namespace"] == "team" and "gate" not in p
    assert "promoted" in p["text"] and C in p["text"]


def test_a_gate_rollback_names_gate_slice_value_and_interval() -> None:
    failing = GateVerdict("quality", "billing", Verdict.FAIL, 0.0, 1.0, "> -0.1", 40, "msg", 400, -1.0, -1.2, -0.8)
    before = at_step(1, weight=5, failures={"quality/billing": 1}, last_analysis_at=T0 + MIN, verdicts=(verdict(),))
    [n] = kinds(before, analysis=analysis(T0 + 10 * MIN, failing, verdict()))
    g = n.payload()["gate"]
    assert n.kind == NotificationEvent.ROLLED_BACK and n.reason == "GateFailed" and n.stable == S
    assert (g["name"], g["slice"], g["value"], g["baseline"], g["delta"], g["interval"]) == ("quality", "billing", 0.0, 1.0, -1.0, [-1.2, -0.8])
    assert "gate quality, slice billing" in n.text() and "[-1.2, -0.8]" in n.text()


def test_pods_past_the_progress_deadline_are_stuck() -> None:
    [n] = kinds(WAITING, ready=(S,), now=T0 + timedelta(minutes=21))
    assert n.kind == NotificationEvent.STUCK and n.reason == "ProgressDeadlineExceeded" and n.revision == C


def test_an_indefinite_pause_step_asks_for_a_human_once() -> None:
    canary = at_step(0, weight=10, last_analysis_at=T0 + 5 * MIN, verdicts=(verdict(),))
    now = T0 + 10 * MIN
    first = decide(PAUSES, canary, obs(analysis=analysis(now, verdict())), now)
    [n] = notifications("team", "bot", PAUSES, canary, first, now)
    assert n.kind == NotificationEvent.AWAITING_PROMOTION and n.step == "step 2/4 (pause)"
    # The next pass decides from the recorded pause: nothing new to tell.
    again = decide(PAUSES, first.state, obs(), now + MIN)
    assert notifications("team", "bot", PAUSES, first.state, again, now + MIN) == []


def test_a_step_or_a_held_rollout_notifies_nobody() -> None:
    assert kinds(CANARY5, now=T0 + 2 * MIN) == []
    assert kinds(RolloutState(stable=S), revision=S) == []


def test_targets_filter_by_event_and_keep_secrets_as_names() -> None:
    from inferstack.api.v1alpha1 import Webhook

    stack = [
        Webhook.model_validate({"name": "ops", "urlSecretRef": {"name": "hook", "key": "url"}, "events": ["RolledBack"]}),
        Webhook.model_validate({"name": "all", "url": "http://x/y", "tokenSecretRef": {"name": "tok"}}),
    ]
    cluster = [WebhookConfig.model_validate({"name": "sre", "url": "http://z", "events": ["Stuck"]})]
    assert [t.name for t in targets("team", NotificationEvent.ROLLED_BACK, stack, cluster)] == ["stack/ops", "stack/all"]
    assert [t.name for t in targets("team", NotificationEvent.STUCK, stack, cluster)] == ["stack/all", "cluster/sre"]
    ops = targets("team", NotificationEvent.ROLLED_BACK, stack, cluster)[0]
    assert ops.url is None and ops.url_secret == SecretKey("team", "hook", "url")
    with pytest.raises(ValueError, match="exactly one of url and urlSecretRef"):
        WebhookConfig.model_validate({"name": "x"})


# ------------------------------------------------------------------ delivery


class FakeKube:
    def __init__(self, secrets: dict[tuple[str, str, str], str]) -> None:
        self.secrets = secrets

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        return self.secrets.get((namespace, name, key))


TOKEN = "s3cr3t-token-value"


async def receiver(statuses: list[int]) -> tuple[web.AppRunner, str, list[tuple[dict, str]]]:
    """A webhook answering ``statuses`` in turn (then 200), recording (body, Authorization)."""
    got: list[tuple[dict, str]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((await request.json(), request.headers.get("Authorization", "")))
        return web.Response(status=statuses.pop(0) if statuses else 200)

    app = web.Application()
    app.router.add_post("/hook/{token}", hook)
    runner = web.AppRunner(app, access_log=None)  # the receiver's own log is not the operator's
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/hook/{TOKEN}", got


def note() -> Notification:
    return Notification(NotificationEvent.ROLLED_BACK, "team", "bot", C, S, S, "Aborted", "aborted by command", T0)


async def until(check, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def counted(name: str, **labels: str) -> float:
    return metrics.NOTIFICATIONS_DROPPED.labels(**labels)._value.get() if name == "dropped" else metrics.NOTIFICATIONS.labels(**labels)._value.get()


async def test_delivery_retries_5xx_with_backoff_and_sends_url_and_token_from_secrets(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    runner, url, got = await receiver([503, 500])
    kube = FakeKube({("team", "hook", "url"): url + "\n", ("team", "tok", "token"): TOKEN})
    notifier = Notifier(NotificationsConfig(backoff_seconds=0.05), kube)  # type: ignore[arg-type]
    retried = counted("n", kind="RolledBack", result="retried")
    try:
        notifier.submit(note(), [Target("stack/ops", None, SecretKey("team", "hook", "url"), SecretKey("team", "tok", "token"))])
        await until(lambda: len(got) == 3)
        assert [b["id"] for b, _ in got] == [note().id] * 3  # one id for every attempt
        assert got[-1][1] == f"Bearer {TOKEN}" and got[-1][0]["kind"] == "RolledBack"
        assert counted("n", kind="RolledBack", result="retried") == retried + 2
    finally:
        await notifier.close()
        await runner.cleanup()
    assert TOKEN not in caplog.text and "127.0.0.1" not in caplog.text


async def test_a_4xx_is_final_and_a_full_queue_drops_without_waiting() -> None:
    runner, url, got = await receiver([404])
    notifier = Notifier(NotificationsConfig(queue_size=1, backoff_seconds=0.05), FakeKube({}))  # type: ignore[arg-type]
    undeliverable, full = counted("dropped", reason="undeliverable"), counted("dropped", reason="queue_full")
    try:
        notifier.submit(note(), [Target("stack/a", url, None, None)])
        await until(lambda: len(got) == 1)
        await until(lambda: counted("dropped", reason="undeliverable") == undeliverable + 1)
        await asyncio.sleep(0.2)
        assert len(got) == 1  # not retried
        # Workers busy elsewhere: the second delivery of one submit finds the queue full.
        notifier.submit(note(), [Target("stack/b", "http://127.0.0.1:9/x", None, None)] * 3)
        assert counted("dropped", reason="queue_full") >= full + 1
        # A Secret key that does not exist is final too.
        notifier.submit(note(), [Target("stack/c", None, SecretKey("team", "none", "url"), None)])
    finally:
        await notifier.close()
        await runner.cleanup()


def test_payload_is_json_with_slack_text() -> None:
    p = json.loads(json.dumps(note().payload()))
    assert p["schema"] == "inferstack.dev/notification/v1" and p["text"].startswith(":rotating_light: team/bot")
    assert "gate" not in p  # an abort names no gate
