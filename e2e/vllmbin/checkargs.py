"""Parses argument lists with vLLM's own parser, as the vllm/vllm-openai image's entrypoint does.

Run with the vLLM venv's Python (e2e/vllmbin/install.sh), never the project's:

    <vllm venv>/bin/python e2e/vllmbin/checkargs.py < lists.json > verdicts.json

stdin: ``{"name": ["--model", "m", ...], ...}``; stdout: ``{"name": {"ok": bool, "error": str}, ...}``.

The image's entrypoint is ``vllm serve`` and the Deployment's ``args`` follow it, so each
list is parsed as ``vllm serve <args>``: the ``serve`` sub-parser built by
``make_arg_parser`` on a ``FlexibleArgumentParser`` (which also moves ``--model`` to the
positional model tag, as ``vllm serve`` does), then ``validate_parsed_serve_args`` (what
``vllm serve`` runs before it starts) and ``AsyncEngineArgs.from_cli_args`` (the engine
arguments the server would be built from). Nothing is loaded and no server starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys


def main() -> None:
    lists: dict[str, list[str]] = json.load(sys.stdin)

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    serve = ServeSubcommand()
    verdicts: dict[str, dict[str, object]] = {}
    for name, args in lists.items():
        # A new parser per list: vLLM's parser keeps state between parse_args calls.
        parser = FlexibleArgumentParser(prog="vllm")
        serve.subparser_init(parser.add_subparsers(dest="subparser"))
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                parsed = parser.parse_args(["serve", *args])
                serve.validate(parsed)
                AsyncEngineArgs.from_cli_args(parsed)
            verdicts[name] = {"ok": True, "error": ""}
        except SystemExit:  # argparse refused the list and printed why
            verdicts[name] = {"ok": False, "error": " ".join(err.getvalue().strip().splitlines()[-1:])}
        except Exception as exc:
            verdicts[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    json.dump(verdicts, sys.stdout)


if __name__ == "__main__":
    main()
