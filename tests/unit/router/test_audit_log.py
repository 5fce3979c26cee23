"""router/audit.py's AuditLog: lines queued by the event loop, written by a thread, dropped and counted past the bound."""

from __future__ import annotations

import io
import json

from prometheus_client import CollectorRegistry

from inferstack.router.audit import AuditLog


def test_lines_are_written_in_order_and_a_full_queue_drops_and_counts() -> None:
    registry = CollectorRegistry()
    stream = io.BytesIO()
    log = AuditLog(True, registry, stream=stream, queue_limit=3)
    for i in range(5):  # no writer yet: the queue holds 3, the rest are dropped
        log.write({"event": "request", "n": i})
    assert registry.get_sample_value("inferstack_router_audit_dropped_total") == 2
    log.start()
    log.stop()
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [0, 1, 2]
    assert registry.get_sample_value("inferstack_router_audit_lines_total") == 3


def test_a_running_log_writes_everything_queued_before_stop() -> None:
    stream = io.BytesIO()
    log = AuditLog(True, CollectorRegistry(), stream=stream)
    log.start()
    for i in range(2000):
        log.write({"n": i, "big": 2**70})  # an integer past 64 bits: json writes it
    log.stop()
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["n"] for line in lines] == list(range(2000))
    assert json.loads(lines[0])["big"] == 2**70


def test_a_disabled_log_writes_nothing() -> None:
    stream = io.BytesIO()
    log = AuditLog(False, CollectorRegistry(), stream=stream)
    log.start()
    log.write({"n": 1})
    log.stop()
    assert stream.getvalue() == b""
