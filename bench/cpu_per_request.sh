#!/usr/bin/env bash
# CPU time a balancer spends per request, split into user and kernel time, over a wrk run:
# steadier than req/s on a shared machine (about +-0.3 us), so small hot-path changes show.
#   bench/cpu_per_request.sh PORT PID [SECONDS] [PATH] [CONNECTIONS]
# e.g. PATH /large with 10 connections gives the CPU per 1 MiB response.
# Pin the balancer to one core and let wrk run on the other (wrk is pinned to core 1 here).
set -euo pipefail
port=$1; pid=$2; secs=${3:-4}; path=${4:-/}; conns=${5:-50}
read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
n=$(taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" "http://127.0.0.1:$port$path" | awk '/requests in/{print $1}')
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
tck=$(getconf CLK_TCK)
python3 -c "n=$n; t=$tck; print(f'requests={n} user_us={($u1-$u0)/t/n*1e6:.2f} sys_us={($s1-$s0)/t/n*1e6:.2f}')"
