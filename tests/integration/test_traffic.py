"""Stickiness across router replicas, and plan switches under load."""

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from .harness import Proc, plan, write_plan

pytestmark = pytest.mark.timeout(90)

USERS = [f"user-{i}" for i in range(60)]


async def revisions(router: Proc) -> dict[str, str]:
    body = {"model": "support", "messages": [{"role": "user", "content": "Who are you?"}]}
    async with aiohttp.ClientSession(headers=router.auth) as session:
        out = {}
        for user in USERS:
            async with session.post(router.url + "/v1/chat/completions", json=body, headers={"x-user-id": user}) as resp:
                assert resp.status == 200
                out[user] = resp.headers["x-inferstack-revision"]
        return out


async def test_same_user_same_revision_on_two_routers(procs, backends, tmp_path: Path) -> None:
    stable, candidate = backends
    path = tmp_path / "plan.json"
    write_plan(path, plan(stable, candidate, candidateWeight=30))
    one, two = procs.router(path), procs.router(path)
    first, second = await revisions(one), await revisions(two)
    assert first == second
    assert set(first.values()) == {"rev-a", "rev-b"}  # both sides are exercised
    # Growing the weight keeps every canary user on the candidate.
    write_plan(path, plan(stable, candidate, serial=2, candidateWeight=60))
    deadline = time.monotonic() + 10
    while (grown := await revisions(two)) == second:
        assert time.monotonic() < deadline, "router did not pick up the new plan"
    assert {u for u, r in first.items() if r == "rev-b"} <= {u for u, r in grown.items() if r == "rev-b"}


async def test_plan_switches_under_load_fail_no_request(procs, backends, tmp_path: Path) -> None:
    stable, candidate = backends
    path = tmp_path / "plan.json"
    write_plan(path, plan(stable, candidate, candidateWeight=0))
    router = procs.router(path)
    outcomes: Counter[tuple[int, str]] = Counter()
    stop = asyncio.Event()

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            stream = i % 2 == 0
            body = {"model": "support", "stream": stream, "messages": [{"role": "user", "content": "Where is my parcel?"}]}
            async with session.post(router.url + "/v1/chat/completions", json=body,
                                    headers={"x-user-id": f"w{n}-{i % 7}"}) as resp:
                text = await resp.text()
                ok = resp.status == 200 and ("[DONE]" in text if stream else '"choices"' in text)
                outcomes[(resp.status if ok else -resp.status, resp.headers.get("x-inferstack-revision", ""))] += 1

    async with aiohttp.ClientSession(headers=router.auth) as session:
        tasks = [asyncio.create_task(worker(session, n)) for n in range(8)]
        # shadow, canary 5, 25, 100, then roll back: each one write of one file.
        steps = [dict(shadowPercent=50), dict(candidateWeight=5), dict(candidateWeight=25),
                 dict(candidateWeight=100), dict(candidateWeight=0)]
        for serial, fields in enumerate(steps, start=2):
            await asyncio.sleep(0.4)
            write_plan(path, plan(stable, candidate, serial=serial, **fields))
        await asyncio.sleep(0.4)
        stop.set()
        await asyncio.gather(*tasks)

    failures = {k: v for k, v in outcomes.items() if k[0] != 200}
    assert not failures, failures
    assert outcomes[(200, "rev-b")] > 0 and outcomes[(200, "rev-a")] > 0
    assert sum(outcomes.values()) > 100
