# tests/systemd/pinned.sh: issue 12 checks, sourced by run.sh (uses its W, BIN, sx, sb_*, ok/bad).
#   t_symlink_layout: releases/X + an atomically switched `current` symlink, with
#                     handoff-trigger-current@.path and `working_directory`: each generation runs
#                     (and restarts) from the release it resolved when it started.
#   t_config_reload:  `systemctl reload` applies /etc/handoff/APP.toml; a bad file changes nothing.
# shellcheck shell=bash

# ---- the symlink layout ---------------------------------------------------------------------------
SYM_TRIG=handoff-trigger-current@sym.service
sym_root() { echo "$W/opt/sym"; }
# sym_release NAME VERSION [EXTRA_JSON]: releases/NAME with its package.json
sym_release() {
  mkdir -p "$(sym_root)/releases/$1"
  printf '{"name":"sym","version":"%s"%s}\n' "$2" "${3:-}" > "$(sym_root)/releases/$1/package.json.tmp"
  mv "$(sym_root)/releases/$1/package.json.tmp" "$(sym_root)/releases/$1/package.json"
}
# sym_switch NAME: what deploy tools do (a relative symlink made aside, renamed over current)
sym_switch() { ln -sfn "releases/$1" "$(sym_root)/current.tmp" && mv -T "$(sym_root)/current.tmp" "$(sym_root)/current"; }
sym_mark() { g_before=$(maxgen sym); t_before=$(prop $SYM_TRIG InactiveEnterTimestampMonotonic); }
sym_done() {
  local s; s=$(prop $SYM_TRIG ActiveState)
  [ "$(prop $SYM_TRIG InactiveEnterTimestampMonotonic)" != "$t_before" ] && { [ "$s" = inactive ] || [ "$s" = failed ]; }
}
# sym_rollovers: wait for the trigger run to end (and a little more), print how many rollovers
sym_rollovers() {
  wait_for 40 sym_done || { echo "trigger-did-not-end"; return; }
  sleep 2
  echo $(( $(maxgen sym) - g_before ))
}
# sym_crash: SIGKILL one ready worker of the serving generation (a crash); once every slot is
# ready again, print what the restarted worker answers on a fresh connection
sym_crash() {
  local pid new body i
  pid=$(hj sym '[w["pid"] for w in d["workers"] if w["generation"]==d["current_generation"] and w["state"]=="ready"][0]')
  [ -n "$pid" ] || { echo "no ready worker"; return; }
  sx kill -9 "$pid"
  wait_for 20 eval '[ "$(hj sym "len([w for w in d[\"workers\"] if w[\"state\"]==\"ready\" and w[\"pid\"]!='"$pid"'])")" = "$(hj sym "d[\"workers_wanted\"]")" ]'
  new=$(hj sym 'sorted([w for w in d["workers"] if w["state"]=="ready"], key=lambda w: w["age_ms"])[0]["pid"]')
  for i in $(seq 1 60); do
    body=$(get "http://127.0.0.1:$P_SYM/")
    grep -q "pid=$new " <<<"$body" && { echo "$body"; return; }
  done
  echo "no answer from the restarted worker $new (killed $pid); last: $body"
}
t_symlink_layout() {
  P_SYM=$(free_port)
  local root; root=$(sym_root)
  sym_release 1 1.0.0
  ln -sfn releases/1 "$root/current"
  cat > "$(app_toml sym)" <<EOF
workers = 2
drain_timeout = "10s"
ready_timeout = "20s"
min_uptime = "1s"
working_directory = "$root/current"
version_file = "$root/current/package.json"
command = ["$BIN/handoff-example-worker"]
EOF
  printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$P_SYM" | sb_dropin handoff@sym.socket 10-test
  # EXAMPLE_VERSION_FILE relative: each worker reads package.json from its own cwd, the pinned
  # release; EXAMPLE_SHOW_CWD=1 puts that cwd in every answer.
  printf '[Service]\nEnvironment=EXAMPLE_VERSION_FILE=package.json EXAMPLE_SHOW_CWD=1\n' | sb_dropin handoff@sym.service 10-test
  printf '[Service]\nEnvironment=HANDOFF_TRIGGER_RPM_LOCK=%s\n' "$W/rpm.lock" | sb_dropin $SYM_TRIG 10-test
  sx systemctl start handoff@sym.socket handoff@sym.service || { bad "symlink layout: start handoff@sym"; return; }
  sx systemctl start handoff-trigger-current@sym.path || { bad "symlink layout: start handoff-trigger-current@sym.path"; return; }
  sb_wait handoff-trigger-current@sym.path waiting 10 >/dev/null || { bad "symlink layout: path unit not waiting"; return; }
  local body n rel
  body=$(get "http://127.0.0.1:$P_SYM/")
  grep -q "gen=1 .*version=1.0.0 cwd=$root/releases/1\$" <<<"$body" \
    && ok "symlink layout: generation 1 runs from releases/1: $body" \
    || bad "symlink layout: generation 1 answers '$body'"

  # A. install release 2, switch current atomically, under load: exactly one rollover, 0 failed
  loadgen_start sym "$P_SYM" --concurrency 4 --max-seconds 120 --timeout 10
  sleep 0.5
  sym_release 2 2.0.0
  sym_mark; sym_switch 2
  n=$(sym_rollovers)
  sleep 0.3; loadgen_stop sym
  body=$(get "http://127.0.0.1:$P_SYM/")
  rel=$(hj sym '[g.get("release_dir") for g in d["generations"] if g["number"]==d["current_generation"]][0]')
  if [ "$n" = 1 ] && [ "$(lg_failed sym)" = 0 ] && grep -q "version=2.0.0 cwd=$root/releases/2\$" <<<"$body" && [ "$rel" = "$root/releases/2" ]; then
    ok "symlink layout: mv -T current.tmp current fired handoff-trigger-current@sym.path: 1 rollover, $(lg sym 'd["ok"]')/$(lg sym 'd["requests"]') requests ok under load, 0 failed; now '$body'; status release_dir $rel"
  else bad "symlink layout: switch to 2: $n rollover(s), $(lg_failed sym) failed requests ($(lg sym 'd["errors"][:3]')), answer '$body', release_dir '$rel'"; fi

  # B. a gen-2 worker crashes: it comes back from releases/2
  body=$(sym_crash)
  grep -q "version=2.0.0 cwd=$root/releases/2\$" <<<"$body" \
    && ok "symlink layout: a crashed generation-2 worker restarts from releases/2: $body" \
    || bad "symlink layout: after a crash in generation 2: '$body'"

  # C. a bad release 3 (crashes at start) rolls back; a gen-2 crash after that still runs 2
  sym_release 3 3.0.0 ',"crash_at_start":true'
  local g2; g2=$(curgen sym)
  sym_mark; sym_switch 3
  n=$(sym_rollovers)
  local res; res=$(prop $SYM_TRIG ExecMainStatus)
  if [ "$n" = 1 ] && [ "$(curgen sym)" = "$g2" ] && [ "$res" = 1 ]; then
    ok "symlink layout: bad release 3 tried once and rolled back (trigger exit $res); generation $g2 serves"
  else bad "symlink layout: release 3: $n rollover(s), current generation $(curgen sym) (want $g2), trigger exit $res"; fi
  body=$(sym_crash)
  if grep -q "gen=$g2 .*version=2.0.0 cwd=$root/releases/2\$" <<<"$body" && [ "$(readlink "$root/current")" = releases/3 ]; then
    ok "symlink layout: with current -> releases/3 (rolled back), a crashed generation-$g2 worker restarts from releases/2: $body"
  else bad "symlink layout: after the rollback, a restarted worker answers '$body' (current -> $(readlink "$root/current"))"; fi

  # D. an unrelated change next to current fires the path unit; nothing rolls over
  sym_release 4 4.0.0
  sym_switch 2
  sym_mark; : > "$root/notes.txt"
  n=$(sym_rollovers)
  [ "$n" = 0 ] && ok "symlink layout: an unrelated file in $root (and a switch back to the running release): trigger ran, 0 rollovers" \
               || bad "symlink layout: an unrelated change gave $n rollover(s)"

  # E. two switches within the settle time: one rollover, to the last one
  sym_release 5 5.0.0
  sym_mark; sym_switch 4; sleep 0.3; sym_switch 5
  n=$(sym_rollovers)
  body=$(get "http://127.0.0.1:$P_SYM/")
  if [ "$n" = 1 ] && grep -q "version=5.0.0 cwd=$root/releases/5\$" <<<"$body"; then
    ok "symlink layout: two switches 0.3 s apart (4, then 5): 1 rollover, to release 5: $body"
  else bad "symlink layout: two quick switches gave $n rollover(s); serving '$body'"; fi
  sx systemctl stop handoff-trigger-current@sym.path handoff@sym.service handoff@sym.socket 2>/dev/null
  sx systemctl reset-failed $SYM_TRIG 2>/dev/null
}

# ---- config reload under systemd ------------------------------------------------------------------
t_config_reload() {
  local p; p=$(free_port)
  mkdir -p "$W/opt/cfg"
  printf '%s\n' '{"name":"cfg","version":"1.0.0"}' > "$(app_pj cfg)"
  cfg_write() {  # cfg_write WORKERS ENV_LINES [EXTRA]
    printf 'workers = %s\ndrain_timeout = "10s"\nready_timeout = "20s"\nmin_uptime = "1s"\ncommand = ["%s"]\nversion_file = "%s"\n%s\n[environment]\n%s\n' \
      "$1" "$BIN/handoff-example-worker" "$(app_pj cfg)" "${3:-}" "$2" > "$(app_toml cfg).tmp"
    mv "$(app_toml cfg).tmp" "$(app_toml cfg)"
  }
  cfg_write 2 'MODE = "blue"'
  printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$p" | sb_dropin handoff@cfg.socket 10-test
  sx systemctl start handoff@cfg.socket handoff@cfg.service || { bad "config reload: start handoff@cfg"; return; }
  local ready env rc g0 cur
  ready=$(hj cfg 'd["ready"]'); env=$(hj cfg '" ".join(d["settings"]["environment"])')
  [ "$ready" = 2 ] && [ "$env" = MODE ] || bad "config reload: started with $ready ready, environment '$env'"
  # A. workers 2 -> 3, a changed value and a new variable
  cfg_write 3 'MODE = "green"
FEATURE = "on"'
  g0=$(curgen cfg)
  sx systemctl reload handoff@cfg.service; rc=$?
  ready=$(hj cfg 'd["ready"]'); env=$(hj cfg '" ".join(d["settings"]["environment"])')
  local w; w=$(hj cfg 'd["settings"]["workers"]')
  local pid mode; pid=$(hj cfg '[w["pid"] for w in d["workers"] if w["generation"]==d["current_generation"]][0]')
  mode=$(sx cat "/proc/$pid/environ" 2>/dev/null | tr '\0' '\n' | grep '^MODE=')
  if [ "$rc" = 0 ] && [ "$ready" = 3 ] && [ "$w" = 3 ] && [ "$env" = "FEATURE MODE" ] && [ "$mode" = MODE=green ] && [ "$(curgen cfg)" = $((g0+1)) ]; then
    ok "config reload: edit workers 2->3 and [environment], systemctl reload exit 0: 3 ready, status settings workers=$w environment '$env', a new worker has $mode"
  else bad "config reload: rc $rc, ready $ready, settings workers $w, environment '$env', worker env '$mode', generation $g0 -> $(curgen cfg)"; fi
  # B. a bad file: the reload fails, the journal says FILE:LINE at priority err, nothing changes
  cfg_write 1 'MODE = "red"' 'drain_timeout_typo = "5s"'
  local c; c=$(jcursor)   # for the diagnostics below
  g0=$(curgen cfg)
  sx systemctl reload handoff@cfg.service 2>/dev/null; rc=$?
  local want line; want="$(app_toml cfg):7: key \`drain_timeout_typo\`"
  # journald reads handoff's stream on its own time: wait for the line, not just after the reload.
  # No --after-cursor here: with a cursor, -p err and -u, journalctl 252 returned systemd's
  # "Reload failed" line but not handoff's, although that entry has PRIORITY=3 and the unit
  # (`-o verbose -g` shows it). The line names a key no earlier file had: the whole journal will do.
  cfg_err() { sx journalctl --no-pager -q -o cat -p err -u handoff@cfg.service | grep -m1 -F -- "$want"; }
  wait_for 10 cfg_err >/dev/null
  line=$(cfg_err)
  ready=$(hj cfg 'd["ready"]'); w=$(hj cfg 'd["settings"]["workers"]')
  if [ "$rc" != 0 ] && [ -n "$line" ] && [ "$ready" = 3 ] && [ "$w" = 3 ] && [ "$(curgen cfg)" = "$g0" ]; then
    ok "config reload: a bad file: systemctl reload exit $rc; journal (priority err): '$(cut -c1-160 <<<"$line")'; still generation $g0 with 3 workers"
  else bad "config reload: bad file: rc $rc, err line '$line', ready $ready, workers $w, generation $g0 -> $(curgen cfg)"; sx journalctl --no-pager -q -o cat --after-cursor="$c" -u handoff@cfg.service | tail -5 | sed 's/^/      /'; fi
  sx systemctl stop handoff@cfg.service handoff@cfg.socket 2>/dev/null
}
