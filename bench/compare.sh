#!/usr/bin/env bash
# doozer against etcd, side by side, on this machine.
#
#   bench/compare.sh [-d SECONDS] [--rounds N] [--procs N] [--cases LIST] [--json FILE] [--keep]
#
# Installs etcd from Debian's packages if it is missing, then runs
# bench/compare.py (see its --help): a three-member etcd cluster and a
# three-member doozer cluster, both durable, on loopback; the same workloads
# in turns; a table of medians and doozer/etcd ratios. Every process it
# starts is stopped on exit, Ctrl-C or SIGTERM (compare.py kills the process
# group of each server it started; this trap forwards the signal).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null 2>&1; then
  echo "compare: installing etcd (etcd-server, etcd-client) from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends etcd-server etcd-client >/dev/null
fi

python3 bench/compare.py "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"' INT TERM HUP
wait "$child"
