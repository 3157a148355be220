from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# A state transition the tables (exchange, client and member connections) do not have
# raises, here and in every croupier the tests start (proxy/exchange.py); in production it is
# logged. One raised inside an event-loop or parser callback may be caught there, so each is
# also written to this file, and the run fails if it is not empty at the end.
os.environ.setdefault("CROUPIER_STRICT_STATES", str(
    Path(tempfile.gettempdir()) / f"croupier-illegal-transitions-{os.getpid()}.txt"))

from helpers import Backend, Croupier, Etcd, LoopThread

_ILLEGAL = Path(os.environ["CROUPIER_STRICT_STATES"])


def pytest_sessionstart(session: pytest.Session) -> None:
    if _ILLEGAL.name != "1":
        _ILLEGAL.unlink(missing_ok=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _ILLEGAL.name != "1" and _ILLEGAL.exists():
        found = _ILLEGAL.read_text()
        _ILLEGAL.unlink()
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nillegal state transitions during the run:\n{found}", file=sys.stderr)


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


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    """One real etcd for the whole session (tests keep to prefixes of their own)."""
    store = Etcd(tmp_path_factory.mktemp("etcd"))
    yield store
    store.stop()
