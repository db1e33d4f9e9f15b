#!/usr/bin/env bash
# The full benchmark, as docs/benchmarks.md reports it (about 13 minutes on 2 cores):
# builds handoff, the example worker and the bench in release mode, then runs every contender
# under the same load (`handoff-bench all`), the supervisor cost and the scale runs.
#   crates/handoff-bench/run.sh              # results in target/bench/ (report.md, latency.svg)
#   crates/handoff-bench/run.sh --install    # first install start_server and pm2 (install-peers.sh)
#   crates/handoff-bench/run.sh -- --rollovers 200 --only handoff,plain-restart   # fewer/other
# Arguments after `--` go to `handoff-bench all` (see `handoff-bench all --help`).
# Only loopback, ports in 19000-19999; every process started is stopped at the end (also on
# Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/../.."
args=()
while [ $# -gt 0 ]; do
  case $1 in
    --install) crates/handoff-bench/install-peers.sh ;;
    --) shift; args+=("$@"); break ;;
    *) echo "usage: $0 [--install] [-- handoff-bench all options]" >&2; exit 64 ;;
  esac
  shift
done
cargo build -q --release --locked -p handoff -p handoff-example-worker -p handoff-bench
exec target/release/handoff-bench all "${args[@]}"
