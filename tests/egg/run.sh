#!/bin/sh
# Egg.js behind handoff: install the example app's locked dependencies if needed, then run the
# tests against the real handoff binary (target/debug/handoff, or $HANDOFF_BIN).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
app="$root/examples/egg-app"

command -v node >/dev/null 2>&1 || { echo "tests/egg: node (>= 18) is required" >&2; exit 2; }
if [ ! -d "$app/node_modules" ]; then
  echo "tests/egg: installing the example app's dependencies (npm ci)" >&2
  npm ci --prefix "$app" --no-audit --no-fund
fi
bin="${HANDOFF_BIN:-$root/target/debug/handoff}"
if [ ! -x "$bin" ]; then
  echo "tests/egg: no handoff binary at $bin (cargo build, or set HANDOFF_BIN)" >&2
  exit 2
fi

cd "$root"
# Files listed explicitly: newer Node versions take globs rather than a directory here.
exec node --test tests/egg/*.test.js
