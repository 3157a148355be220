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


_TRANSPORT_TABLE = """
import asyncio, socket, weakref
stored = []
original = weakref.WeakValueDictionary.__setitem__
weakref.WeakValueDictionary.__setitem__ = lambda d, k, v: (stored.append(k), original(d, k, v))
import croupier.cli  # as `croupier run` starts
from croupier.runtime import eventloop

async def main():
    loop = asyncio.get_running_loop()
    made = []
    class Proto(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)
    server = await loop.create_server(Proto, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for _ in range(3):
        client = socket.create_connection(("127.0.0.1", port))
        while len(made) < 1:
            await asyncio.sleep(0.01)
        transport = made.pop()
        fd = transport.get_extra_info("socket").fileno()
        try:
            loop.add_reader(fd, print)
            print("not refused")
        except RuntimeError as e:
            print("refused" if "is used by transport" in str(e) else e)
        transport.close()
        client.close()
        del transport
        await asyncio.sleep(0.05)
    plain = socket.socket()
    loop.add_reader(plain.fileno(), print)      # a descriptor no transport owns
    loop.remove_reader(plain.fileno())
    plain.close()
    server.close()
    print(len(stored))

eventloop.run(main())
"""


def test_uvloop_records_transports_in_compiled_code_and_still_guards_their_descriptors():
    """uvloop refuses add_reader on a live transport's descriptor; croupier's loop keeps that
    answer without the Python WeakValueDictionary uvloop would call for every connection."""
    out = subprocess.run([sys.executable, "-c", _TRANSPORT_TABLE], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["refused", "refused", "refused", "0"]
