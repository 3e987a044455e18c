#!/usr/bin/env bash
# Compares redlease at an older commit with this tree, in one of two ways:
#
#   ./compare.sh [cycle] [OLD_COMMIT [ROUNDS [DUR]]]  # defaults: 20cc1ab 6 1s
#   ./compare.sh queue [OLD_COMMIT [ROUNDS [DUR]]]    # defaults: 5692040 6 1s
#   ./compare.sh otel [ROUNDS [DUR]]                  # defaults: 6 1s
#
# cycle (cyclecmp/): the uncontended exclusive cycle, TryObtain + Release,
# 1 and 16 goroutines on their own keys, for DUR each.
# queue (queuecmp/): Enqueue of 100-byte messages on one goroutine for
# DUR; then, per Consume concurrency (1 and 16), EnqueueBatch of 20,000
# such messages into a fresh queue and Consume draining it; then one Stats
# call. Besides msgs/s it counts Redis commands (INFO commandstats, those
# inside scripts included) and round trips per message.
# otel (otelcmp/): not two commits but this tree with the OpenTelemetry
# hook (redleaseotel, on SDK providers that record every span and export
# nothing) off and on: the Enqueue loop, and per Consume concurrency a
# fill by Enqueue (so that messages carry a traceparent when on) and a
# Consume drain; msgs/s and allocations per message, on ÷ off. Spans go
# to a processor that drops them; with OTEL_SPANS=batch through the SDK's
# batch span processor to an exporter that drops them; with
# OTEL_SPANS=none nowhere (a no-op TracerProvider: metrics only).
# OTEL_SAMPLE=0.1 samples a tenth of the traces (ParentBased
# TraceIDRatioBased) instead of every one.
#
# It exports OLD_COMMIT with `git archive` into a temporary directory (no
# worktree is registered, nothing is left in the repository), builds the
# program twice (once with the bench module's replace pointed at that
# export through a copied go.mod given to -modfile, once as is, i.e. at ../),
# starts one redis-server on loopback for both, and runs the two binaries in
# turns, the order swapped every round (old new, new old, ...), so that
# drift hits both alike. It prints each version's median [min–max] and the
# median [min–max] over rounds of new ÷ old (queue: also the commands and
# round trips per message of each, and their difference); rounds are
# adjacent in time.
set -euo pipefail
cd "$(dirname "$0")"

what=cycle
case "${1:-}" in
  cycle | queue | otel) what=$1; shift ;;
esac
case "$what" in
  cycle) default_old=20cc1ab prog=cyclecmp ;;
  queue) default_old=5692040 prog=queuecmp ;;
  otel) prog=otelcmp ;;
esac
if [ "$what" != otel ]; then
  old=${1:-$default_old}
  shift || true
fi
rounds=${1:-6}
dur=${2:-1s}
goroutines=1,16    # cycle: goroutine counts
concurrency=1,16   # queue: Consume concurrencies
queue_msgs=20000   # queue: messages per fill and drain
payload=100        # queue: bytes per message
case "$what" in
  cycle) run_args=(-goroutines "$goroutines" -dur "$dur")
    about="goroutines $goroutines" ;;
  queue) run_args=(-conc "$concurrency" -msgs "$queue_msgs" -payload "$payload" -dur "$dur")
    about="Enqueue loop; EnqueueBatch + Consume of $queue_msgs messages of $payload B at concurrency $concurrency; Stats" ;;
  otel) run_args=(-conc "$concurrency" -msgs "$queue_msgs" -payload "$payload" -dur "$dur" -spans "${OTEL_SPANS:-discard}" -sample "${OTEL_SAMPLE:-1}")
    about="Enqueue loop; Enqueue fill + Consume of $queue_msgs messages of $payload B at concurrency $concurrency; spans to ${OTEL_SPANS:-discard}, sampled ${OTEL_SAMPLE:-1}" ;;
esac
lib=github.com/redlease/redlease
port_tries=20      # ports tried before giving up
ready_polls=50     # PINGs, 0.1s apart, before a server counts as dead

tmp=$(mktemp -d /tmp/redlease-compare.XXXXXX)
redis_pid=
cleanup() {
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

repo=$(git rev-parse --show-toplevel)
if [ "$what" = otel ]; then
  go build -o "$tmp/$what" "./$prog"
  echo "hook off vs on: $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD -- . || echo +changes)"
else
old_full=$(git -C "$repo" rev-parse --verify "$old^{commit}")
new_desc="$(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD -- . ':!bench' || echo +changes)"
mkdir "$tmp/old" "$tmp/mod"
git -C "$repo" archive "$old_full" | tar -x -C "$tmp/old"

cp go.mod go.sum "$tmp/mod/"
go mod edit -replace "$lib=$tmp/old" "$tmp/mod/go.mod"
go build -modfile "$tmp/mod/go.mod" -o "$tmp/$what-old" "./$prog"
go build -o "$tmp/$what-new" "./$prog"
echo "old: $old ($("$tmp/$what-old" run -lib))"
echo "new: $new_desc ($("$tmp/$what-new" run -lib))"
fi

# One redis-server for both versions, on a free loopback port.
for _ in $(seq "$port_tries"); do
  port=$((20000 + RANDOM % 40000))
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq "$ready_polls"); do
    if [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] || ! kill -0 "$redis_pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if kill -0 "$redis_pid" 2>/dev/null && [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ]; then break; fi
  kill "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
  redis_pid=
done
if [ -z "$redis_pid" ]; then echo "compare.sh: could not start redis-server" >&2; exit 1; fi
echo "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on 127.0.0.1:$port; $what: $rounds rounds, per run: $about; DUR $dur"

# Every line goes to the results file, prefixed "round version"; the
# per-message counts of queue are left to the summary.
for r in $(seq "$rounds"); do
  order="old new"
  if [ "$what" = otel ]; then order="off on"; fi
  if [ $((r % 2)) -eq 0 ]; then order=$(echo "$order" | awk '{print $2, $1}'); fi
  for v in $order; do
    if [ "$what" = otel ]; then cmd=("$tmp/$what" run -hook "$v"); else cmd=("$tmp/$what-$v" run); fi
    "${cmd[@]}" -addr "127.0.0.1:$port" "${run_args[@]}" |
      while read -r line; do
        echo "$r $v $line" >>"$tmp/results"
        case "$line" in
          count\ *) ;;
          *) echo "$r $v $line" ;;
        esac
      done
  done
done
if [ "$what" = otel ]; then "$tmp/$what" summary "$tmp/results"; else "$tmp/$what-new" summary "$tmp/results"; fi
