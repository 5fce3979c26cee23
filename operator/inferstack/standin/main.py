"""``inferstack-standin``: run one stand-in model server (one process per revision), or with ``--judge`` a judge."""

from __future__ import annotations

import argparse
import logging
import os

from aiohttp import web

from inferstack.eventloop import event_loop
from inferstack.standin.app import StandinSettings, build_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="inferstack-standin", description="A deterministic vLLM stand-in.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model", default="standin", help="Model name clients must send, like vLLM's --served-model-name.")
    p.add_argument("--latency-ms", type=float, default=0.0, help="Delay before a non-streamed answer.")
    p.add_argument("--ttft-ms", type=float, default=0.0, help="Delay before the first streamed chunk.")
    p.add_argument("--tokens-per-second", type=float, default=0.0, help="Generation speed; 0 is unthrottled.")
    p.add_argument("--fail-rate", type=float, default=0.0, help="Share of requests answered with HTTP 500.")
    p.add_argument("--max-num-seqs", type=int, default=256, help="Concurrent requests before others wait.")
    p.add_argument("--api-key", default=os.environ.get("STANDIN_API_KEY"), help="Require this bearer token, like vLLM's --api-key.")
    p.add_argument("--judge", action="store_true", help="Be a judge: answer MT-Bench-style judge prompts from the fixture table.")
    p.add_argument(
        "--judge-position-bias", action="store_true", help="With --judge: prefer answer A where it should say [[C]] (a tie)."
    )
    p.add_argument("--embedding-dimension", type=int, default=64, help="Length of /v1/embeddings vectors (a request's `dimensions` wins).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = StandinSettings(
        served_model=args.served_model,
        latency_ms=args.latency_ms,
        ttft_ms=args.ttft_ms,
        tokens_per_second=args.tokens_per_second,
        fail_rate=args.fail_rate,
        max_num_seqs=args.max_num_seqs,
        api_key=args.api_key,
        judge=args.judge,
        judge_position_bias=args.judge_position_bias,
        embedding_dimension=args.embedding_dimension,
    )
    web.run_app(build_app(settings), host=args.host, port=args.port, access_log=None, print=None, loop=event_loop())


if __name__ == "__main__":
    main()
