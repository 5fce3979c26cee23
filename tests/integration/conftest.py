"""Integration fixtures; the process plumbing lives in :mod:`harness`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Proc, Processes


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    yield p
    p.stop_all()


@pytest.fixture
def backends(procs: Processes) -> tuple[Proc, Proc]:
    return procs.standin("model-a"), procs.standin("model-b")


