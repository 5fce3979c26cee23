"""Replay a golden set against the candidate and the stable revision; report in the termination message.

Configuration comes from the environment the operator put in the Job
(``core/golden.py``: ``INFERSTACK_GOLDEN_CONFIG`` and friends). Every case is
sent to both revisions exactly as the router would send a client's request
(``router.bundle.apply_bundle``: served model, system prompt, tools, cache
salt), with at most ``concurrency`` requests in flight per revision. Each
case is sent once per revision and never retried: a request that fails is
an error in the report, not a failure of the case.

Exit status: 0 once a report is written, whatever it says; 1 only when the
program could not run at all (then the report, if it could be written,
says why, and the Job fails: Inconclusive, the step holds).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import aiohttp

from inferstack.core import golden
from inferstack.core.trafficplan import RevisionBundle
from inferstack.router.bundle import apply_bundle
from inferstack.router.errors import UpstreamError, redact
from inferstack.router.proxy import parse_answer, read_bounded, send

log = logging.getLogger("inferstack.golden")

TENANT = "inferstack-golden"  # the cache salt's tenant: golden replays share no prefix cache with users
MAX_ANSWER_BYTES = 4 * 1024 * 1024


async def ask(
    session: aiohttp.ClientSession, limit: asyncio.Semaphore, bundle: RevisionBundle, case: golden.Case,
    request_id: str, timeout: float,
) -> str:
    """The answer text of ``bundle``'s revision to ``case``; raises on any failure."""
    body = apply_bundle({"messages": [dict(m) for m in case.messages], "temperature": 0}, bundle, TENANT, chat=True)
    async with limit:
        response = await send(
            session, bundle, "/v1/chat/completions", body,
            request_id=request_id, timeout=aiohttp.ClientTimeout(total=timeout),
        )  # fmt: skip
        try:
            if response.status != 200:
                detail = (await response.content.read(300)).decode(errors="replace")
                raise UpstreamError("upstream_status", 502, f"HTTP {response.status}: {detail}".strip())
            raw = await read_bounded(response, MAX_ANSWER_BYTES)
        finally:
            response.release()
    answer = parse_answer(raw)
    if answer.truncated:
        # Assertions on a prefix could pass a case the whole answer fails.
        raise UpstreamError("answer_too_long", 502, "answer longer than the checked prefix")
    return answer.text


async def run_case(
    session: aiohttp.ClientSession, limits: dict[str, asyncio.Semaphore], config: golden.RunnerConfig, case: golden.Case
) -> golden.CaseResult:
    async def one(role: str, bundle: RevisionBundle) -> tuple[bool | None, str]:
        # Deterministic id: the model server's logs tie each request to its case and replay.
        request_id = f"golden-{config.cases_hash[:8]}-{case.id}-{role}"
        try:
            text = await ask(session, limits[role], bundle, case, request_id, config.request_timeout_seconds)
        except Exception as e:  # an error, never a score
            # The report lands in the Job's status: the model server's words, never the endpoint's token.
            what = redact(e.detail, bundle.api_key) if isinstance(e, UpstreamError) else str(e)
            return None, f"{role}: {type(e).__name__}: {what}"[:300]
        return golden.passes(case, text), ""

    (cand, e1), (stab, e2) = await asyncio.gather(one("candidate", config.candidate), one("stable", config.stable))
    return golden.CaseResult(case, cand, stab, error="; ".join(e for e in (e1, e2) if e))


async def replay(config: golden.RunnerConfig, cases: list[golden.Case]) -> golden.Report:
    limits = {role: asyncio.Semaphore(config.concurrency) for role in ("candidate", "stable")}
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(run_case(session, limits, config, c) for c in cases))
    return golden.build_report(config.cases_hash, results)


def with_api_keys(config: golden.RunnerConfig) -> golden.RunnerConfig:
    """Bundles with the API keys the kubelet put in the environment (from Secrets)."""
    update = {}
    for role, bundle in (("candidate", config.candidate), ("stable", config.stable)):
        if key := os.environ.get(golden.ENV_API_KEY[role]):
            update[role] = bundle.model_copy(update={"api_key": key})
    return config.model_copy(update=update)


def write_report(report: golden.Report) -> None:
    path = Path(os.environ.get(golden.ENV_REPORT, golden.REPORT_PATH))
    path.write_text(report.to_message())


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        config = with_api_keys(golden.RunnerConfig.model_validate_json(os.environ[golden.ENV_CONFIG]))
    except (KeyError, ValueError) as e:
        log.error("no usable %s: %s", golden.ENV_CONFIG, e)
        write_report(golden.Report(cases_hash="", cases=0, error=f"no usable configuration: {e}"[:500]))
        return 1
    directory = Path(os.environ.get(golden.ENV_CASES_DIR, golden.CASES_DIR))
    try:
        files = [(f.source, (directory / f.path).read_text()) for f in config.files]
        cases = golden.parse_cases(files, config.slices)
    except (OSError, golden.CaseError) as e:
        log.error("cannot read the cases: %s", e)
        write_report(golden.Report(cases_hash=config.cases_hash, cases=0, error=f"cannot read the cases: {e}"[:500]))
        return 1
    hash_ = golden.cases_hash(files)
    if hash_ != config.cases_hash:
        # The ConfigMap changed after the operator hashed it: replaying other
        # cases than it asked for would be judged against the wrong Job.
        write_report(golden.Report(cases_hash=hash_, cases=0, error=f"cases are {hash_}, the operator asked for {config.cases_hash}"))
        return 0
    log.info("replaying %d cases of %s/%s (%s) against %s and %s", len(cases), config.namespace, config.evaluator,
             hash_, config.candidate.revision, config.stable.revision)  # fmt: skip
    report = asyncio.run(replay(config, cases))
    write_report(report)
    total = report.total()
    log.info("done: %d pairs, candidate %d passes, stable %d, %d errors, critical failed: %s",
             total.pairs, total.candidate_passes, total.stable_passes, report.errors, list(report.critical_failed))  # fmt: skip
    return 0
