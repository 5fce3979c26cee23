import json
import os
from pathlib import Path

import pytest

from inferstack.router.metrics import RouterMetrics
from inferstack.router.plansource import (
    AmbiguousModel,
    FilePlanSource,
    PlanError,
    PlanStore,
    UnknownModel,
    parse_plan,
)


def plan_json(stack: str = "support", namespace: str = "team-a", serial: int = 1, **extra) -> dict:
    return {
        "stack": stack,
        "namespace": namespace,
        "serial": serial,
        "stable": {"revision": "rev-a", "url": "http://127.0.0.1:1", "servedModel": "m", "cacheNamespace": "c"},
        **extra,
    }


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"{", id="not-json"),
        pytest.param(json.dumps({**plan_json(), "candidateWeight": 10}), id="weight-without-candidate"),
        pytest.param(json.dumps({**plan_json(), "candidateWeight": 101}), id="weight-over-100"),
        pytest.param(json.dumps({**plan_json(), "surprise": 1}), id="unknown-field"),
        pytest.param(json.dumps({**plan_json(), "stable": {"revision": "r", "url": "ftp://x", "servedModel": "m",
                                                         "cacheNamespace": "c"}}), id="bad-url"),
        pytest.param(json.dumps({**plan_json(), "stable": {**plan_json()["stable"], "retrieval": {
            "embeddingUrl": "http://e", "embeddingModel": "m", "dimension": 4, "index": "docs", "indexVersion": "v1",
            "storeSecretRef": {"name": "s", "key": "dsn"}}}}), id="store-dsn-not-read"),
    ],
)
def test_malformed_plans_are_rejected(bad: str | bytes) -> None:
    with pytest.raises(PlanError):
        parse_plan(bad)


def test_older_serials_are_ignored_equal_ones_applied() -> None:
    store = PlanStore()
    assert store.apply(parse_plan(json.dumps(plan_json(serial=5))))
    assert not store.apply(parse_plan(json.dumps(plan_json(serial=4))))
    assert store.apply(parse_plan(json.dumps(plan_json(serial=5, shadowPercent=0))))
    assert store.get("team-a/support").serial == 5


def test_resolve_by_name_or_namespaced_name() -> None:
    store = PlanStore()
    store.apply(parse_plan(json.dumps(plan_json(namespace="a"))))
    assert store.resolve("support").namespace == "a"
    store.apply(parse_plan(json.dumps(plan_json(namespace="b"))))
    with pytest.raises(AmbiguousModel):
        store.resolve("support")
    assert store.resolve("b/support").namespace == "b"
    store.remove("a/support")
    assert store.resolve("support").namespace == "b"
    with pytest.raises(UnknownModel):
        store.resolve("a/support")


def write(path: Path, data: str) -> None:
    # Atomic like a real writer, so the poller never reads half a file; bump
    # mtime explicitly because two writes can land in one timestamp tick.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(data)
    os.replace(tmp, path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_file_source_keeps_last_good_plan_and_removes_deleted_files(tmp_path: Path) -> None:
    metrics = RouterMetrics()
    store = PlanStore()
    source = FilePlanSource(tmp_path, metrics)
    good = tmp_path / "support.json"
    write(good, json.dumps(plan_json(serial=1)))
    source.scan(store)
    assert store.get("team-a/support").serial == 1

    write(good, json.dumps({**plan_json(serial=2), "candidateWeight": 50}))  # rejected whole
    source.scan(store)
    assert store.get("team-a/support").serial == 1
    assert metrics.registry.get_sample_value("inferstack_router_plan_errors_total", {"source": str(good)}) == 1

    write(good, json.dumps(plan_json(serial=3)))
    source.scan(store)
    assert store.get("team-a/support").serial == 3

    good.unlink()
    source.scan(store)
    assert len(store) == 0
