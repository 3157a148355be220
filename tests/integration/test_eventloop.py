"""croupier's event loop: uvloop, with literal addresses answered on the loop itself."""

from __future__ import annotations

import socket

from croupier.runtime import eventloop


def test_the_loop_answers_literal_addresses_itself_and_resolves_names_as_uvloop_does():
    loop = eventloop.new_loop()
    try:
        v4 = loop.run_until_complete(loop.getaddrinfo("127.0.0.1", 80, family=socket.AF_INET))
        v6 = loop.run_until_complete(loop.getaddrinfo("::1", "80", type=socket.SOCK_STREAM))
        named = loop.run_until_complete(loop.getaddrinfo("localhost", 80,
                                                         type=socket.SOCK_STREAM))
    finally:
        loop.close()
    assert {info[4] for info in v4} == {("127.0.0.1", 80)}
    assert [info[4][:2] for info in v6] == [("::1", 80)]
    assert ("127.0.0.1", 80) in {info[4][:2] for info in named}
