from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# A state transition the exchange's table does not have raises, here and in every croupier
# the tests start (proxy/exchange.py); in production it is logged.
os.environ.setdefault("CROUPIER_STRICT_STATES", "1")

from helpers import Backend, Croupier, LoopThread


@pytest.fixture
def backend_loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def backends(backend_loop: LoopThread) -> Iterator[list[Backend]]:
    """Three real aiohttp application instances, named a, b and c."""
    bs = [Backend(backend_loop, name) for name in ("a", "b", "c")]
    yield bs
    for b in bs:
        b.close()


@pytest.fixture
def croupier() -> Iterator[Callable[[dict[str, Any]], Croupier]]:
    """Start croupier in-process from a config dict; stopped after the test."""
    started: list[Croupier] = []

    def start(config: dict[str, Any]) -> Croupier:
        c = Croupier(config)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()
