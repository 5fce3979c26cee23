"""Every example gate query in the docs runs on a real Prometheus and gives a gate a value.

The examples are found where readers copy them from:

* fenced ```` ```promql ```` blocks in ``docs/*.md`` and ``README.md`` (gate query templates);
* the ``gates:`` of InferenceStack manifests in ``examples/*.yaml`` and in fenced
  ```` ```yaml ```` blocks of the docs (``query`` and ``samplesQuery``).

Any other fenced block holding a gate placeholder (``{{revision}}`` ...) fails the
test: an example must be marked so that it is tested.

Each template is rendered by inferstack's own renderer (``inferstack.core.promql``)
for the candidate and for the baseline (stable) revision, for each slice the gate
lists and for the aggregate, and run on a Prometheus that has scraped a real
router with real traffic through it to the stand-in model servers (canary and
shadow). Every rendering must parse and give what a gate can judge: exactly one
series with a number (``promql.single_value``). A matcher that matches nothing
gives no series and fails here, instead of holding a real rollout forever.

The same template rendered for a stack, namespace, revision or (when it uses
``{{slice}}``) slice without traffic must give no series: otherwise the query
ignores that placeholder and would judge another stack's or revision's traffic.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from inferstack.api.v1alpha1 import InferenceStack
from inferstack.core import promql
from inferstack.core.gates import AGGREGATE, evaluations
from inferstack.standin.fixtures import FIXTURES

from .harness import plan, wait_until, write_plan
from .test_prometheus import PROMETHEUS
from .test_prometheus import prometheus as prometheus  # the fixture (re-exported for pytest)

REPO = Path(__file__).resolve().parents[2]
STABLE, CANDIDATE = "rev-a", "rev-b"  # the revisions of harness.plan
DOC_STACK = ("team-a", "support")  # namespace, stack that ```promql blocks are rendered for
DOC_SLICES = ("billing", "shipping", "general")  # the stand-in's slices
PLACEHOLDER = re.compile(r"\{\{\s*(?:stack|namespace|revision|baseline|slice|window)\s*\}\}")
SLICE = re.compile(r"\{\{\s*slice\s*\}\}")
NO_TRAFFIC = {"stack": "no-such-stack", "namespace": "no-such-namespace", "revision": "no-such-revision",
              "slice": "no-such-slice"}


@dataclass(frozen=True)
class Example:
    where: str  # file:line, for messages
    template: str
    namespace: str
    stack: str
    slices: tuple[str, ...]  # slice keys to render for; AGGREGATE is ""
    window: timedelta

    def render(self, measured: str, slice_: str, **override: str) -> str:
        """The query for revision ``measured``; ``override`` replaces the stack, namespace or revision."""
        return promql.render(
            self.template,
            stack=override.get("stack", self.stack),
            namespace=override.get("namespace", self.namespace),
            revision=override.get("revision", measured),
            baseline=STABLE,
            slice_=slice_,
            window=self.window,
        )


def fenced_blocks(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number of the opening fence, language, dedented content) of each fenced block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = lines[i].strip()
        if opening.startswith("```"):
            lang = opening[3:].strip().split(" ")[0].lower()
            start, body = i + 1, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            yield start, lang, textwrap.dedent("\n".join(body))
        i += 1


def gate_examples(where: str, doc: Any) -> list[Example]:
    """The queries of an InferenceStack manifest's gates, validated with the API types."""
    if not isinstance(doc, dict) or doc.get("kind") != "InferenceStack":
        return []
    stack = InferenceStack.model_validate(doc)
    meta = doc.get("metadata") or {}
    window = promql.default_window(stack.spec.rollout)
    out = []
    for gate in stack.spec.gates:
        if gate.prometheus is None:
            # An evaluator gate: the operator writes its queries (core/evaluation.py);
            # tests/e2e/test_evaluation_e2e.py runs them on Prometheus. Validated above.
            continue
        assert not gate.slices or SLICE.search(gate.prometheus.query), (
            f"{where}: gate {gate.name} lists slices but its query has no {{{{slice}}}}: every slice would judge all traffic"
        )
        for template in filter(None, (gate.prometheus.query, gate.prometheus.samples_query)):
            out.append(Example(f"{where} gate {gate.name}", template, meta.get("namespace", "default"), meta["name"],
                               tuple(evaluations(gate)), window))
    return out


def doc_examples() -> list[Example]:
    out: list[Example] = []
    for path in sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")]):
        rel = path.relative_to(REPO)
        for line, lang, body in fenced_blocks(path.read_text()):
            where = f"{rel}:{line}"
            found: list[Example] = []
            if lang == "promql":
                ns, stack = DOC_STACK
                found = [Example(where, body, ns, stack, (*DOC_SLICES, AGGREGATE), promql.MIN_WINDOW)]
            elif lang in ("yaml", "yml") and re.search(r"^\s*gates:", body, re.M):
                docs = list(yaml.safe_load_all(body))
                assert any(isinstance(d, dict) and d.get("kind") == "InferenceStack" for d in docs), (
                    f"{where}: a yaml block with gates: that is not an InferenceStack manifest"
                )
                for doc in docs:
                    found += gate_examples(where, doc)  # validates it, also when all its gates are evaluator gates
            assert found or not PLACEHOLDER.search(body), (
                f"{where}: a ```{lang} block holds a gate query; fence it as ```promql (or a manifest's gates:) so it is tested"
            )
            out += found
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out += gate_examples(str(path.relative_to(REPO)), doc)
    return out


def run(base: str, query: str) -> tuple[list[dict[str, Any]] | None, str]:
    """(result, "") or (None, Prometheus's error): a query that does not parse is a 400."""
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)["data"]["result"], ""
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        try:
            return None, json.loads(body).get("error", body)
        except ValueError:
            return None, body


def gate_value(base: str, query: str) -> tuple[float | None, str]:
    """What a gate would read: one number, or None with the reason."""
    result, error = run(base, query)
    if result is None:
        return None, f"does not run: {error}"
    try:
        value = promql.single_value(result)
    except promql.ResultError as exc:
        return None, str(exc)
    return value, "" if value is not None else "no data (no series, or NaN)"


def test_examples_are_marked_and_render() -> None:
    """Needs no Prometheus: the examples are found, validate and render for every evaluation."""
    examples = doc_examples()
    where = {e.where.split(":")[0].split(" ")[0] for e in examples}
    # The known homes of examples; a refactor of the docs that loses them must not pass silently.
    assert {"docs/router.md", "examples/rag-support-bot.yaml"} <= where, where
    for e in examples:
        for revision in (CANDIDATE, STABLE):
            for slice_ in e.slices:
                assert not PLACEHOLDER.search(e.render(revision, slice_)), e.where


# `make test` (INFERSTACK_REQUIRE_E2E=1) must not pass with the example queries untested.
@pytest.mark.skipif(not Path(PROMETHEUS).exists() and os.environ.get("INFERSTACK_REQUIRE_E2E") != "1",
                    reason=f"Prometheus not installed ({PROMETHEUS})")
@pytest.mark.timeout(180)
def test_gate_queries_in_the_docs_give_values_on_prometheus(procs, backends, prometheus, tmp_path: Path) -> None:
    assert Path(PROMETHEUS).exists(), f"Prometheus not installed ({PROMETHEUS}): the docs' example queries are untested"
    examples = doc_examples()
    assert examples
    stable, candidate = backends
    stacks = sorted({(e.namespace, e.stack) for e in examples})
    slices = sorted({s for e in examples for s in e.slices if s != AGGREGATE})
    plans = tmp_path / "plans"
    plans.mkdir()
    for ns, stack in stacks:
        # A canary (candidate answers its users) and a shadow (stable's answers mirrored): both
        # ways a candidate gets measured during a rollout.
        write_plan(plans / f"{ns}.{stack}.json",
                   plan(stable, candidate, namespace=ns, stack=stack, candidateWeight=50, shadowPercent=50))
    router = procs.router(plans, "--slices", ",".join(slices), namespaces=tuple(sorted({ns for ns, _ in stacks})))
    prom = prometheus(router.metrics_target)
    # A key calls the stacks of its own namespace: one client per namespace.
    clients = {ns: openai.OpenAI(base_url=router.url + "/v1", api_key=key, max_retries=0) for ns, key in router.keys.items()}
    questions = {f.slice: f.question for f in reversed(FIXTURES)}

    def traffic() -> None:
        for ns, stack in stacks:
            for user in range(12):
                for slice_ in slices:
                    kwargs: dict[str, Any] = dict(
                        model=f"{ns}/{stack}",
                        messages=[{"role": "user", "content": questions.get(slice_, "Who are you?")}],
                        extra_headers={"x-user-id": f"user-{user}", "x-inferstack-slice": slice_},
                    )
                    client = clients[ns]
                    if user % 2:  # streamed too, so time-to-first-token has samples
                        for _ in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
                            pass
                    else:
                        client.chat.completions.create(**kwargs)

    # rate() and increase() need two samples of a series inside the window: let Prometheus
    # scrape every series once, then send the traffic the queries measure.
    def scraped_all() -> bool:
        with urllib.request.urlopen(router.metrics_url + "/metrics", timeout=5) as resp:
            exported = sum(line.startswith(b"inferstack_router_check_total{") for line in resp)
        result = run(prom, "count(inferstack_router_check_total)")[0]
        return bool(result) and int(result[0]["value"][1]) == exported

    traffic()
    wait_until("Prometheus has scraped every series", scraped_all, timeout=30)
    traffic()

    def failures() -> list[str]:
        out = []
        for e in examples:
            for revision in (CANDIDATE, STABLE):
                for slice_ in e.slices:
                    query = e.render(revision, slice_)
                    value, why = gate_value(prom, query)
                    if value is None:
                        name = "aggregate" if slice_ == AGGREGATE else slice_
                        out.append(f"{e.where}, revision {revision}, slice {name}: {why}\n    {query}")
        return out

    deadline = time.monotonic() + 30
    while (missing := failures()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not missing, "example queries a gate cannot judge:\n" + "\n".join(missing)

    # Each placeholder narrows the query: without traffic for it, there must be no data.
    leaks = []
    for e in examples:
        for placeholder, value in NO_TRAFFIC.items():
            if placeholder == "slice":
                if not SLICE.search(e.template):
                    continue  # not a per-slice query: evaluated for the aggregate only
                query = e.render(CANDIDATE, value)
            else:
                query = e.render(CANDIDATE, AGGREGATE, **{placeholder: value})
            result, error = run(prom, query)
            if result is None or result:
                leaks.append(f"{e.where}: with a {placeholder} that has no traffic: {error or result}\n    {query}")
    assert not leaks, "queries that ignore a placeholder:\n" + "\n".join(leaks)


