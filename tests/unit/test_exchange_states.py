"""The exchange's states as data: the table says which transitions exist, and one it does
not have fails loudly (the suite runs with CROUPIER_STRICT_STATES set)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from croupier.balancing import make_policy
from croupier.config.schema import ListenerConfig
from croupier.model.state import Pool
from croupier.proxy import exchange
from croupier.proxy.context import ProxyContext
from croupier.proxy.exchange import (
    ANSWERED,
    DONE,
    HEAD,
    NEXT,
    RESPONDING,
    SENT,
    STATE_NAMES,
    TUNNEL,
    WAITING,
    Exchange,
    IllegalTransition,
)
from croupier.proxy.listener import Listener


@pytest.fixture
def deliberate():
    """Illegal transitions this test makes on purpose: left out of the run's record (see
    conftest.py), which must hold only those nobody meant."""
    record = Path(exchange.STRICT) if exchange.STRICT not in ("", "1") else None
    size = record.stat().st_size if record is not None and record.exists() else 0
    yield
    if record is not None and record.exists():
        with open(record, "r+") as f:
            f.truncate(size)
        if size == 0:
            record.unlink()


def _exchange() -> Exchange:
    context = ProxyContext(asyncio.new_event_loop(), lambda member, why: None)
    config = ListenerConfig(name="web", listen="127.0.0.1:8080", pool="p")
    return Exchange(Listener(context, config, {"p": Pool("p", "round_robin", make_policy)}),
                    b"127.0.0.1", 1)


PATHS = [
    [WAITING, SENT, RESPONDING],                # proxied
    [WAITING, SENT, SENT, RESPONDING],          # retried
    [WAITING, SENT, RESPONDING, TUNNEL],        # switched protocols
    [WAITING, SENT, ANSWERED],                  # failed: croupier's 502
    [WAITING, SENT, RESPONDING, SENT],          # a head that never reached the client
    [WAITING, ANSWERED],                        # 503, redirect, lookup
    [],                                         # refused while its head was read
]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(STATE_NAMES[s] for s in p))
def test_the_paths_an_exchange_takes_are_in_the_table(path):
    ex = _exchange()
    assert ex.state == HEAD
    for state in path:
        ex.to(state)
    ex.finish(b"--")
    assert ex.state == DONE
    ex.finish(b"CD")                        # once: a second end changes nothing
    assert ex.state == DONE


@pytest.mark.parametrize("before, after", [
    (HEAD, SENT), (HEAD, RESPONDING), (WAITING, RESPONDING), (ANSWERED, SENT),
    (TUNNEL, RESPONDING), (DONE, WAITING), (DONE, SENT)])
def test_a_transition_the_table_lacks_fails_loudly(before, after, deliberate):
    assert exchange.STRICT, "the suite sets CROUPIER_STRICT_STATES"
    assert not (NEXT[before] >> after) & 1
    ex = _exchange()
    ex.state = before
    with pytest.raises(IllegalTransition, match=f"{STATE_NAMES[before]} -> "
                                                f"{STATE_NAMES[after]}"):
        ex.to(after)


def test_every_state_but_done_can_end():
    assert all((NEXT[s] >> DONE) & 1 for s in range(len(NEXT)) if s != DONE)
    assert NEXT[DONE] == 0


def test_a_member_connections_states_are_data_too(deliberate):
    from croupier.model.state import Host, Member
    from croupier.proxy.upstream import (
        BODY_PENDING,
        CLOSED,
        CONNECTION_NEXT,
        EXCHANGE,
        IDLE,
        NEW,
        TUNNEL,
        UpstreamConnection,
        UpstreamPool,
    )

    ex = _exchange()
    owner = Pool("p", "round_robin", make_policy)
    member = Member(owner, "m", Host("h", "127.0.0.1"), "127.0.0.1", 9, 1)
    pool = UpstreamPool(ex.listener.context, member, 1.0, 1.0, 1.0, 4)
    for path in ([EXCHANGE, BODY_PENDING, IDLE, EXCHANGE, TUNNEL, CLOSED],
                 [IDLE, CLOSED], [EXCHANGE, IDLE, EXCHANGE, CLOSED]):
        conn = UpstreamConnection(pool)
        assert conn.state == NEW
        for state in path:
            conn.to(state)
        assert conn.body_pending is False and conn.state == CLOSED
    assert CONNECTION_NEXT[CLOSED] == 0
    for before, after in ((IDLE, TUNNEL), (TUNNEL, IDLE), (CLOSED, IDLE), (NEW, BODY_PENDING)):
        conn = UpstreamConnection(pool)
        conn.state = before
        with pytest.raises(IllegalTransition, match="is not a transition"):
            conn.to(after)


def test_a_client_connections_states_are_data_too(deliberate):
    from croupier.proxy.client import (
        CLOSED,
        CLOSING,
        HEAD,
        LINGERING,
        NEXT,
        OPEN,
        TUNNEL_OPEN,
        UPGRADING,
        ClientConnection,
    )

    listener = _exchange().listener
    for path in ([HEAD, OPEN, HEAD, OPEN, CLOSING, LINGERING, CLOSED],
                 [HEAD, OPEN, UPGRADING, TUNNEL_OPEN, CLOSING, CLOSED],
                 [HEAD, OPEN, UPGRADING, OPEN, HEAD, CLOSING, CLOSED],
                 [CLOSED]):
        conn = ClientConnection(listener)
        assert conn.state == OPEN
        for state in path:
            conn.to(state)
        assert conn.state == CLOSED
    assert NEXT[CLOSED] == 0
    for before, after in ((LINGERING, OPEN), (CLOSING, HEAD), (TUNNEL_OPEN, OPEN),
                          (OPEN, TUNNEL_OPEN), (CLOSED, CLOSING)):
        conn = ClientConnection(listener)
        conn.state = before
        with pytest.raises(IllegalTransition, match="is not a transition"):
            conn.to(after)
