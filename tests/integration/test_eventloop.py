"""croupier's event loop: uvloop, with literal addresses answered on the loop itself."""

from __future__ import annotations

import socket
import subprocess
import sys

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


_COUNT_THREADS = """
import os, socket, sys
from croupier.runtime import eventloop
loop = eventloop.new_loop()
tasks = lambda: len(os.listdir("/proc/self/task"))
# as uvloop's sock_connect asks (aiohttp's health checks connect that way)
loop.run_until_complete(loop.getaddrinfo("127.0.0.1", 80, family=socket.AF_INET))
literal = tasks()
loop.run_until_complete(loop.getaddrinfo("localhost", 80, family=socket.AF_INET))
print(literal, tasks())
"""


def test_a_literal_address_starts_no_thread_and_a_name_still_goes_to_the_pool():
    out = subprocess.run([sys.executable, "-c", _COUNT_THREADS], capture_output=True,
                         text=True, timeout=30, check=True).stdout.split()
    literal, named = map(int, out)
    assert literal == 1             # uvloop alone starts libuv's four threads here
    assert named > 1                # the count does see the pool's threads
