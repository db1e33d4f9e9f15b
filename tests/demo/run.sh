#!/usr/bin/env bash
# tests/demo/run.sh: examples/demo.sh runs, in a short mode (2 rollovers), with the binaries already
# built (HANDOFF_BIN_DIR, default target/debug). Checks: exit 0, 0 failed requests, each generation's
# first answer is shown (the client log is followed from its first line), no `tail: cannot open`,
# and nothing is left behind (handoff, workers, /tmp/handoff-demo.*). Then `--keep`: handoff keeps
# serving after the demo, the script says how to clean up, and SIGTERM (as from the shell that
# started it) stops handoff and removes the directory. About 15 s; no root needed.
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(cd "${HANDOFF_BIN_DIR:-$top/target/debug}" 2>/dev/null && pwd || echo "${HANDOFF_BIN_DIR:-$top/target/debug}")
W=$(mktemp -d /tmp/handoff-demo-test.XXXXXX)
pass=0; fail=0
ok()  { echo "PASS: $*"; pass=$((pass+1)); }
bad() { echo "FAIL: $*"; fail=$((fail+1)); }
kp=''
trap '[ -n "$kp" ] && kill -TERM "$kp" 2>/dev/null; rm -rf "$W"; echo "$pass passed, $fail failed"; [ "$fail" = 0 ] && [ "$pass" -gt 0 ]' EXIT
for b in handoff handoff-example-worker; do [ -x "$BIN/$b" ] || { bad "missing $BIN/$b (cargo build first, or HANDOFF_BIN_DIR)"; exit 1; }; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gone() { ! kill -0 "$1" 2>/dev/null; }
wait_for() { local s=$1 i; shift; for i in $(seq 1 $((s*10))); do "$@" && return 0; sleep 0.1; done; return 1; }

# 1. the short run
port=$(free_port)
t0=$SECONDS
PORT=$port HANDOFF_BIN_DIR=$BIN DEMO_ROLLOVERS=2 DEMO_PAUSE=1 timeout 120 bash "$top/examples/demo.sh" > "$W/out" 2>&1
rc=$?
rt=$(sed -n 's/.*(log: \(.*\)\/handoff.log).*/\1/p' "$W/out" | head -1)
hp=$(sed -n 's/.*stopping handoff (pid \([0-9]*\)).*/\1/p' "$W/out" | head -1)
line=$(grep -m1 '== client:' "$W/out")
if [ $rc = 0 ] && grep -q ', 0 failed, across 2 rollovers' <<<"$line" && ! grep -q '^== client: 0 requests' <<<"$line"; then
  ok "demo (2 rollovers) in $((SECONDS-t0)) s: exit 0; $line"
else bad "demo: exit $rc; '$line'"; sed 's/^/    | /' "$W/out" | tail -20; fi
gens=$(grep -oE 'answered by .*gen=[0-9]+' "$W/out" | grep -oE 'gen=[0-9]+' | sort -u | tr '\n' ' ')
[ "$gens" = "gen=1 gen=2 gen=3 " ] && ok "the client's first answer from each generation is shown: $gens" \
  || { bad "generations shown: '$gens'"; grep client: "$W/out" | head; }
grep -q 'cannot open' "$W/out" && bad "tail complained: $(grep 'cannot open' "$W/out")" || ok "no 'tail: cannot open'"
if [ -n "$rt" ] && [ ! -e "$rt" ] && [ -n "$hp" ] && gone "$hp" && ! pgrep -f "handoff run --listen 127.0.0.1:$port " >/dev/null; then
  ok "nothing left: $rt removed, handoff (pid $hp) gone"
else bad "left behind: dir '$rt' $( [ -e "$rt" ] && echo exists), handoff pid '$hp'"; fi

# 2. --keep: keeps serving; SIGTERM to the script stops it and cleans up
port=$(free_port)
PORT=$port HANDOFF_BIN_DIR=$BIN DEMO_ROLLOVERS=1 DEMO_PAUSE=1 setsid bash "$top/examples/demo.sh" --keep > "$W/keep" 2>&1 &
kp=$!
if wait_for 60 grep -q 'press Ctrl-C' "$W/keep"; then
  rt=$(sed -n 's/.*(log: \(.*\)\/handoff.log).*/\1/p' "$W/keep" | head -1)
  body=$(curl -sS -m 5 "http://127.0.0.1:$port/" 2>&1)
  grep -q 'gen=2 ' <<<"$body" && ok "--keep: still serving after the demo ($body); it says: $(grep -m1 'press Ctrl-C' "$W/keep" | cut -c1-120)" \
    || bad "--keep: after the demo got '$body'"
  kill -TERM "$kp"
  if wait_for 30 gone "$kp"; then
    wait "$kp"; krc=$?; kp=''
    if [ ! -e "$rt" ] && ! curl -s -m 2 "http://127.0.0.1:$port/" >/dev/null && grep -q 'cleaned up' "$W/keep"; then
      ok "--keep: SIGTERM to the kept session stops handoff and removes $rt (exit $krc)"
    else bad "--keep: after SIGTERM dir '$rt' $( [ -e "$rt" ] && echo exists), port $port $(curl -s -m 2 "http://127.0.0.1:$port/" >/dev/null && echo 'still answers')"; fi
  else bad "--keep: the script did not exit within 30 s of SIGTERM"; fi
else bad "--keep: no 'press Ctrl-C' line within 60 s"; sed 's/^/    | /' "$W/keep" | tail; fi
