"""Instructions of one accepted connection, accept to close, through uvloop with real
sockets: what bench/hotpath.py --close leaves out (uvloop's accept, its transport and
handles, the peer address, the event loop's turns). The balancer runs in this process; a
member and a client that opens N connections one after the other (each a request with
`Connection: close`) run in subprocesses, which callgrind does not follow:

    valgrind --tool=callgrind .venv/bin/python bench/accepted.py 2001
    valgrind --tool=callgrind .venv/bin/python bench/accepted.py 1
    (the difference of the two totals / 2,000 is the cost of one connection)

One connection at a time: the loop turns a few times for each, where under load one turn
serves many, so the figure is an upper bound of the per-connection cost in `make bench`.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from croupier.config.load import validate_config
from croupier.proxy.client import client_protocol
from croupier.runtime import app, eventloop
from croupier.runtime.server import Balancer

MEMBER = Path(__file__).parent / "member.py"      # the member relayed to

CLIENT = """
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(n):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
        while s.recv(65536):
            pass
"""


async def main(n: int) -> None:
    loop = asyncio.get_running_loop()
    member = await asyncio.create_subprocess_exec(sys.executable, str(MEMBER),
                                                  stdout=asyncio.subprocess.PIPE)
    assert member.stdout is not None
    member_port = int(await member.stdout.readline())
    with socket.socket() as probe:          # a free port for the listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    loaded = validate_config({
        "workers": 1, "admin": {"enabled": False},
        "listeners": [{"name": "web", "listen": f"127.0.0.1:{port}", "pool": "app"}],
        "pools": [{"name": "app", "members": [f"127.0.0.1:{member_port}"]}]})
    balancer = app.build(Balancer, loaded, loop)
    listener = next(balancer.listeners_for(loaded))
    server = await loop.create_server(client_protocol(listener), "127.0.0.1", port)
    try:
        for count in (1, n):                # the first makes the member connection
            client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT,
                                                          str(port), str(count))
            if await client.wait() != 0:
                raise SystemExit("the client failed")
    finally:
        server.close()
        member.kill()
        await member.wait()


if __name__ == "__main__":
    eventloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2001))
