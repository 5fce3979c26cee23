"""images/standin-entrypoint.py: vLLM's command line, as the operator writes it, becomes the stand-in's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ENTRYPOINT = Path(__file__).resolve().parents[2] / "images" / "standin-entrypoint.py"


def translate(argv: list[str]) -> list[str]:
    spec = importlib.util.spec_from_file_location("standin_entrypoint", ENTRYPOINT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.translate(argv)


def test_vllm_flags_are_kept_renamed_or_dropped() -> None:
    argv = ["--model", "/models/x", "--served-model-name", "qwen", "--port", "8000", "--tensor-parallel-size=2",
            "--enable-prefix-caching", "--latency-ms=50"]  # fmt: skip
    assert translate(argv) == ["--host", "0.0.0.0", "--served-model", "qwen", "--port", "8000", "--latency-ms", "50"]


def test_judge_switches_are_kept_and_never_swallow_the_next_flag() -> None:
    argv = ["--served-model-name", "judge", "--judge", "--port", "8000", "--judge-position-bias", "--enforce-eager"]
    assert translate(argv) == ["--host", "0.0.0.0", "--served-model", "judge", "--judge", "--port", "8000", "--judge-position-bias"]
