"""What the dashboard's viewers cost (issue 22): croupier's CPU at a fixed request rate with no
viewer and with ten, side by side in alternating rounds.

    .venv/bin/python bench/dashboard.py [--viewers 10] [--rate 500] [--rounds 5] [--duration 10]

One `croupier run` (`workers = 1`: one process to measure) in front of bench/member.py and two
more members, all on 127.0.0.1. A paced client sends `--rate` requests a second over ten
kept-alive connections; the viewers are `--viewers` connections to /api/v1/events, each reading
every frame. CPU is croupier's user + kernel time (/proc) over each round, as a share of one
core; the figure is the median difference, with and without viewers, of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import cpu_seconds, free_port, wait_for

HERE = Path(__file__).parent
CROUPIER = str(Path(sys.executable).parent / "croupier")

PACED = """
import asyncio, sys, time
port, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
REQUEST = b"GET / HTTP/1.1\\r\\nHost: bench\\r\\n\\r\\n"
async def client(gap, offset):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    start = loop.time() + offset
    end = loop.time() + seconds
    n = 0
    while True:
        at = start + n * gap
        if at > end:
            break
        await asyncio.sleep(max(0.0, at - loop.time()))
        writer.write(REQUEST)
        await reader.readuntil(b"hi\\n")
        n += 1
    writer.close()
async def main():
    conns = 10
    gap = conns / rate
    await asyncio.gather(*(client(gap, i * gap / conns) for i in range(conns)))
asyncio.run(main())
"""

VIEWERS = """
import asyncio, sys
port, n, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
async def viewer():
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/v1/events HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n"
                 b"Accept: text/event-stream\\r\\n\\r\\n")
    while await reader.read(65536):
        pass
async def main():
    tasks = [asyncio.create_task(viewer()) for _ in range(n)]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
asyncio.run(main())
"""





def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--viewers", type=int, default=10)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=10)
    args = ap.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        try:
            members = []
            for _ in range(3):
                port = free_port()
                procs.append(subprocess.Popen([sys.executable, str(HERE / "member.py"),
                                               str(port)], stdout=subprocess.DEVNULL))
                members.append(f"127.0.0.1:{port}")
            port, admin = free_port(), free_port()
            quoted = ", ".join(f'"{m}"' for m in members)
            (tmp / "croupier.toml").write_text(
                f'workers = 1\n[admin]\nlisten = "127.0.0.1:{admin}"\n'
                f'[[listeners]]\nname = "web"\nlisten = "127.0.0.1:{port}"\npool = "app"\n'
                f'[[pools]]\nname = "app"\nmembers = [{quoted}]\n')
            lb = subprocess.Popen([CROUPIER, "run", "-c", str(tmp / "croupier.toml"),
                                   "--log-level", "error"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(lb)
            wait_for(lambda: httpx.get(f"http://127.0.0.1:{admin}/healthz").status_code == 200,
                     what="croupier")
            wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/").status_code == 200,
                     what="the members")
            results: dict[int, list[float]] = {0: [], args.viewers: []}
            for _ in range(args.rounds):
                for n in results:
                    watchers = None
                    if n:
                        watchers = subprocess.Popen(
                            [sys.executable, "-c", VIEWERS, str(admin), str(n),
                             str(args.duration + 4)])
                        wait_for(lambda n=n: httpx.get(
                            f"http://127.0.0.1:{admin}/api/v1/status").status_code == 200,
                            what="the viewers")
                        time.sleep(2)            # connected, past their first frame
                    load = subprocess.Popen([sys.executable, "-c", PACED, str(port),
                                             str(args.rate), str(args.duration)])
                    before, t0 = cpu_seconds(lb.pid), time.monotonic()
                    load.wait()
                    used = cpu_seconds(lb.pid) - before
                    results[n].append(used / (time.monotonic() - t0) * 100)
                    if watchers is not None:
                        watchers.wait()
            for n, shares in results.items():
                print(f"{n:>2} viewers: {statistics.median(shares):.2f} % of a core "
                      f"(rounds: " + ", ".join(f"{s:.2f}" for s in shares) + ")")
            diffs = [w - wo for wo, w in zip(results[0], results[args.viewers], strict=True)]
            print(f"{args.viewers} viewers cost {statistics.median(diffs):.2f} % of a core "
                  f"(median of the rounds' differences; rounds: "
                  + ", ".join(f"{d:+.2f}" for d in diffs) + f") at {args.rate:g} req/s")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(10)


if __name__ == "__main__":
    main()
