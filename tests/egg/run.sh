#!/bin/sh
# Node.js behind handoff, against the real handoff binary (target/debug/handoff, or $HANDOFF_BIN):
#
#   tests/egg/run.sh [packages|egg]     (no argument: both)
#
#   packages  `npm test` of packages/handoff-worker (@handoff/worker: unit tests, attacks, the http,
#             https, http2, Express, Koa and Fastify examples under load) and packages/egg-handoff
#             (egg-handoff-start, and a fresh Egg app installed from the packed tarballs)
#   egg       the Egg example app (examples/egg-app), which installs both packages through npm
#
# Installs what is missing first, from the lock files: the example app's dependencies (again when
# packages/ changed since, as the app holds copies of them) and @handoff/worker's devDependencies
# (Express, Koa, Fastify).
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
app="$root/examples/egg-app"
what=${1:-all}
case $what in packages|egg|all) ;; *) echo "usage: tests/egg/run.sh [packages|egg]" >&2; exit 64 ;; esac

command -v node >/dev/null 2>&1 || { echo "tests/egg: node (>= 18) is required" >&2; exit 2; }
command -v npm >/dev/null 2>&1 || { echo "tests/egg: npm is required" >&2; exit 2; }
stamp="$app/node_modules/.package-lock.json"
if [ ! -f "$stamp" ]; then
  echo "tests/egg: installing the example app's dependencies (npm ci)" >&2
  npm ci --prefix "$app" --no-audit --no-fund
elif [ -n "$(find "$root/packages" -path '*/node_modules' -prune -o -path '*/test' -prune -o -type f -newer "$stamp" -print | head -1)" ]; then
  echo "tests/egg: packages/ changed since the example app installed them: npm ci again" >&2
  npm ci --prefix "$app" --no-audit --no-fund
fi
if [ ! -d "$root/packages/handoff-worker/node_modules" ]; then
  echo "tests/egg: installing @handoff/worker's devDependencies (npm ci)" >&2
  npm ci --prefix "$root/packages/handoff-worker" --no-audit --no-fund
fi
bin="${HANDOFF_BIN:-$root/target/debug/handoff}"
if [ ! -x "$bin" ]; then
  echo "tests/egg: no handoff binary at $bin (cargo build, or set HANDOFF_BIN)" >&2
  exit 2
fi
export HANDOFF_BIN="$bin"

failed=""
if [ "$what" != egg ]; then
  for pkg in handoff-worker egg-handoff; do
    echo "== npm test: packages/$pkg"
    # timeout: a test that fails with a server left open would keep node --test waiting forever.
    (cd "$root/packages/$pkg" && timeout 1800 npm test) || failed="$failed packages/$pkg"
  done
fi
if [ "$what" != packages ]; then
  echo "== examples/egg-app: tests/egg/*.test.js"
  # Files listed explicitly: newer Node versions take globs rather than a directory here.
  (cd "$root" && timeout 1800 node --test tests/egg/*.test.js) || failed="$failed tests/egg"
fi
[ -z "$failed" ] || { echo "tests/egg: FAILED:$failed" >&2; exit 1; }
