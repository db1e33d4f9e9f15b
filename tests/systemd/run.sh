#!/bin/bash
# run.sh: handoff under a real systemd. Boots a sandboxed systemd (sandbox.sh), installs the units
# from units/ (paths rewritten to the build tree, nothing else changed), and checks what issue 3
# asks for against the example worker. Prints PASS/FAIL per check and a last line
# "N passed, N failed"; exits non-zero when a check failed; always tears the sandbox down.
#
# Run as root after `cargo build` (handoff, handoff-example-worker, handoff-trigger):
#     tests/systemd/run.sh
# Environment: HANDOFF_BIN_DIR (default target/debug), HANDOFF_UNITS_DIR (default units/, to try a
# changed unit), KEEP_WORK=1 keeps the work directory (kept anyway when a check failed),
# RUN_TIMEOUT (seconds, default 900) bounds the whole run.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
BIN=$(cd "${HANDOFF_BIN_DIR:-$top/target/debug}" 2>/dev/null && pwd || echo "${HANDOFF_BIN_DIR:-$top/target/debug}")
S=$here/sandbox.sh
PY=${PYTHON:-python3}
W=$(mktemp -d /tmp/handoff-systemd-test.XXXXXX)
chmod 755 "$W"
export SB_STATE=$W/sandbox
# shellcheck source=sandbox.sh
. "$S"
set +e   # sandbox.sh sets -e for its own use; the checks below handle failures themselves

cleanup() {
  touch "$W/stop" 2>/dev/null
  stop_background
  if sb_alive; then
    timeout 20 "$S" run journalctl --no-pager -o short-monotonic > "$W/journal.txt" 2>&1
    if [ "$fail" != 0 ]; then
      echo "---- last journal lines of the sandbox (for the failures above) ----"
      tail -n 80 "$W/journal.txt" | sed 's/^/  | /'
    fi
  fi
  sb_down >/dev/null 2>&1 || sb_down
  if [ "${KEEP_WORK:-0}" = 1 ] || [ "$fail" != 0 ]; then echo "work directory kept (journal.txt in it): $W"; else rm -rf "$W"; fi
}
# shellcheck source=../lib/suite.sh
. "$here/../lib/suite.sh"

# ---- helpers: tests/lib/handoff.sh, with the install paths pointed at the build and work trees ----
H_BIN=$BIN H_ETC=$W/etc H_OPT=$W/opt
# shellcheck source=../lib/handoff.sh
. "$here/../lib/handoff.sh"

# ---- prerequisites -------------------------------------------------------------------------------
for b in handoff handoff-example-worker handoff-trigger; do
  [ -x "$BIN/$b" ] || { bad "missing $BIN/$b: run cargo build first (or set HANDOFF_BIN_DIR)"; exit 1; }
done
for c in curl "$PY" systemd-analyze; do command -v "$c" >/dev/null || { bad "missing $c"; exit 1; }; done
sb_check || { bad "sandbox prerequisites"; exit 1; }

# ---- the apps: demo (2 workers) and slow (workers take 1.5 s to start) -----------------------------
P_DEMO=$(free_port); P_SLOW=$(free_port); P_NR=$(free_port)
mkdir -p "$W/units" "$W/etc" "$W/opt/demo" "$W/opt/slow"
# The committed units, with the three install paths pointed at the build and work trees.
UNITS=${HANDOFF_UNITS_DIR:-$top/units}
units_rewrite "$UNITS" "$W/units"
cat > "$W/etc/demo.toml" <<EOF
workers = 2
drain_timeout = "10s"
ready_timeout = "20s"
command = ["$BIN/handoff-example-worker"]
version_file = "$W/opt/demo/package.json"
EOF
# slow: each worker leaves a helper process behind (as apps that spawn children do): a grandchild
# of handoff that only the unit's KillMode= can clean up once handoff itself is gone. While
# $W/slow.hold exists, new workers wait before they start: t_kill9 holds a rollover open with it.
cat > "$W/etc/slow.toml" <<EOF
workers = 2
drain_timeout = "10s"
ready_timeout = "20s"
command = ["/bin/sh", "-c", 'sleep 600 3>&- </dev/null >/dev/null 2>&1 & while [ -e "$W/slow.hold" ]; do sleep 0.05; done; exec "\$0" "\$@"', "$BIN/handoff-example-worker"]
version_file = "$W/opt/slow/package.json"
EOF
PJ=$W/opt/demo/package.json
PJ1='{"name":"demo","version":"1.0.0"}'
printf '%s\n' "$PJ1" > "$PJ"
printf '%s\n' '{"name":"slow","version":"1.0.0"}' > "$W/opt/slow/package.json"
: > "$W/rpm.lock"

echo "== booting the sandbox (work dir $W, ports demo=$P_DEMO slow=$P_SLOW)"
sb_up || { bad "sandbox boot"; exit 1; }
sb_install "$W"/units/* || { bad "install units"; exit 1; }
# Per-app settings an operator would make with `systemctl edit`: TCP on loopback, worker env.
printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$P_DEMO" | sb_dropin handoff@demo.socket 10-test
printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$P_SLOW" | sb_dropin handoff@slow.socket 10-test
printf '[Service]\nEnvironment=EXAMPLE_VERSION_FILE=%s\n' "$PJ" | sb_dropin handoff@demo.service 10-test
printf '[Service]\nEnvironment=EXAMPLE_VERSION_FILE=%s EXAMPLE_STARTUP_MS=1500\n' "$W/opt/slow/package.json" \
  | sb_dropin handoff@slow.service 10-test
# The trigger watches a stand-in rpm lock the tests can hold.
printf '[Service]\nEnvironment=HANDOFF_TRIGGER_RPM_LOCK=%s\n' "$W/rpm.lock" | sb_dropin handoff-trigger@demo.service 10-test

# ---- 1. socket activation --------------------------------------------------------------------------
t_sa() {
  sx systemctl start handoff@demo.socket || { bad "start handoff@demo.socket"; return; }
  local st; st=$(prop handoff@demo.service ActiveState)
  [ "$st" = inactive ] || { bad "socket activation: service already '$st' before any client"; return; }
  local i pids=() good=0
  for i in $(seq 1 8); do get "http://127.0.0.1:$P_DEMO/" 20 > "$W/sa.$i" & pids+=($!); done
  for i in "${pids[@]}"; do wait "$i"; done
  for i in $(seq 1 8); do grep -q 'gen=1 .*version=1.0.0' "$W/sa.$i" && good=$((good+1)); done
  # The workers serve from READY=1 on; systemd hears READY=1 from handoff once they have
  # stayed up min_uptime (default 5 s): the unit is still activating meanwhile.
  local t0; t0=$(now_ms)
  sb_wait handoff@demo.service active 30 >/dev/null
  st=$(prop handoff@demo.service ActiveState)
  if [ $good = 8 ] && [ "$st" = active ]; then
    ok "socket activation: 8 clients connected before handoff ran, all answered by gen 1 ($(head -c 60 "$W/sa.1")); unit active $(( $(now_ms) - t0 )) ms after the answers (the stability window)"
  else bad "socket activation: $good/8 answered, service $st; e.g. $(cat "$W/sa.1")"; fi
}

# ---- 2. status line --------------------------------------------------------------------------------
t_status() {
  local s; s=$(sx systemctl status --no-pager handoff@demo.service 2>&1)
  if grep -qE 'Status: "gen 1: 2/2 ready; version 1.0.0' <<<"$s"; then
    ok "systemctl status shows handoff's STATUS: $(grep -o 'Status: .*' <<<"$s")"
  else bad "systemctl status lacks the STATUS line:"; echo "$s" | head -12 | sed 's/^/      /'; fi
  local nrel; nrel=$(prop handoff@demo.service NotifyAccess)
  [ "$nrel" = main ] && ok "NotifyAccess=main suffices (the service reached active via READY=1 from handoff)" \
                     || bad "NotifyAccess is '$nrel'"
}

# ---- 3. 10 reloads under continuous load -----------------------------------------------------------
t_reloads() {
  loadgen_start reload "$P_DEMO" --concurrency 4 --max-seconds 180 --timeout 10
  sleep 0.5
  local i g0 g1 rc t0 t1 durs=() bad_rc=0 bad_gen=0 j body
  for i in $(seq 1 10); do
    g0=$(curgen demo); t0=$(now_ms)
    sx systemctl reload handoff@demo.service; rc=$?
    t1=$(now_ms); durs+=($((t1-t0)))
    g1=$(curgen demo)
    [ "$rc" = 0 ] || { bad_rc=$((bad_rc+1)); info "reload $i exited $rc"; }
    if [ "$g1" != $((g0+1)) ]; then bad_gen=$((bad_gen+1)); info "reload $i: generation $g0 -> $g1"; continue; fi
    for j in 1 2 3 4 5; do      # fresh connections right after the reload: all from the new generation
      body=$(get "http://127.0.0.1:$P_DEMO/")
      grep -q "gen=$g1 " <<<"$body" || { bad_gen=$((bad_gen+1)); info "after reload $i: '$body' (want gen=$g1)"; break; }
    done
  done
  sleep 0.3
  loadgen_stop reload
  local req okc failed
  req=$(lg reload 'd["requests"]'); okc=$(lg reload 'd["ok"]')
  failed=$(lg reload 'd["refused"]+d["reset"]+d["timeout"]+d["bad"]')
  info "reload durations (ms): ${durs[*]}; load: $req requests, $okc ok, $failed failed, by generation $(lg reload 'd["by_gen"]') in $(lg reload 'd["duration_s"]') s"
  [ "$failed" = 0 ] || info "errors: $(lg reload 'd["errors"][:5]')"
  if [ $bad_rc = 0 ] && [ $bad_gen = 0 ] && [ "$failed" = 0 ] && [ "$okc" -gt 100 ]; then
    ok "10x systemctl reload under load: all exit 0, each followed by the new generation, $okc/$req requests ok, 0 failed"
  else bad "10x reload under load: $bad_rc non-zero reloads, $bad_gen generation mismatches, $failed/$req requests failed"; fi
}

# ---- 4. a broken release ---------------------------------------------------------------------------
t_broken() {
  local g0 rc out body cur outcome msg since
  g0=$(curgen demo); since=$(sx date '+%Y-%m-%d %H:%M:%S')
  printf '%s\n' '{"name":"demo","version":"2.0.0-broken","crash_at_start":true}' > "$PJ"
  out=$(sx systemctl reload handoff@demo.service 2>&1); rc=$?
  body=$(get "http://127.0.0.1:$P_DEMO/")
  cur=$(curgen demo)
  outcome=$(hj demo 'd["last_rollover"]["outcome"]'); msg=$(hj demo 'd["last_rollover"]["message"]')
  [ "$rc" != 0 ] && ok "broken release: systemctl reload exits $rc ($(head -1 <<<"$out"))" \
                 || bad "broken release: systemctl reload exited 0"
  if grep -q "gen=$g0 .*version=1.0.0" <<<"$body" && [ "$cur" = "$g0" ]; then
    ok "broken release: generation $g0 (1.0.0) still serves: $body"
  else bad "broken release: serving '$body', current generation $cur (want $g0)"; fi
  local st; st=$(sx "$BIN/handoff" status --control "$(app_ctl demo)" 2>&1)
  if [ "$outcome" != ok ] && [ -n "$outcome" ] && grep -qi "last rollover" <<<"$st"; then
    ok "broken release: handoff status says why: $(grep -i 'last rollover' <<<"$st" | head -1)"
  else bad "broken release: handoff status outcome '$outcome' message '$msg'"; echo "$st" | sed 's/^/      /'; fi
  local j; j=$(sx journalctl --no-pager -o cat -u handoff@demo.service --since "$since")
  # The crashed worker's own line must be under -u too: it exits at once, before journald can
  # read its cgroup, so handoff names the unit in the worker's journal stream header.
  if grep -qE "rolled back.*exited with status 1" <<<"$j" && grep -q "crashing at start" <<<"$j"; then
    ok "broken release: journalctl -u says why: '$(grep -m1 -E 'rolled back.*exited with status' <<<"$j" | sed 's/^ *//' | cut -c1-140)'; the worker's own line: '$(grep -m1 'crashing at start' <<<"$j")'"
  else bad "broken release: journal lacks the reason or the worker's own line:"; tail -15 <<<"$j" | sed 's/^/      /'; fi
  printf '%s\n' "$PJ1" > "$PJ"     # back to the running generation's exact bytes
}

# ---- 5. the package.json trigger -----------------------------------------------------------------
# trig_step NAME EXPECTED_ROLLOVERS: run after an action; waits for the trigger run the action
# caused to end, then a little more (a second rollover would show), and compares generations.
TRIG=$(trig_unit demo)
trig_step() {
  local name=$1 want=$2 g1
  if ! wait_for 30 trig_done demo; then bad "$name: the trigger did not run to its end within 30 s ($(prop $TRIG ActiveState))"; return 1; fi
  sleep 2.5
  g1=$(maxgen demo)
  if [ "$((g1 - g_before))" = "$want" ] && trig_done demo; then
    ok "$name: $want rollover(s) (generation $g_before -> $g1), trigger exit $(prop $TRIG ExecMainStatus)"
  else bad "$name: generation $g_before -> $g1, wanted $want rollover(s); trigger $(prop $TRIG ActiveState) exit $(prop $TRIG ExecMainStatus)"; return 1; fi
}
t_trigger() {
  sx systemctl start handoff-trigger@demo.path || { bad "start handoff-trigger@demo.path"; return; }
  sb_wait handoff-trigger@demo.path waiting 10 || { bad "path unit not waiting"; return; }
  local ver

  trig_mark demo; printf '%s\n' '{"name":"demo","version":"1.1.0"}' > "$PJ"          # in place
  trig_step "package.json written in place" 1
  ver=$(hj demo 'd["generations"][0]["version"]["version"]'); [ "$ver" = 1.1.0 ] || bad "in place: running version is $ver"

  trig_mark demo; printf '%s\n' '{"name":"demo","version":"1.2.0"}' > "$W/opt/demo/.pj.tmp"
  mv "$W/opt/demo/.pj.tmp" "$PJ"                                                   # rename-replace
  trig_step "package.json replaced by rename" 1
  ver=$(hj demo 'd["generations"][0]["version"]["version"]'); [ "$ver" = 1.2.0 ] || bad "rename: running version is $ver"

  trig_mark demo; printf '%s\n' '{"name":"demo","version":"1.2.0"}' > "$PJ"          # same bytes again
  trig_step "unchanged rewrite of package.json" 0

  local since; since=$(sx date '+%Y-%m-%d %H:%M:%S')
  trig_mark demo; printf '%s' '{"name":"demo","version":"1.3.0",' > "$PJ"            # invalid JSON
  trig_step "invalid package.json" 0
  local res code j
  res=$(prop $TRIG Result); code=$(prop $TRIG ExecMainStatus)
  j=$(sx journalctl --no-pager -o cat -u $TRIG --since "$since")
  if [ "$code" = 65 ] && grep -q "is not valid JSON" <<<"$j"; then
    ok "invalid package.json: trigger exit 65 ($res), logged: $(grep -m1 'is not valid JSON' <<<"$j" | cut -c1-140)"
  else bad "invalid package.json: trigger result $res exit $code; journal:"; tail -5 <<<"$j" | sed 's/^/      /'; fi

  # a burst of broken writes must not exhaust any limit: the path unit keeps watching
  local i
  trig_mark demo
  for i in $(seq 1 15); do printf '{"broken": %s' "$i" > "$PJ"; sleep 0.1; done
  wait_for 30 trig_done demo
  local pst pres; pst=$(prop handoff-trigger@demo.path ActiveState); pres=$(prop handoff-trigger@demo.path Result)
  if [ "$pst" = active ] && [ "$pres" = success ]; then ok "15 invalid writes in 1.5 s: no rollover, path unit still watching ($pst, result $pres)"
  else bad "after a burst of invalid writes the path unit is $pst (result $pres)"; fi
  # broken releases one after the other, each its own trigger run (exit 65): more starts than the
  # default start limit (5 in 10 s) allows; the path unit must keep watching
  # (a shorter --settle for this part only, so that the runs come faster than 5 in 10 s)
  printf '[Service]\nEnvironment=HANDOFF_TRIGGER_SETTLE=300ms\n' | sb_dropin $TRIG 20-fast
  local runs=0 t t0b
  since=$(sx date '+%Y-%m-%d %H:%M:%S'); t0b=$(now_ms)
  for i in $(seq 1 8); do
    trig_mark demo; printf '{"broken": "again %s"' "$i" > "$PJ"
    wait_for 10 trig_done demo && runs=$((runs+1))
  done
  t0b=$(( $(now_ms) - t0b ))
  pst=$(prop handoff-trigger@demo.path ActiveState); pres=$(prop handoff-trigger@demo.path Result)
  t=$(sx journalctl --no-pager -o cat -u $TRIG --since "$since" | grep -c 'is not valid JSON')
  if [ "$runs" = 8 ] && [ "$t" -ge 8 ] && [ "$pst" = active ] && [ "$pres" = success ]; then
    ok "8 broken releases in $t0b ms: 8 trigger runs, each exit 65, no rollover; path unit still watching"
  else bad "8 broken releases in $t0b ms: $runs runs ended, $t errors logged, path unit $pst (result $pres)"; fi
  rm -f "/proc/$(sb_pid)/root/run/systemd/system/$TRIG.d/20-fast.conf"; sx systemctl daemon-reload
  trig_mark demo; printf '%s\n' '{"name":"demo","version":"1.3.0"}' > "$PJ"
  trig_step "valid release after the broken ones" 1

  # a 10,000-file install, package.json replaced half-way
  trig_mark demo
  $PY - "$W/opt/demo" <<'EOF'
import os, sys
root = sys.argv[1]
for i in range(10000):
    d = os.path.join(root, "node_modules", f"m{i // 500}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}.js"), "w") as f:
        f.write("module.exports = %d;\n" % i)
    if i == 5000:
        with open(os.path.join(root, ".pj.tmp"), "w") as f:
            f.write('{"name":"demo","version":"1.4.0"}\n')
        os.rename(os.path.join(root, ".pj.tmp"), os.path.join(root, "package.json"))
EOF
  trig_step "10,000-file install" 1
  ver=$(hj demo 'd["generations"][0]["version"]["version"]'); [ "$ver" = 1.4.0 ] || bad "10k install: running version is $ver"

  # rpm: the transaction holds the lock; its scriptlet runs `handoff reload --if-changed`; the
  # trigger waits for the lock, then finds nothing to do
  $PY -c 'import fcntl,sys,time; f=open(sys.argv[1],"r+"); fcntl.lockf(f, fcntl.LOCK_EX); open(sys.argv[2],"w").close(); time.sleep(60)' \
      "$W/rpm.lock" "$W/rpm.locked" &
  local holder=$!; bg_pids+=("$holder")
  wait_for 10 test -e "$W/rpm.locked" || bad "rpm lock holder did not start"
  trig_mark demo; printf '%s\n' '{"name":"demo","version":"1.5.0"}' > "$PJ"
  sleep 3
  local g_mid st_mid; g_mid=$(maxgen demo); st_mid=$(prop $TRIG ActiveState)
  sx "$BIN/handoff" reload --if-changed --control "$(app_ctl demo)" >/dev/null 2>&1; local src=$?
  kill "$holder"; wait "$holder" 2>/dev/null
  if [ "$g_mid" = "$g_before" ] && [ "$st_mid" = activating ]; then
    ok "rpm lock held: the trigger waits (still $st_mid after 3 s, no rollover)"
  else bad "rpm lock held: generation $g_before -> $g_mid, trigger $st_mid"; fi
  [ $src = 0 ] || bad "rpm scriptlet's handoff reload --if-changed exited $src"
  trig_step "rpm transaction: scriptlet reload + path unit" 1
}

# ---- 6. journal tagged by generation ---------------------------------------------------------------
t_journal() {
  local j; j=$(sx journalctl --no-pager -o cat -u handoff@demo.service)
  if grep -qE 'gen=[0-9]+ worker=[0-9]+ pid=' <<<"$j" && grep -qE '^example-worker pid=[0-9]+ gen=[0-9]+' <<<"$j"; then
    ok "journal: handoff's and the workers' lines carry the generation ($(grep -cE 'gen=[0-9]+' <<<"$j") lines), e.g. '$(grep -m1 -E '^example-worker pid' <<<"$j")'"
  else bad "journal lines are not tagged by generation"; tail -8 <<<"$j" | sed 's/^/      /'; fi
}

# ---- 7. kill -9 of handoff during a rollover -------------------------------------------------------
cg_pids() {  # host pids (with start times) in the unit's cgroup, read through the sandbox's root
  local f p st
  f=$(cg_procs_file "$1")
  # A process that exited between the listing and the read has no start time: it is not one
  # (an empty start time would match a missing /proc entry later and count as a survivor).
  for p in $(cat "$f" 2>/dev/null); do
    st=$(awk '{print $22}' "/proc/$p/stat" 2>/dev/null); [ -n "$st" ] && echo "$p:$st"
  done
}
t_kill9() {
  sx systemctl start handoff@slow.socket || { bad "start handoff@slow.socket"; return; }
  get "http://127.0.0.1:$P_SLOW/" 20 | grep -q 'gen=1' || { bad "slow app does not answer"; return; }
  # The first answer comes from the first ready worker, while the unit may still be activating: a
  # `systemctl reload` then is merged into the start job and does nothing (see t_activating).
  sb_wait handoff@slow.service active 30 >/dev/null || { bad "handoff@slow.service never active"; return; }
  loadgen_start kill "$P_SLOW" --concurrency 4 --max-seconds 120 --timeout 20
  sleep 0.5
  local main0; main0=$(prop handoff@slow.service MainPID)
  # The new generation stays unready until the kill (however slow the machine): the reload
  # cannot finish first.
  touch "$W/slow.hold"
  sx systemctl reload handoff@slow.service >/dev/null 2>&1 &
  local rl=$!; bg_pids+=("$rl")
  # The rollover is under way once the new workers are in the cgroup (handoff + 2 old workers + their
  # 2 helpers = 5 before): read on the host, as `handoff status` through the sandbox can take longer
  # than the 1.5 s window on a loaded machine.
  if ! wait_for 10 eval '[ "$(cat "$(cg_procs_file handoff@slow.service)" 2>/dev/null | wc -l)" -ge 7 ]'; then bad "kill -9: no rollover in progress"; fi
  local old; old=$(cg_pids handoff@slow.service)
  local n_old; n_old=$(wc -w <<<"$old")
  local t0; t0=$(now_ms)
  sx kill -9 "$main0"
  rm -f "$W/slow.hold"
  wait "$rl"; local rlrc=$?
  # systemd kills the leftovers (KillMode=mixed), waits RestartSec=, starts handoff again; workers need 1.5 s
  wait_for 30 eval '[ "$(prop handoff@slow.service ActiveState)" = active ] && [ "$(prop handoff@slow.service MainPID)" != "$main0" ]'
  local t1; t1=$(now_ms)
  local main1 nres; main1=$(prop handoff@slow.service MainPID); nres=$(prop handoff@slow.service NRestarts)
  sleep 1
  loadgen_stop kill
  local survivors="" e p st
  for e in $old; do
    p=${e%%:*}; st=${e#*:}
    [ -n "$st" ] && [ "$(awk '{print $22}' "/proc/$p/stat" 2>/dev/null)" = "$st" ] && survivors="$survivors $p"
  done
  local refused reset tmo req okc sock
  refused=$(lg kill 'd["refused"]'); reset=$(lg kill 'd["reset"]'); tmo=$(lg kill 'd["timeout"]')
  req=$(lg kill 'd["requests"]'); okc=$(lg kill 'd["ok"]'); sock=$(prop handoff@slow.socket ActiveState)
  info "killed handoff (pid $main0 in the sandbox) with $n_old processes in its cgroup mid-rollover; reload exited $rlrc;" \
       "back as pid $main1 after $((t1-t0)) ms (NRestarts=$nres); load: $req requests, $okc ok, $refused refused, $reset reset, $tmo timed out," \
       "slowest answer $(lg kill 'd["max_latency_ms"]') ms (queued in the socket's backlog); socket unit $sock"
  [ "$reset" = 0 ] || info "resets (requests in flight on the killed workers): $(lg kill 'd["errors"][:4]')"
  if [ "$nres" -ge 1 ] && [ "$main1" != "$main0" ] && [ -n "$main1" ] && [ "$main1" != 0 ]; then ok "kill -9 mid-rollover: systemd restarted handoff ($((t1-t0)) ms until active again)"
  else bad "kill -9: service not restarted (MainPID $main1, NRestarts $nres)"; fi
  if [ "$refused" = 0 ] && [ "$tmo" = 0 ] && [ "$sock" = active ]; then ok "kill -9: no connection refused or timed out meanwhile ($okc/$req ok; $reset in-flight resets)"
  else bad "kill -9: $refused refused, $tmo timed out, socket unit $sock"; fi
  [ "$rlrc" != 0 ] && ok "kill -9: the interrupted systemctl reload failed (exit $rlrc)" || bad "kill -9: interrupted reload exited 0"
  if [ -z "$survivors" ] && [ "$n_old" -ge 3 ]; then ok "kill -9: none of the $n_old processes of the killed handoff's cgroup survived"
  else bad "kill -9: survivors:$survivors (of $n_old)"; for p in $survivors; do info "$p: $(tr '\0' ' ' < /proc/$p/cmdline 2>&1) $(grep -E '^(State|PPid)' /proc/$p/status 2>&1 | tr '\n\t' '  ') $(cat /proc/$p/cgroup 2>&1)"; done; fi
  get "http://127.0.0.1:$P_SLOW/" | grep -q 'gen=1 ' && ok "kill -9: the new handoff serves (generation 1 of the new process)" \
    || bad "kill -9: new handoff does not serve"
}

# ---- 8. stop drains in-flight requests ------------------------------------------------------------
t_stop() {
  local g up nres; g=$(curgen demo); up=$(hj demo 'd["uptime_ms"]'); nres=$(prop handoff@demo.service NRestarts)
  if [ "${up:-0}" -ge 31000 ] && [ "$nres" = 0 ]; then
    ok "watchdog: handoff up $((up/1000)) s with WatchdogSec=30s, never restarted (it pings)"
  else info "watchdog not proven: handoff up ${up:-?} ms, NRestarts $nres"; fi
  get "http://127.0.0.1:$P_DEMO/slow?ms=3000" 20 > "$W/slow.out" &
  local c=$!
  sleep 0.5
  local t0 rc t1; t0=$(now_ms)
  sx systemctl stop handoff@demo.service 2>"$W/stop.err"; rc=$?
  t1=$(now_ms)
  wait "$c"; local crc=$?
  local st res procs
  st=$(prop handoff@demo.service ActiveState); res=$(prop handoff@demo.service Result)
  procs=$(cat "$(cg_procs_file handoff@demo.service)" 2>/dev/null | wc -l)
  if [ "$crc" = 0 ] && grep -q "gen=$g .*slow=3000ms" "$W/slow.out"; then
    ok "systemctl stop: the slow request started before the stop completed: $(cat "$W/slow.out")"
  else bad "systemctl stop: slow request got '$(cat "$W/slow.out")' (curl exit $crc)"; fi
  if [ "$rc" = 0 ] && [ "$st" = inactive ] && [ "$res" = success ] && [ "$procs" = 0 ] && [ $((t1-t0)) -ge 2000 ]; then
    ok "systemctl stop waited for the drain ($((t1-t0)) ms), exit 0, unit $st/$res, no process left"
  else bad "systemctl stop: rc $rc, $((t1-t0)) ms, unit $st/$res, $procs processes left"; fi
  local j; j=$(sx journalctl --no-pager -o cat -u handoff@demo.service -n 30)
  grep -q "Deactivated successfully" <<<"$j" || info "no 'Deactivated successfully' in the journal"
}

# ---- 9. the notify-reload protocol, without systemd (systemd here is 252) --------------------------
t_notify_reload() {
  local sock=$W/nr/notify.sock out=$W/nr/notify.jsonl
  mkdir -p "$W/nr/rt" && chmod 700 "$W/nr/rt"
  printf '%s\n' '{"name":"nr","version":"1.0.0"}' > "$W/nr/package.json"
  $PY "$here/notify-recv.py" "$sock" "$out" "$W/nr/stop" 60 & bg_pids+=($!)
  wait_for 10 test -S "$sock" || { bad "notify-reload: receiver did not start"; return; }
  NOTIFY_SOCKET=$sock EXAMPLE_VERSION_FILE=$W/nr/package.json \
    "$BIN/handoff" run --listen "127.0.0.1:$P_NR" --workers 1 --runtime-dir "$W/nr/rt" \
      --version-file "$W/nr/package.json" -- "$BIN/handoff-example-worker" >"$W/nr/handoff.log" 2>&1 &
  local h=$!; bg_pids+=("$h")
  wait_for 20 has_line "$out" '"READY": "1"' || { bad "notify-reload: no READY=1 at start"; cat "$W/nr/handoff.log" | tail -5; return; }
  local n0 tsig; n0=$(wc -l < "$out")
  tsig=$($PY -c 'import time; print(time.clock_gettime_ns(time.CLOCK_MONOTONIC)//1000)')
  kill -HUP "$h"
  wait_for 20 eval "tail -n +$((n0+1)) '$out' | grep -q '\"READY\": \"1\"'"
  local verdict
  verdict=$($PY - "$out" "$n0" "$tsig" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2]):]
t_sig = int(sys.argv[3])
rel = next((i for i, l in enumerate(lines) if l["fields"].get("RELOADING") == "1"), None)
if rel is None:
    print("no RELOADING=1 after SIGHUP"); sys.exit()
mono = lines[rel]["fields"].get("MONOTONIC_USEC")
if mono is None or int(mono) < t_sig:
    print(f"RELOADING=1 without a MONOTONIC_USEC taken after the signal ({mono} < {t_sig})"); sys.exit()
if not any(l["fields"].get("READY") == "1" for l in lines[rel + 1:]):
    print("no READY=1 after RELOADING=1"); sys.exit()
print(f"ok: RELOADING=1 MONOTONIC_USEC={mono} ({int(mono) - t_sig} us after the signal), then READY=1")
EOF
)
  if [[ $verdict == ok:* ]] && get "http://127.0.0.1:$P_NR/" | grep -q 'gen=2 '; then
    ok "notify-reload protocol: SIGHUP -> ${verdict#ok: }; gen 2 serves"
  else bad "notify-reload protocol: $verdict; $(get "http://127.0.0.1:$P_NR/")"; fi
  n0=$(wc -l < "$out")
  kill -TERM "$h"
  local i hrc=none
  for i in $(seq 1 150); do kill -0 "$h" 2>/dev/null || break; sleep 0.1; done
  if ! kill -0 "$h" 2>/dev/null; then wait "$h"; hrc=$?; fi
  if tail -n +$((n0+1)) "$out" | grep -q '"STOPPING": "1"' && [ "$hrc" = 0 ]; then
    ok "notify protocol: SIGTERM -> STOPPING=1, exit 0"
  else bad "notify protocol: on SIGTERM STOPPING=1 $(tail -n +$((n0+1)) "$out" | grep -c STOPPING) times, exit $hrc"; fi
  touch "$W/nr/stop"
}

# ---- 10. several listeners, as docs/operating.md shows -----------------------------------------------
t_multi() {
  local pa pb padm; pa=$(free_port); pb=$(free_port); padm=$(free_port)
  mkdir -p "$W/opt/multi"; printf '%s\n' '{"name":"multi","version":"1.0.0"}' > "$W/opt/multi/package.json"
  sed "s#demo#multi#g" "$W/etc/demo.toml" > "$W/etc/multi.toml"
  printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\nListenStream=127.0.0.1:%s\n' "$pa" "$pb" \
    | sb_dropin handoff@multi.socket 10-test
  printf '[Socket]\nListenStream=127.0.0.1:%s\nFileDescriptorName=admin\nService=handoff@multi.service\n' "$padm" > "$W/multi-admin.socket"
  sb_install "$W/multi-admin.socket"
  printf '[Unit]\nRequires=multi-admin.socket\nAfter=multi-admin.socket\n[Service]\nSockets=handoff@multi.socket multi-admin.socket\nEnvironment=EXAMPLE_VERSION_FILE=%s\n' \
    "$W/opt/multi/package.json" | sb_dropin handoff@multi.service 10-test
  sx systemctl start handoff@multi.socket multi-admin.socket || { bad "multi: start sockets"; return; }
  local a b adm lst
  adm=$(get "http://127.0.0.1:$padm/" 20)   # activation through the second socket unit
  a=$(get "http://127.0.0.1:$pa/"); b=$(get "http://127.0.0.1:$pb/")
  lst=$(hj multi '" ".join(sorted(d["listeners"]))')
  if grep -q 'gen=1 ' <<<"$a" && grep -q 'gen=1 ' <<<"$b" && grep -q 'gen=1 ' <<<"$adm" \
     && [ "$lst" = "$(printf 'admin=127.0.0.1:%s http=127.0.0.1:%s http=127.0.0.1:%s' "$padm" "$pa" "$pb" | tr ' ' '\n' | sort | tr '\n' ' ' | sed 's/ $//')" ]; then
    ok "several listeners: two ListenStream= plus a second socket unit (admin), activated through it; handoff holds: $lst"
  else bad "several listeners: '$a' '$b' '$adm'; handoff holds '$lst'"; fi
  sx systemctl stop handoff@multi.service handoff@multi.socket multi-admin.socket 2>/dev/null
}

# ---- 11. reload while the socket-activated service is still activating ---------------------------
# systemd merges a reload job into a pending start job: `systemctl reload` returns 0 once the start
# is done, and no ExecReload= runs. A release that lands while handoff is still starting (here the
# workers take 4 s) is therefore missed by `systemctl reload`; the trigger must still roll over once.
ACT_PORT=
act_setup() {
  ACT_PORT=$(free_port)
  mkdir -p "$W/opt/act"
  printf '%s\n' '{"name":"act","version":"1.0.0"}' > "$(app_pj act)"
  sed "s#/demo/#/act/#g" "$W/etc/demo.toml" > "$(app_toml act)"
  printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$ACT_PORT" | sb_dropin handoff@act.socket 10-test
  printf '[Service]\nEnvironment=EXAMPLE_VERSION_FILE=%s EXAMPLE_STARTUP_MS=4000\n' "$(app_pj act)" | sb_dropin handoff@act.service 10-test
  printf '[Service]\nEnvironment=HANDOFF_TRIGGER_RPM_LOCK=%s\n' "$W/rpm.lock" | sb_dropin handoff-trigger@act.service 10-test
  sx systemctl start handoff@act.socket
}
act_version() { hj act 'd["generations"][0]["version"]["version"]'; }
# act_activate: a first connection starts handoff@act; returns once the unit is activating
act_activate() {
  get "http://127.0.0.1:$ACT_PORT/" 30 > "$W/act.first" &
  bg_pids+=($!)
  sb_wait handoff@act.service activating 10 >/dev/null 2>&1
}
t_activating() {
  act_setup || { bad "activating: set up app act"; return; }
  # A. systemctl reload while activating: exit 0, nothing rolls over
  act_activate || { bad "activating: handoff@act.service never activating"; return; }
  printf '%s\n' '{"name":"act","version":"2.0.0"}' > "$(app_pj act)"
  local t0 rc st; t0=$(now_ms)
  sx systemctl reload handoff@act.service 2>"$W/act.reload.err"; rc=$?
  st=$(prop handoff@act.service ActiveState)
  wait_for 20 eval '[ "$(prop handoff@act.service ActiveState)" = active ]'
  local g v; g=$(maxgen act); v=$(act_version)
  if [ "$rc" = 0 ] && [ "$g" = 1 ] && [ "$v" = 1.0.0 ]; then
    ok "systemd merges a reload into the start job: systemctl reload while activating exits 0 after $(( $(now_ms) - t0 )) ms (unit then $st), no rollover: generation $g still runs 1.0.0 while package.json says 2.0.0"
  else info "systemctl reload while activating: exit $rc, generation $g, version $v (systemd did not merge it?)"; fi
  # B. the release trigger while activating: one rollover to the release
  sx systemctl stop handoff@act.service
  printf '%s\n' '{"name":"act","version":"2.0.0"}' > "$(app_pj act)"
  sx systemctl start handoff-trigger@act.path || { bad "start handoff-trigger@act.path"; return; }
  sb_wait handoff-trigger@act.path waiting 10 >/dev/null 2>&1
  act_activate || { bad "activating (B): handoff@act.service never activating"; return; }
  trig_mark act; g_before=0
  printf '%s\n' '{"name":"act","version":"3.0.0"}' > "$(app_pj act)"
  if wait_for 60 trig_done act; then
    wait_for 10 eval '[ "$(act_version)" = 3.0.0 ]'
    g=$(maxgen act); v=$(act_version)
    if [ "$g" = 2 ] && [ "$v" = 3.0.0 ] && [ "$(prop "$(trig_unit act)" Result)" = success ]; then
      ok "a release landing while handoff@act is activating: the trigger rolled over once (generation 1 -> $g, version $v), exit 0"
    else bad "release while activating: generation $g, version $v, trigger $(prop "$(trig_unit act)" Result) exit $(prop "$(trig_unit act)" ExecMainStatus)"; fi
  else bad "release while activating: the trigger did not end within 60 s ($(prop "$(trig_unit act)" ActiveState))"; fi
  # C. handoff restarting: its control socket is there, nobody answers yet (a crashed handoff's
  # socket before systemd cleans up; here a stale one). The trigger must wait for the new handoff.
  sx systemctl stop handoff@act.service
  sx mkdir -p /run/handoff-act
  sx "$PY" -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$(app_ctl act)"
  local cur; cur=$(jcursor)
  trig_mark act
  printf '%s\n' '{"name":"act","version":"4.0.0"}' > "$(app_pj act)"
  wait_for 20 eval 'trig_done act || jsince "$cur" -u "$(trig_unit act)" | grep -q "does not answer yet"'
  act_activate
  if wait_for 60 trig_done act; then
    g=$(maxgen act); v=$(act_version)
    local res code; res=$(prop "$(trig_unit act)" Result); code=$(prop "$(trig_unit act)" ExecMainStatus)
    if [ "$res" = success ] && [ "$code" = 0 ] && [ "$v" = 4.0.0 ] && [ "$g" = 1 ]; then
      ok "release while handoff's control socket does not answer (restarting): the trigger asked again until the new handoff answered ('$(jsince "$cur" -u "$(trig_unit act)" | grep -m1 -o 'does not answer yet.*')'), exit 0; generation $g runs $v"
    else bad "release while handoff restarts: trigger $res exit $code; generation $g runs $v"; jsince "$cur" -u "$(trig_unit act)" | tail -4 | sed 's/^/      /'; fi
  else bad "release while handoff restarts: the trigger did not end within 60 s"; fi
  sx systemctl stop handoff-trigger@act.path handoff@act.service handoff@act.socket 2>/dev/null
  sx systemctl reset-failed "$(trig_unit act)" 2>/dev/null
}

# ---- 11. a release's version cannot inject assignments into handoff's STATUS= (issue 11) --------------
# With the repo's units (WatchdogSec=30s), a version "1.2.3\nWATCHDOG_USEC=1000000\nMAINPID=1" copied
# raw into STATUS= set a 1 s watchdog: the unit was killed and restarted until it failed.
t_inject() {
  local p; p=$(free_port)
  mkdir -p "$W/opt/inj"
  printf '%s\n' '{"name":"inj","version":"1.2.3\nWATCHDOG_USEC=1000000\nMAINPID=1"}' > "$W/opt/inj/package.json"
  sed "s#/opt/demo/#/opt/inj/#g" "$W/etc/demo.toml" > "$W/etc/inj.toml"
  printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$p" | sb_dropin handoff@inj.socket 10-test
  printf '[Service]\nEnvironment=EXAMPLE_VERSION_FILE=%s\n' "$W/opt/inj/package.json" | sb_dropin handoff@inj.service 10-test
  sx systemctl start handoff@inj.service || { bad "inject: start handoff@inj.service"; return; }
  local pid0 pid1 nr st status
  pid0=$(prop handoff@inj.service MainPID)
  sx systemctl reload handoff@inj.service >/dev/null 2>&1
  # The injected text must stay inside StatusText (`systemctl show` here prints it without the
  # backslashes of handoff's escapes);
  # before, StatusText ended at "version 1.2.3" and the rest were assignments.
  sleep 3.5   # 3 watchdog periods of the injected 1 s; handoff pings every 15 s
  pid1=$(prop handoff@inj.service MainPID); nr=$(prop handoff@inj.service NRestarts)
  st=$(prop handoff@inj.service ActiveState); status=$(prop handoff@inj.service StatusText)
  if [ "$st" = active ] && [ "$nr" = 0 ] && [ "$pid0" = "$pid1" ] && grep -qF 'WATCHDOG_USEC=1000000' <<<"$status"; then
    ok "inject: a version with newlines stays in STATUS= (\"$status\"); after 3.5 s: active, 0 restarts, MainPID $pid1 unchanged"
  else bad "inject: state $st, NRestarts $nr, MainPID $pid0 -> $pid1, StatusText '$status'"; fi
  sx systemctl stop handoff@inj.service handoff@inj.socket 2>/dev/null
}

# ---- issue 12: handoff reexec under systemd -------------------------------------------------------
# `handoff reexec --app demo` (what the rpm's %posttrans runs) and SIGUSR2 sent by systemctl kill,
# under load: the same MAINPID (no restart, the unit stays active), the same workers, 0 failures.
reexecs_at_least() { [ "$(hj "$1" 'd.get("reexecs", 0)')" -ge "$2" ] 2>/dev/null; }
t_reexec() {
  sx systemctl start handoff@demo.socket handoff@demo.service || { bad "reexec: start handoff@demo"; return; }
  sb_wait handoff@demo.service active 30 >/dev/null
  local pid0 pid1 nr0 nr1 w0 w1 g0 g1 r0 st sub out rc t0 t1 failed req
  pid0=$(prop handoff@demo.service MainPID); nr0=$(prop handoff@demo.service NRestarts)
  w0=$(hj demo 'sorted(w["pid"] for w in d["workers"])'); g0=$(curgen demo)
  r0=$(hj demo 'd.get("reexecs", 0)')
  loadgen_start reexec "$P_DEMO" --concurrency 4 --max-seconds 60 --timeout 10
  sleep 0.5
  t0=$(now_ms)
  out=$(sx "$BIN/handoff" reexec --app demo 2>&1); rc=$?
  t1=$(now_ms)
  sleep 0.3
  sx systemctl kill -s USR2 --kill-whom=main handoff@demo.service
  wait_for 10 reexecs_at_least demo $((r0 + 2)) || info "reexecs after SIGUSR2: $(hj demo 'd.get("reexecs")')"
  sleep 0.5
  loadgen_stop reexec
  pid1=$(prop handoff@demo.service MainPID); nr1=$(prop handoff@demo.service NRestarts)
  st=$(prop handoff@demo.service ActiveState); sub=$(prop handoff@demo.service SubState)
  w1=$(hj demo 'sorted(w["pid"] for w in d["workers"])'); g1=$(curgen demo)
  failed=$(lg_failed reexec); req=$(lg reexec 'd["requests"]')
  info "handoff reexec --app demo: exit $rc in $((t1 - t0)) ms: $out"
  if [ "$rc" = 0 ] && [ -n "$pid0" ] && [ "$pid0" = "$pid1" ] && [ "$nr0" = "$nr1" ] \
     && [ "$st/$sub" = active/running ] && [ "$w0" = "$w1" ] && [ "$g0" = "$g1" ] \
     && [ "$failed" = 0 ] && reexecs_at_least demo $((r0 + 2)); then
    ok "reexec: handoff reexec --app demo and SIGUSR2 under load: MainPID $pid1 unchanged, $nr1 restarts, unit $st/$sub, workers $w1 unchanged, generation $g1, $req requests, 0 failed"
  else bad "reexec: exit $rc; MainPID $pid0 -> $pid1; NRestarts $nr0 -> $nr1; unit $st/$sub; workers $w0 -> $w1; generation $g0 -> $g1; $failed/$req requests failed"; fi
  # The handoff rpm's %posttrans, as rpm expands it (its /usr/bin/handoff pointed at the build):
  # it finds the running handoff@demo.service and re-execs it.
  if command -v rpmspec >/dev/null; then
    rpmspec -P "$top/packaging/rpm/handoff.spec" 2>/dev/null | sed -n '/^%posttrans$/,/^exit 0$/p' | sed 1d \
      | sed "s,/usr/bin/handoff,$BIN/handoff," > "$W/posttrans.sh"
    local pt ptrc
    pt=$(sx sh "$W/posttrans.sh" 2>&1); ptrc=$?
    if [ "$ptrc" = 0 ] && grep -q "handoff@demo.service re-exec'd onto the new handoff" <<<"$pt" \
       && [ "$(prop handoff@demo.service MainPID)" = "$pid0" ] && reexecs_at_least demo $((r0 + 3)); then
      ok "reexec: the rpm's %posttrans re-execs the running instance: '$pt'"
    else bad "reexec: %posttrans exit $ptrc: '$pt'; MainPID $(prop handoff@demo.service MainPID) (was $pid0)"; fi
  else info "no rpmspec: the %posttrans scriptlet not run"; fi
  # And the re-exec'd handoff still reloads through systemd (ExecReload= on the same MAINPID).
  if sx systemctl reload handoff@demo.service && [ "$(curgen demo)" = $((g1 + 1)) ] \
     && [ "$(prop handoff@demo.service ActiveState)" = active ]; then
    ok "reexec: systemctl reload afterwards rolls over to generation $((g1 + 1)); unit active"
  else bad "reexec: systemctl reload after the reexec: generation $(curgen demo), unit $(prop handoff@demo.service ActiveState)"; fi
}

# issue 14: priorities and per-slot tags
. "$here/journal.sh"
# issue 12: pinned releases with the symlink layout; config reload
. "$here/pinned.sh"

# Which checks run, each once, in this order (all by default); CHECKS="t_activating" runs a
# subset while developing one.
CHECKS=${CHECKS:-t_sa t_status t_inject t_reloads t_broken t_trigger t_journal t_journal_priorities t_kill9 t_stop t_notify_reload t_multi t_activating t_symlink_layout t_config_reload t_reexec}
for c in $CHECKS; do "$c"; done
failed_units=$(sx systemctl --failed --no-legend --plain 2>/dev/null | grep -v '^handoff-trigger@demo.service' | grep . || true)
[ -z "$failed_units" ] && ok "no unexpected failed units in the sandbox" || bad "failed units: $failed_units"
