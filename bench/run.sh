#!/usr/bin/env bash
# Runs the redlease benchmark harness: starts its own redis-server on
# loopback, runs every scenario, writes results.md and plots/ (here by
# default). Pass -quick for a ~1 minute smoke run, -out DIR elsewhere.
set -euo pipefail
cd "$(dirname "$0")"
exec go run . "$@"
