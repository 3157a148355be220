"""Side-by-side benchmark: croupier, HAProxy and nginx in front of the same three backends.

Each balancer is pinned to core 0; the backends (one nginx) and wrk share core 1. Contenders
are interleaved and every cell is repeated; the median is reported. Results go to
bench/results/latest.json and a table on stdout.

    make bench                      # everything
    .venv/bin/python bench/run.py --repeat 3 --duration 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
BALANCER_CORE = "0"
LOAD_CORE = "1"
BACKEND_PORTS = (19101, 19102, 19103)
PORTS = {"croupier": 18080, "haproxy": 18081, "nginx": 18082}
BODY = "hello from backend\n"     # ~20 bytes: the `small` case


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def backend_conf(tmp: Path) -> str:
    servers = "\n".join(
        f'  server {{ listen 127.0.0.1:{p}; keepalive_requests 1000000; '
        f'location / {{ return 200 "{BODY.strip()}\\n"; }} }}' for p in BACKEND_PORTS)
    return f"""worker_processes 1; daemon off; pid {tmp}/backend.pid; error_log stderr error;
events {{ worker_connections 20000; }}
http {{ access_log off; default_type text/plain;
{servers}
}}
"""


def nginx_lb_conf(tmp: Path) -> str:
    members = "\n".join(f"    server 127.0.0.1:{p};" for p in BACKEND_PORTS)
    return f"""worker_processes 1; daemon off; pid {tmp}/nginx-lb.pid; error_log stderr error;
worker_rlimit_nofile 30000;
events {{ worker_connections 20000; }}
http {{ access_log off;
  upstream app {{
{members}
    keepalive 128;
  }}
  server {{ listen 127.0.0.1:{PORTS['nginx']} reuseport; keepalive_requests 1000000;
    location / {{ proxy_pass http://app; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }} }}
}}
"""


def haproxy_conf() -> str:
    members = "\n".join(f"    server s{i} 127.0.0.1:{p}" for i, p in enumerate(BACKEND_PORTS))
    return f"""global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 3s
    timeout client 60s
    timeout server 30s
    http-reuse always
    option http-keep-alive
frontend web
    bind 127.0.0.1:{PORTS['haproxy']}
    default_backend app
backend app
    balance roundrobin
{members}
"""


def croupier_conf() -> str:
    members = ", ".join(f'"127.0.0.1:{p}"' for p in BACKEND_PORTS)
    return f"""[admin]
listen = "127.0.0.1:18099"
[[listeners]]
name = "web"
listen = "127.0.0.1:{PORTS['croupier']}"
pool = "app"
[[pools]]
name = "app"
members = [{members}]
"""


class Contenders:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], core: str, port: int) -> None:
        self.procs[name] = subprocess.Popen(["taskset", "-c", core, *argv],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(port)

    def start_all(self) -> None:
        t = self.tmp
        (t / "backend.conf").write_text(backend_conf(t))
        (t / "nginx-lb.conf").write_text(nginx_lb_conf(t))
        (t / "haproxy.cfg").write_text(haproxy_conf())
        (t / "croupier.toml").write_text(croupier_conf())
        self.start("backends", ["nginx", "-c", str(t / "backend.conf"), "-p", str(t)],
                   LOAD_CORE, BACKEND_PORTS[-1])
        croupier = str(Path(sys.executable).parent / "croupier")
        self.start("croupier", [croupier, "run", "-c", str(t / "croupier.toml"),
                                "--log-level", "warning"], BALANCER_CORE, PORTS["croupier"])
        self.start("haproxy", ["haproxy", "-f", str(t / "haproxy.cfg")], BALANCER_CORE,
                   PORTS["haproxy"])
        self.start("nginx", ["nginx", "-c", str(t / "nginx-lb.conf"), "-p", str(t)],
                   BALANCER_CORE, PORTS["nginx"])

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    assert m, text
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(port: int, connections: int, duration: int) -> dict[str, float]:
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
         "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))                 # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))                 # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                         out)
    failed = int(errors.group(1)) if errors else 0
    if sock_err:
        failed += sum(int(x) for x in sock_err.groups())
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "failed": failed}


def _raise_fd_limit() -> None:
    """HAProxy refuses to start when it cannot raise its FD limit to 2 x maxconn."""
    import resource
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (200000, 65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return
        except (ValueError, OSError):
            continue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    args = ap.parse_args()
    for tool in ("wrk", "nginx", "haproxy", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run bench/install.sh (make bench does)")

    _raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="croupier-bench-"))
    contenders = Contenders(tmp)
    names = ["croupier", "haproxy", "nginx"]
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    try:
        contenders.start_all()
        for name in names:                       # warm-up: connections and caches
            wrk(PORTS[name], args.connections, 1)
        for i in range(args.repeat):
            order = names[i % 3:] + names[:i % 3]    # interleave, rotating who goes first
            for name in order:
                runs[name].append(wrk(PORTS[name], args.connections, args.duration))
    finally:
        contenders.stop_all()

    small = {n: {k: statistics.median(r[k] for r in runs[n]) for k in runs[n][0]}
             for n in names}
    best_other = max(("haproxy", "nginx"), key=lambda n: small[n]["rps"])
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": "make bench",
        "setup": f"wrk -t1 -c{args.connections} -d{args.duration}s, median of {args.repeat}, "
                 f"each balancer pinned to core {BALANCER_CORE}, backends and wrk on core "
                 f"{LOAD_CORE}, 3 nginx backends answering {len(BODY)} bytes",
        "small": small,
        "runs": runs,
        "ratio_rps_vs_best_other": small["croupier"]["rps"] / small[best_other]["rps"],
        "best_other": best_other,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"small: {args.connections} keep-alive connections, {len(BODY)}-byte responses "
          f"({result['setup']})")
    print(f"{'contender':<10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'failed':>7}")
    for n in names:
        s = small[n]
        print(f"{n:<10} {s['rps']:>10.0f} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} "
              f"{s['failed']:>7.0f}")
    print(f"croupier / {best_other}: {result['ratio_rps_vs_best_other']:.2f}x req/s")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
