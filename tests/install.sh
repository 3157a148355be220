#!/usr/bin/env bash
# What the test suite needs from Debian: etcd (the fleet's store; tests start their own on
# ephemeral ports with a temporary data directory, never the packaged service), and chromium
# with its driver (the dashboard's tests drive a real headless browser).
set -euo pipefail
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
