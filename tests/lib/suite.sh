# tests/lib/suite.sh: the bookkeeping the shell suites (tests/systemd, tests/rpm) share.
# Source it once the suite has defined cleanup() (and $S, the sandbox script): it sets up the
# PASS/FAIL counters, an exit trap that runs cleanup and prints "N passed, N failed", and a
# watchdog that fails the run after RUN_TIMEOUT seconds (default 900).
# shellcheck shell=bash

pass=0; fail=0; bg_pids=()
ok()   { echo "PASS: $*"; pass=$((pass+1)); }
bad()  { echo "FAIL: $*"; fail=$((fail+1)); }
info() { echo "      $*"; }
# check DESCRIPTION CMD...: PASS when CMD succeeds
check() { local d=$1; shift; if "$@"; then ok "$d"; else bad "$d"; fi; }
# For cleanup(): stop and reap the background helpers (load generators, lock holders) in bg_pids.
stop_background() {
  local p
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${bg_pids[@]}"; do wait "$p" 2>/dev/null; done
}

on_exit() {
  local rc=$?
  [ -n "${watchdog:-}" ] && kill "$watchdog" 2>/dev/null
  cleanup
  echo "$pass passed, $fail failed"
  if [ "$fail" != 0 ] || [ "$pass" = 0 ]; then exit 1; fi
  exit "$rc"
}
trap on_exit EXIT
trap 'echo "run.sh: interrupted"; fail=$((fail+1)); exit 1' INT TERM
# (its sleep is killed with it: a leftover sleep would hold the suite's stdout open, and a caller
# piping the output would wait for the whole timeout)
( trap 'kill "$sp" 2>/dev/null; exit 0' TERM
  sleep "${RUN_TIMEOUT:-900}" & sp=$!; wait "$sp"
  echo "FAIL: run.sh overall timeout (${RUN_TIMEOUT:-900}s)"; kill -TERM $$ ) &
watchdog=$!

sx() { timeout "${SX_TIMEOUT:-60}" "$S" run "$@"; }            # a command inside the sandbox, bounded
prop() { sx systemctl show -P "$2" "$1" 2>/dev/null; }          # prop UNIT PROPERTY
