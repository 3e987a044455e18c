#!/usr/bin/env bash
# Compares redlease's uncontended exclusive cycle (TryObtain + Release, 1
# and 16 goroutines on their own keys) at an older commit with this tree.
#
#   ./compare.sh [OLD_COMMIT [ROUNDS [DUR]]]   # defaults: 20cc1ab 6 1s
#
# It exports OLD_COMMIT with `git archive` into a temporary directory (no
# worktree is registered, nothing is left in the repository), builds
# cyclecmp twice (once with the bench module's replace pointed at that
# export through a copied go.mod given to -modfile, once as is, i.e. at ../),
# starts one redis-server on loopback for both, and runs the two binaries in
# turns, the order swapped every round (old new, new old, ...), so that
# drift hits both alike. It prints each version's median cycles/s and the
# median [min–max] over rounds of new ÷ old; rounds are adjacent in time.
set -euo pipefail
cd "$(dirname "$0")"

old=${1:-20cc1ab}
rounds=${2:-6}
dur=${3:-1s}
goroutines=1,16
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
old_full=$(git -C "$repo" rev-parse --verify "$old^{commit}")
new_desc="$(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD -- . ':!bench' || echo +changes)"
mkdir "$tmp/old" "$tmp/mod"
git -C "$repo" archive "$old_full" | tar -x -C "$tmp/old"

cp go.mod go.sum "$tmp/mod/"
go mod edit -replace "$lib=$tmp/old" "$tmp/mod/go.mod"
go build -modfile "$tmp/mod/go.mod" -o "$tmp/cycle-old" ./cyclecmp
go build -o "$tmp/cycle-new" ./cyclecmp
echo "old: $old ($("$tmp/cycle-old" run -lib))"
echo "new: $new_desc ($("$tmp/cycle-new" run -lib))"

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
echo "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on 127.0.0.1:$port; $rounds rounds of $dur per run, goroutines $goroutines"

for r in $(seq "$rounds"); do
  order="old new"
  if [ $((r % 2)) -eq 0 ]; then order="new old"; fi
  for v in $order; do
    "$tmp/cycle-$v" run -addr "127.0.0.1:$port" -goroutines "$goroutines" -dur "$dur" |
      while read -r n rate; do
        echo "$r $v $n $rate" | tee -a "$tmp/rates"
      done
  done
done
"$tmp/cycle-new" summary "$tmp/rates"
