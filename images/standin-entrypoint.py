"""Run the vLLM stand-in with the command line the operator gives vLLM.

The operator starts a model pod with vLLM's flags (``--model``, ``--served-model-name``,
``--port``, ``--tensor-parallel-size``...). The stand-in takes a few of its own; this
keeps the ones it understands, renames the two that differ and drops the rest, so a
stack whose ``spec.model.image`` is the stand-in image runs on a cluster without GPUs
(kind). Stand-in knobs go in ``spec.model.engine.extraArgs``, e.g. ``--latency-ms=50``.
"""

from __future__ import annotations

import sys

from inferstack.standin.main import main

RENAMED = {"--served-model-name": "--served-model"}
KEPT = {"--port", "--latency-ms", "--ttft-ms", "--tokens-per-second", "--fail-rate", "--max-num-seqs"}
# Stand-in switches kept as they are: with --judge the pod is a judge stand-in, so a
# judge InferenceStack (an LLMJudge's `stack`) runs on a cluster without GPUs too.
KEPT_SWITCHES = {"--judge", "--judge-position-bias"}
# vLLM flags that take no value: never swallow the next flag as their value.
SWITCHES = {"--enable-prefix-caching", "--no-enable-prefix-caching", "--trust-remote-code", "--enforce-eager", *KEPT_SWITCHES}


def translate(argv: list[str]) -> list[str]:
    out = ["--host", "0.0.0.0"]
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        takes_value = (
            not eq and flag not in SWITCHES and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        )
        if takes_value:
            value = argv[i + 1]
        flag = RENAMED.get(flag, flag)
        if flag in KEPT_SWITCHES:
            out.append(flag)
        elif flag in KEPT or flag in RENAMED.values():
            out += [flag, value]
        i += 2 if takes_value else 1
    return out


if __name__ == "__main__":
    main(translate(sys.argv[1:]))
