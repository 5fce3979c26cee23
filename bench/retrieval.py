"""What retrieval costs: in the store at 100,000 documents, and added to a request through a real router.

One run, on loopback:

* a real PostgreSQL with pgvector, the integration tier's server (tests/integration/pgstore.py), loaded
  with ``--docs`` generated support articles in the table layout the router reads (``<index>__<version>``:
  ``id``, ``text``, ``metadata``, ``embedding vector(--dimension)``), each embedded as the stand-in embeds
  (a hashed bag of words). The articles are pseudo-words from a seeded generator, each about one of
  ``--topics`` topics: nothing is downloaded, and a run with the same arguments loads the same table.
* **The store**: ``--queries`` generated questions, searched one after another at topK 5 with the router's
  own code (``PgVectorStore.search``: the same SQL, prepared statements and pool), first on the table
  alone (the exact scan every query does without an ANN index), then with an HNSW index with
  ``vector_cosine_ops`` (the only kind of index the router's ``ORDER BY embedding <=> $1`` can use) at
  pgvector's default ``hnsw.ef_search`` (40) and at ``--ef-search``. Recall is against the exact scan's
  answers; EXPLAIN of the router's statement and the table's scan counters say which plan ran.
* **The router**: one router serving two stacks on the same backend (bench/fast_backend.py): ``plain``,
  without a retriever, and ``rag``, with one (the stand-in's ``/v1/embeddings``, the table above with its
  HNSW index, topK 5, the default template), driven in turn at the same fixed open-loop rate by
  bench/loadgen.py with distinct questions, non-streamed and streamed.

The router is pinned to core 1, the load generator, backend, embedder and Postgres to core 0 (in the store
part, Postgres to core 1 and its one client to core 0). CPU figures are utime + stime from /proc (for
Postgres: the postmaster, its backends and the workers it reaped); they do not move when something else
shares the machine, the latencies do, so each part states the machine's other load.

    .venv/bin/python bench/retrieval.py                       # both parts, 100,000 documents
    .venv/bin/python bench/retrieval.py --docs 20000 --parts store
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from inferstack.router.pgvector import PgVectorStore, search_sql, table_identifier, vector_literal
from inferstack.standin.embeddings import embed
from loadgen import Outcome, Target, fixed_rate
from router_overhead import (
    BENCH,
    CLK_TCK,
    LOAD_CORE,
    PROXY_CORE,
    SCENARIOS,
    Scenario,
    cpu_seconds,
    free_port,
    median_repeats,
    percentile,
    spawn,
    wait_http,
)

sys.path.insert(0, str(BENCH.parent / "tests"))
from integration.pgstore import PgServer  # the integration tier's real PostgreSQL with pgvector

INDEX, VERSION = "bench-articles", "v1"
TABLE = f"{INDEX}__{VERSION}"
QUOTED = table_identifier(INDEX, VERSION)  # as the router quotes it
HNSW = "bench_articles_hnsw"
TOP_K = 5  # the CRD's default topK
SYSTEM = "You are the support assistant of Example Corp. Cite articles by their id."


# --- the corpus ---------------------------------------------------------------------------------------------

class Corpus:
    """Seeded pseudo-words: a Zipf-distributed vocabulary and topics of their own words."""

    def __init__(self, seed: int, topics: int, vocabulary: int = 6000, topic_words: int = 24) -> None:
        self.rng = random.Random(seed)
        syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
        words: set[str] = set()
        while len(words) < vocabulary:
            words.add("".join(self.rng.choices(syllables, k=self.rng.randint(2, 4))))
        self.words = sorted(words)
        self.rng.shuffle(self.words)
        self.cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(vocabulary)))
        self.topics = [self.rng.sample(self.words, topic_words) for _ in range(topics)]

    def text(self, topic: int, length: int, on_topic: float) -> str:
        general = self.rng.choices(self.words, cum_weights=self.cumulative, k=length)
        return " ".join(self.rng.choice(self.topics[topic]) if self.rng.random() < on_topic else w for w in general)

    def documents(self, n: int) -> list[tuple[str, str, dict[str, object]]]:
        docs = []
        for i in range(n):
            topic = self.rng.randrange(len(self.topics))
            docs.append((f"kb-{i:06d}", self.text(topic, self.rng.randint(25, 60), 0.5), {"title": f"Article {i}", "topic": topic}))
        return docs

    def questions(self, n: int) -> list[str]:
        return [self.text(self.rng.randrange(len(self.topics)), self.rng.randint(5, 12), 0.7) for _ in range(n)]


# --- CPU and the machine's load -----------------------------------------------------------------------------

def _stat(pid: int | str) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_cpu(root: int) -> float:
    """CPU seconds of Postgres: the postmaster, its live children (backends, workers) and the children it reaped."""
    fields = _stat(root)
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                child = _stat(entry.name)
            except (OSError, IndexError):
                continue  # gone meanwhile
            if int(child[1]) == root:
                ticks += int(child[11]) + int(child[12])
    return ticks / CLK_TCK


def machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


@dataclass
class Load:
    """The machine's busy CPU over a part, and how much of it was this bench's own processes."""

    pids: list[int]  # our processes (this one, router, servers); Postgres counted with its children
    postmaster: int
    start: float = 0.0
    ours_start: float = 0.0
    busy_start: float = 0.0
    busy: float = 0.0  # cores' worth of busy CPU, all processes
    others: float = 0.0  # of which not this bench's

    def ours(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids) + tree_cpu(self.postmaster)

    def __enter__(self) -> Load:
        self.start, self.ours_start, self.busy_start = time.monotonic(), self.ours(), machine_busy()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.monotonic() - self.start
        self.busy = (machine_busy() - self.busy_start) / elapsed
        self.others = max(0.0, self.busy - (self.ours() - self.ours_start) / elapsed)

    def describe(self) -> str:
        return (f"Other load: the machine's {os.cpu_count()} cores were busy {self.busy * 100:.0f} % (of "
                f"{(os.cpu_count() or 1) * 100} %), {self.others * 100:.0f} % of it other processes than this bench's; "
                f"load average {os.getloadavg()[0]:.1f}")


# --- the store ----------------------------------------------------------------------------------------------

@dataclass
class StoreRow:
    name: str
    latencies: list[float]
    cpu: float  # Postgres CPU seconds over the measured queries
    results: list[list[tuple[str, float]]]  # per query: (id, score), nearest first
    plan: str  # EXPLAIN of the router's statement: custom plan / generic plan
    scans: str  # the table's index and sequential scans over the measured queries


async def explain(dsn: str, vector: str) -> str:
    """The scan node of the router's statement, planned with its parameters (custom) and without (generic)."""
    conn = await asyncpg.connect(dsn)
    try:
        # A server-side prepared statement, as asyncpg's is; plan_cache_mode picks which plan EXECUTE gets.
        await conn.execute(f"PREPARE search AS {search_sql(QUOTED)}")
        plans = []
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            plans.append(await conn.fetch(f"EXPLAIN EXECUTE search('{vector}', {TOP_K})"))
        custom, generic = plans
    finally:
        await conn.close()

    def node(rows: list[asyncpg.Record]) -> str:
        line = next((r[0] for r in rows if "Scan" in r[0]), rows[0][0])
        return line.strip().lstrip("-> ").split("  (", 1)[0]

    return f"{node(custom)} / {node(generic)}"


async def scan_counts(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT coalesce(idx_scan, 0), seq_scan FROM pg_stat_user_tables WHERE relname = $1", TABLE)
    finally:
        await conn.close()
    assert row is not None
    return row[0], row[1]


async def measure_store(pg: PgServer, postmaster: int, name: str, vectors: list[list[float]], warmup: int) -> StoreRow:
    idx0, seq0 = await scan_counts(pg.dsn)
    store = PgVectorStore(pg.dsn, max_connections=1)  # new connections: they take the database's hnsw.ef_search
    try:
        for vector in vectors[:warmup]:
            await store.search(INDEX, VERSION, vector, TOP_K)
        latencies, results = [], []
        before = tree_cpu(postmaster)
        for vector in vectors:
            t = time.perf_counter()
            docs = await store.search(INDEX, VERSION, vector, TOP_K)
            latencies.append(time.perf_counter() - t)
            results.append([(d.id, d.score) for d in docs])
        cpu = tree_cpu(postmaster) - before
    finally:
        await store.close()
    # A backend reports its scans when it goes idle or exits: wait until the counters have taken them.
    deadline, counts = time.monotonic() + 5, (idx0, seq0)
    while time.monotonic() < deadline and sum(counts) - idx0 - seq0 < warmup + len(vectors):
        await asyncio.sleep(0.2)
        counts = await scan_counts(pg.dsn)
    scans = f"{counts[0] - idx0} index, {counts[1] - seq0} seq"
    plan = await explain(pg.dsn, vector_literal(vectors[0]))
    print(f"  store {name:28} p50 {percentile(latencies, 50) * 1000:7.2f} ms  {plan}", file=sys.stderr, flush=True)
    return StoreRow(name, latencies, cpu, results, plan, scans)


def recall(exact: list[list[tuple[str, float]]], approx: list[list[tuple[str, float]]]) -> tuple[float, float]:
    """Mean recall@k against the exact answers: by distance (a document as near as the exact k-th counts:
    ties at the k-th distance are interchangeable) and by ids."""
    by_distance = by_id = 0.0
    for truth, got in zip(exact, approx, strict=True):
        kth = truth[-1][1]
        by_distance += min(len(truth), sum(score >= kth - 1e-6 for _, score in got)) / len(truth)
        by_id += len({i for i, _ in truth} & {i for i, _ in got}) / len(truth)
    return by_distance / len(exact), by_id / len(exact)


async def store_part(pg: PgServer, postmaster: int, vectors: list[list[float]], args: argparse.Namespace,
                     notes: list[str]) -> list[StoreRow]:
    warmup = min(20, len(vectors))
    rows = [await measure_store(pg, postmaster, "exact scan (no index)", vectors, warmup)]
    conn = await asyncpg.connect(pg.dsn)
    try:
        os.sched_setaffinity(postmaster, set(range(os.cpu_count() or 1)))  # the build may use both cores
        await conn.execute("SET maintenance_work_mem = '2GB'")
        t = time.monotonic()
        await conn.execute(f"CREATE INDEX {HNSW} ON {QUOTED} USING hnsw (embedding vector_cosine_ops)")
        build = time.monotonic() - t
        size = await conn.fetchval("SELECT pg_size_pretty(pg_relation_size($1::regclass))", HNSW)
        os.sched_setaffinity(postmaster, {int(PROXY_CORE)})
        notes.append(f"HNSW index (m 16, ef_construction 64, pgvector's defaults) built in {build:.0f} s "
                     f"(parallel, both cores), {size}.")
        for ef in (40, args.ef_search):
            await conn.execute(f"ALTER DATABASE postgres SET hnsw.ef_search = {int(ef)}")
            rows.append(await measure_store(pg, postmaster, f"HNSW, ef_search {ef}", vectors, warmup))
        await conn.execute("ALTER DATABASE postgres RESET hnsw.ef_search")
    finally:
        await conn.close()
    return rows


def print_store(rows: list[StoreRow], docs: int, dimension: int, load: str) -> None:
    print(f"\n**The store**: {docs:,} documents, vector({dimension}), topK {TOP_K}, {len(rows[0].latencies)} "
          f"distinct questions searched one after another with the router's code (PgVectorStore.search), "
          f"Postgres pinned to core 1. Recall@{TOP_K} against the exact scan: by distance (a document as "
          f"near as the exact {TOP_K}th counts) / by ids. Plan: EXPLAIN of the router's statement, custom / "
          f"generic. Scans: the table's counters over the measured and warm-up queries (a parallel scan counts once per process). {load}.\n")
    print(f"| index | p50 ms | p99 ms | mean ms | Postgres CPU ms/query | recall@{TOP_K} | plan | scans |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    exact = rows[0].results
    for r in rows:
        mean = sum(r.latencies) / len(r.latencies)
        by_distance, by_id = recall(exact, r.results)
        print(f"| {r.name} | {percentile(r.latencies, 50) * 1000:.2f} | {percentile(r.latencies, 99) * 1000:.2f} | "
              f"{mean * 1000:.2f} | {r.cpu / len(r.latencies) * 1000:.2f} | {by_distance:.3f} / {by_id:.3f} | "
              f"{r.plan} | {r.scans} |")


# --- the router ---------------------------------------------------------------------------------------------

@dataclass
class RouterRow:
    scenario: Scenario
    stack: str
    outcome: Outcome
    cpu: dict[str, float]  # router, embedder, store: CPU seconds over the row
    metrics: dict[str, float] = field(default_factory=dict)  # deltas of the router's retrieval series


RETRIEVAL_SERIES = ("inferstack_router_retrievals_total", "inferstack_router_retrieved_documents_total",
                    "inferstack_router_retrieval_errors_total", "inferstack_router_retrieval_duration_seconds_sum")


def retrieval_metrics(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url + "/metrics", timeout=5).read().decode()
    out = dict.fromkeys(RETRIEVAL_SERIES, 0.0)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in out:
                out[s.name] += s.value
    return out


def write_plans(folder: Path, backend: int, embedder: str, dsn: str, dimension: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    retrieval = {"embeddingUrl": embedder, "embeddingModel": "bge", "dimension": dimension, "index": INDEX,
                 "indexVersion": VERSION, "topK": TOP_K, "storeSecretRef": {"name": "bench-store", "key": "dsn"},
                 "storeDsn": dsn}
    for stack in ("plain", "rag"):
        bundle = {"revision": "rev-a", "url": f"http://127.0.0.1:{backend}", "servedModel": "model-a",
                  "cacheNamespace": f"bench.{stack}.rev-a", "systemPrompt": SYSTEM}
        if stack == "rag":
            bundle["retrieval"] = retrieval
        (folder / f"{stack}.json").write_text(json.dumps({"stack": stack, "namespace": "bench", "serial": 1,
                                                          "stable": bundle}))


def router_part(pg: PgServer, postmaster: int, questions: list[str], args: argparse.Namespace,
                work: Path, procs: list[subprocess.Popen], notes: list[str]) -> tuple[list[RouterRow], Load]:
    os.sched_setaffinity(postmaster, {int(LOAD_CORE)})  # the router's connections are opened after this
    backend, embedder_port = free_port(), free_port()
    procs.append(spawn(LOAD_CORE, [sys.executable, str(BENCH / "fast_backend.py"), "--ports", str(backend),
                                   "--names", "stable"], work / "backend.log"))
    embedder = spawn(LOAD_CORE, [sys.executable, "-m", "inferstack.standin.main", "--port", str(embedder_port),
                                 "--served-model", "bge", "--embedding-dimension", str(args.dimension)], work / "embedder.log")
    procs.append(embedder)
    write_plans(work / "plans", backend, f"http://127.0.0.1:{embedder_port}", pg.dsn, args.dimension)
    port, metrics_port = free_port(), free_port()
    router = spawn(PROXY_CORE, [sys.executable, "-m", "inferstack.router.main", "--host", "127.0.0.1", "--port", str(port),
                                "--metrics-port", str(metrics_port), "--auth", "none", "--plan-file", str(work / "plans"),
                                "--plan-poll-interval", "1", "--log-level", "ERROR"], work / "router.log")
    procs.append(router)
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    wait_http(f"http://127.0.0.1:{backend}/health")
    wait_http(f"http://127.0.0.1:{embedder_port}/health")
    wait_http(metrics_url + "/readyz")
    target = [Target("127.0.0.1", port)]
    pids = {"router": router.pid, "embedder": embedder.pid}

    def cpu() -> dict[str, float]:
        return {**{k: cpu_seconds(p) for k, p in pids.items()}, "store": tree_cpu(postmaster)}

    def measure(scenario: Scenario, stack: str) -> RouterRow:
        bodies = [json.dumps({"model": stack, "messages": [{"role": "user", "content": q}], "stream": scenario.stream,
                              "max_tokens": scenario.tokens}).encode() for q in questions]

        def run(seconds: float) -> Outcome:
            return uvloop.run(fixed_rate(target, bodies, args.rate, seconds, events=scenario.events, users=len(bodies)))

        run(min(1.0, args.duration / 2))  # warm-up: connections, the store's pool, code paths, metric series
        before, series = cpu(), retrieval_metrics(metrics_url)
        outcome = run(args.duration)
        after, series_after = cpu(), retrieval_metrics(metrics_url)
        row = RouterRow(scenario, stack, outcome, {k: after[k] - before[k] for k in after},
                        {k: series_after[k] - series[k] for k in series})
        errors = sum(outcome.errors.values())
        print(f"  {scenario.name:22} {stack:6} {outcome.done / outcome.elapsed:6.0f} req/s  "
              f"errors {dict(outcome.errors) if errors else 0}", file=sys.stderr, flush=True)
        return row

    # What the router spends with no request (plan polls, timers): in every row alike, a larger share at a low rate.
    idle = cpu_seconds(router.pid)
    time.sleep(5)
    notes.append(f"The router idle: {(cpu_seconds(router.pid) - idle) / 5 * 1000:.0f} ms CPU per second.")
    scenarios = [Scenario(s.name, s.stream, s.tokens, s.paced, args.rate) for s in (SCENARIOS["whole"], SCENARIOS["stream32"])]
    with Load([os.getpid(), *[p.pid for p in procs]], postmaster) as load:
        # Repeats interleave the two stacks, so a burst of other load on the machine hits both alike.
        rows = [measure(s, stack) for s in scenarios for _ in range(args.repeat) for stack in ("plain", "rag")]
    return rows, load


def print_router(all_rows: list[RouterRow], args: argparse.Namespace, load: str) -> None:
    rows = median_repeats(all_rows, lambda r: (r.scenario.name, r.stack), lambda r: r.cpu["router"] / max(1, r.outcome.done))
    print(f"\n**Through the router**: stacks `plain` (no retriever) and `rag` (retriever: the stand-in's /v1/embeddings, "
          f"the {args.docs:,}-document table with its HNSW index, topK {TOP_K}, the default template) in one router, "
          f"{args.rate:g} req/s fixed open-loop, {args.duration:g} s per row, the median of {args.repeat} interleaved "
          f"repeats by router CPU (errors: all repeats), {args.questions} distinct questions. Router on core 1; load generator, backend, embedder and Postgres on core 0. "
          f"Retrieval ms: the router's own histogram (embedding + search). {load}.\n")
    print("| scenario | stack | req/s | p50 ms | p99 ms | errors | router CPU µs/req | embedder CPU µs/req | "
          "Postgres CPU µs/req | retrieval ms (mean) | docs/retrieval |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    by_key = {(r.scenario.name, r.stack): r for r in rows}
    for r in rows:
        done = max(1, r.outcome.done)
        m = r.metrics
        retrievals = m["inferstack_router_retrievals_total"]
        mean_ms = f"{m['inferstack_router_retrieval_duration_seconds_sum'] / retrievals * 1000:.2f}" if retrievals else "-"
        docs = f"{m['inferstack_router_retrieved_documents_total'] / retrievals:.2f}" if retrievals else "-"
        print(f"| {r.scenario.name} | {r.stack} | {args.rate:g} | {percentile(r.outcome.latencies, 50) * 1000:.2f} | "
              f"{percentile(r.outcome.latencies, 99) * 1000:.2f} | {sum(r.outcome.errors.values())} | "
              f"{r.cpu['router'] / done * 1e6:.0f} | {r.cpu['embedder'] / done * 1e6:.0f} | {r.cpu['store'] / done * 1e6:.0f} | "
              f"{mean_ms} | {docs} |")
    print("\nWhat retrieval adds (rag minus plain, same run):\n")
    print("| scenario | p50 ms | p99 ms | router CPU µs/req | router CPU ratio |")
    print("|---|---:|---:|---:|---:|")
    for name in dict.fromkeys(r.scenario.name for r in rows):
        plain, rag = by_key[(name, "plain")], by_key[(name, "rag")]
        cpu_plain = plain.cpu["router"] / max(1, plain.outcome.done) * 1e6
        cpu_rag = rag.cpu["router"] / max(1, rag.outcome.done) * 1e6
        print(f"| {name} | {(percentile(rag.outcome.latencies, 50) - percentile(plain.outcome.latencies, 50)) * 1000:+.2f} | "
              f"{(percentile(rag.outcome.latencies, 99) - percentile(plain.outcome.latencies, 99)) * 1000:+.2f} | "
              f"{cpu_rag - cpu_plain:+.0f} | {cpu_rag / cpu_plain:.2f} |")


# --- the run ------------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=100_000, help="Documents in the index version.")
    p.add_argument("--dimension", type=int, default=384, help="Embedding dimension (the stand-in is started with it).")
    p.add_argument("--topics", type=int, default=2000, help="Topics the generated documents are about.")
    p.add_argument("--queries", type=int, default=300, help="Questions searched in the store part (and the recall's sample).")
    p.add_argument("--ef-search", type=int, default=100, help="The second hnsw.ef_search of the store part (the first: 40).")
    p.add_argument("--parts", default="store,router", help="Comma-separated, of store, router.")
    p.add_argument("--rate", type=float, default=40.0, help="Requests per second of each router row.")
    p.add_argument("--duration", type=float, default=10.0, help="Seconds measured per router row (after a short warm-up).")
    p.add_argument("--repeat", type=int, default=3, help="Measurements per scenario and stack (the median is shown).")
    p.add_argument("--questions", type=int, default=1000, help="Distinct questions of the router part (one per user).")
    p.add_argument("--seed", type=int, default=12)
    args = p.parse_args()
    parts = set(args.parts.split(","))
    started = datetime.datetime.now(datetime.UTC)
    os.sched_setaffinity(0, {int(LOAD_CORE)})  # this process: the load generator and the store's client

    corpus = Corpus(args.seed, args.topics)
    questions = corpus.questions(max(args.queries, args.questions))
    work = Path(tempfile.mkdtemp(prefix="retrieval-bench-"))
    pg = PgServer().start()
    procs: list[subprocess.Popen] = []
    notes: list[str] = []
    try:
        assert pg.popen is not None
        postmaster = pg.popen.pid
        os.sched_setaffinity(postmaster, set(range(os.cpu_count() or 1)))
        t = time.monotonic()
        pg.create_index(TABLE, args.dimension, corpus.documents(args.docs))
        pg.sql(f"VACUUM ANALYZE {QUOTED}")  # nothing left for autovacuum to start during the measurements
        size = pg.sql("SELECT pg_size_pretty(pg_total_relation_size($1::regclass))", QUOTED)[0][0]
        notes.append(f"{args.docs:,} documents generated, embedded and loaded in {time.monotonic() - t:.0f} s; "
                     f"table with its primary key {size}.")
        os.sched_setaffinity(postmaster, {int(PROXY_CORE)})
        store_rows: list[StoreRow] = []
        if "store" in parts:
            vectors = [embed(q, args.dimension) for q in questions[:args.queries]]
            with Load([os.getpid()], postmaster) as store_load:
                store_rows = uvloop.run(store_part(pg, postmaster, vectors, args, notes))
        else:
            pg.sql(f"CREATE INDEX {HNSW} ON {QUOTED} USING hnsw (embedding vector_cosine_ops)")
        router_rows: list[RouterRow] = []
        if "router" in parts:
            router_rows, router_load = router_part(pg, postmaster, questions[:args.questions], args, work, procs, notes)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        pg.cleanup()
    print(f"`{' '.join(['.venv/bin/python', 'bench/retrieval.py', *sys.argv[1:]])}`, {started:%Y-%m-%d %H:%M} UTC, "
          f"{os.cpu_count()} cores shared with other work. " + " ".join(notes))
    if store_rows:
        print_store(store_rows, args.docs, args.dimension, store_load.describe())
    if router_rows:
        print_router(router_rows, args, router_load.describe())


if __name__ == "__main__":
    main()
