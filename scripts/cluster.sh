#!/usr/bin/env bash
# Start or stop a local Redis Cluster for trying redlease by hand:
# 3 masters and 3 replicas on 127.0.0.1, all files in DIR.
#
#   scripts/cluster.sh start DIR   # prints the node addresses
#   scripts/cluster.sh stop DIR    # stops the nodes and removes their files
#
# PORTS (default "7000 7001 7002 7003 7004 7005") chooses the six client
# ports; each node's cluster bus port is its port + 10000. The Go tests
# (cluster_test.go) build the same cluster natively on free ports.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)

start() {
  local ports=(${PORTS:-7000 7001 7002 7003 7004 7005})
  [ ${#ports[@]} -eq 6 ] || { echo "PORTS must list 6 ports" >&2; exit 2; }
  if [ -e "$dir/ports" ]; then
    echo "$dir/ports exists: a cluster may be running there; stop it first" >&2
    exit 1
  fi
  echo "${ports[*]}" >"$dir/ports"
  local p addrs=()
  for p in "${ports[@]}"; do
    redis-server --port "$p" --bind 127.0.0.1 \
      --cluster-enabled yes --cluster-config-file "$dir/nodes-$p.conf" \
      --cluster-node-timeout 2000 --appendonly no --save '' --dir "$dir" \
      --repl-diskless-sync-delay 0 --enable-debug-command local --repl-ping-replica-period 1 \
      --daemonize yes --pidfile "$dir/redis-$p.pid" --logfile "$dir/redis-$p.log"
    addrs+=("127.0.0.1:$p")
  done
  for p in "${ports[@]}"; do
    wait_for "node $p to answer" 10 ping_ok "$p"
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 || {
    cat "$dir/create.log" >&2; exit 1; }
  for p in "${ports[@]}"; do
    wait_for "cluster_state:ok and 3 replicas in CLUSTER SLOTS on $p" 20 state_ok "$p"
  done
  echo "cluster up: ${addrs[*]}"
}

ping_ok() { [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ]; }
# state_ok PORT: the node says cluster_state:ok and lists 6 nodes (3 masters,
# 3 replicas that have synced) in CLUSTER SLOTS.
state_ok() {
  redis-cli -p "$1" cluster info 2>/dev/null | grep -q '^cluster_state:ok' &&
    [ "$(redis-cli -p "$1" cluster slots 2>/dev/null | grep -cx '127.0.0.1')" -eq 6 ]
}

# wait_for WHAT SECONDS CMD ARGS...: run CMD every 100ms until it succeeds.
wait_for() {
  local what=$1 secs=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    "$@" && return 0
    sleep 0.1
  done
  echo "timed out after ${secs}s waiting for $what" >&2
  exit 1
}

stop() {
  local f p pid i pids=()
  for f in "$dir"/redis-*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    p=${f##*/redis-}
    p=${p%.pid}
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ]; then
      # NOW: a master does not wait for its replicas to catch up.
      redis-cli -p "$p" shutdown nosave now >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$f"
  done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 50; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -f "$dir"/nodes-*.conf "$dir"/redis-*.log "$dir"/create.log "$dir"/ports "$dir"/dump.rdb
  rmdir "$dir" 2>/dev/null || true
  echo "cluster in $dir stopped"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
