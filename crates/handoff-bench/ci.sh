#!/usr/bin/env bash
# The benchmark's CI mode: handoff (whole generation and --rolling) with the Rust example
# worker (10 rollovers each) and with the Egg example app (3 each), 2 workers, under load from
# new-connection and keep-alive clients. It asserts correctness only: every rollover succeeds
# and no request fails. It never asserts a timing. Exit 0 when clean, 1 when a request or
# rollover failed, 2 when the bench could not run. After the build: 91 s on the shared 2-core
# development machine with a load average of 12-20 (Egg rollovers took ~10 s each there; on an
# idle machine an Egg boot takes about a second); `timeout` bounds it at 240 s.
# The Egg rows need node and examples/egg-app/node_modules (tests/egg/run.sh installs them);
# without them they are left out with a message, unless BENCH_CI_EGG=1 (tests/run.sh sets it),
# which makes that a failure.
#   crates/handoff-bench/ci.sh                 # debug build (what tests/run.sh builds)
#   BENCH_PROFILE=release crates/handoff-bench/ci.sh
# The Rust rows need nothing beyond the Rust toolchain (no Node.js, no Server::Starter).
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${BENCH_PROFILE:-debug}
build=(cargo build -q --locked -p handoff -p handoff-example-worker -p handoff-bench)
[ "$profile" = release ] && build+=(--release)
"${build[@]}"
# timeout signals the bench's whole process group, handoff included, when time runs out.
exec timeout 240 "target/$profile/handoff-bench" ci --rollovers "${BENCH_CI_ROLLOVERS:-10}" \
  --egg-rollovers "${BENCH_CI_EGG_ROLLOVERS:-3}"
