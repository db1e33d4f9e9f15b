# tests/lib/handoff.sh: the helpers shell suites use to drive handoff apps (tests/systemd,
# tests/rpm, the docs walkthrough, ...). One definition each; nothing here is specific to a suite.
#
# Source it after tests/lib/suite.sh (which provides sx, prop and bg_pids). It reads:
#   W        the suite's work directory (load generator files go there)
#   PY       python3 (default python3)
#   H_BIN    where the handoff binaries are, as seen inside the sandbox (default /usr/bin, where the
#            units and packages put them; tests/systemd points it at the build tree)
#   H_ETC    the directory of the apps' configs (default /etc/handoff)
#   H_OPT    the directory apps are installed under (default /opt)
# An app is named by its instance name APP; every helper that talks to one takes APP first.
# shellcheck shell=bash

H_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PY:-python3}
H_BIN=${H_BIN:-/usr/bin}
H_ETC=${H_ETC:-/etc/handoff}
H_OPT=${H_OPT:-/opt}

# ---- the per-app paths (as units/ and the packages lay them out) ---------------------------------
app_ctl()    { echo "/run/handoff-$1/control.sock"; }   # control socket (RuntimeDirectory=handoff-APP)
app_toml()   { echo "$H_ETC/$1.toml"; }                  # handoff's config
app_dir()    { echo "$H_OPT/$1"; }                        # the install directory
app_pj()     { echo "$H_OPT/$1/package.json"; }           # the release marker the .path unit watches
app_sock()   { echo "/run/handoff/$1.sock"; }             # the socket unit's default address
svc()        { echo "handoff@$1.service"; }
trig_unit()  { echo "handoff-trigger@$1.service"; }
# host path of a unit's cgroup.procs inside the sandbox (handoff@ units live in system-handoff.slice)
cg_procs_file() { echo "/proc/$(sb_pid)/root/sys/fs/cgroup/system.slice/system-handoff.slice/$1/cgroup.procs"; }

# units_rewrite SRC_DIR DEST_DIR: the committed units with /usr/bin/, /etc/handoff/ and /opt/
# pointed at H_BIN, H_ETC and H_OPT (nothing else changed).
units_rewrite() {
  local f
  mkdir -p "$2"
  for f in "$1"/handoff@.socket "$1"/handoff@.service "$1"/handoff-trigger@.path "$1"/handoff-trigger@.service \
           "$1"/handoff-trigger-current@.path "$1"/handoff-trigger-current@.service; do
    [ -e "$f" ] || continue   # a units dir from before the symlink-layout trigger
    sed "s#/usr/bin/#$H_BIN/#g; s#/etc/handoff/#$H_ETC/#g; s#/opt/#$H_OPT/#g" "$f" > "$2/$(basename "$f")"
  done
}

# ---- talking to an app ---------------------------------------------------------------------------
hstatus() { sx "$H_BIN/handoff" status --json --control "$(app_ctl "$1")" 2>/dev/null; }
# hj APP PYEXPR: evaluate a Python expression on `handoff status --json` (as d)
hj() { hstatus "$1" | $PY -c "import json,sys; d=json.load(sys.stdin); print($2)" 2>/dev/null; }
curgen() { hj "$1" 'd["current_generation"]'; }
# The newest generation number handed out: every rollover attempt, failed or not, takes one, so
# differences of this count rollovers (current_generation skips the numbers of rolled back ones).
maxgen() { hj "$1" 'max(d["current_generation"], (d.get("last_rollover") or {}).get("generation") or 0)'; }

# ---- generic -------------------------------------------------------------------------------------
get() { curl -sS -m "${2:-10}" "$1" 2>&1; }                 # get URL [SECS]: body or curl's error
now_ms() { date +%s%3N; }
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_for SECS CMD...: poll (every 0.1 s) until CMD succeeds; 1 after SECS
wait_for() { local secs=$1 i; shift; for i in $(seq 1 $((secs*10))); do "$@" && return 0; sleep 0.1; done; return 1; }
has_line() { grep -q -- "$2" "$1" 2>/dev/null; }            # has_line FILE PATTERN
# The journal from a cursor on: c=$(jcursor); ...; jsince "$c" -u UNIT
jcursor() { sx journalctl -n 0 --show-cursor -q 2>/dev/null | sed -n 's/^-- cursor: //p'; }
jsince() { local c=$1; shift; sx journalctl --no-pager -q -o cat --after-cursor="$c" "$@" 2>/dev/null; }

# ---- load (tests/lib/loadgen.py) -----------------------------------------------------------------
loadgen_start() {  # loadgen_start NAME PORT [LOADGEN ARGS...]; summary in $W/load.NAME.json
  local name=$1 port=$2; shift 2
  rm -f "$W/stop.$name" "$W/load.$name.json"
  $PY "$H_LIB/loadgen.py" --port "$port" --stop-file "$W/stop.$name" --out "$W/load.$name.json" "$@" &
  bg_pids+=($!); eval "load_pid_$name=$!"
}
loadgen_stop() {   # loadgen_stop NAME: ends the load and waits for its summary
  local name=$1 pid; pid=$(eval echo "\$load_pid_$name")
  touch "$W/stop.$name"; wait "$pid" 2>/dev/null
}
lg() { $PY -c "import json; d=json.load(open('$W/load.$1.json')); print($2)"; }   # lg NAME PYEXPR
lg_failed() { lg "$1" 'd["refused"]+d["reset"]+d["timeout"]+d["bad"]'; }

# ---- the release trigger -------------------------------------------------------------------------
# trig_mark APP before an action, then `wait_for SECS trig_done APP`: true once the trigger run the
# action caused has ended (handoff-trigger@APP.service went inactive or failed since the mark).
# trig_mark also records the newest generation in g_before.
trig_mark() { g_before=$(maxgen "$1"); t_before=$(prop "$(trig_unit "$1")" InactiveEnterTimestampMonotonic); }
trig_done() {
  local u s; u=$(trig_unit "$1"); s=$(prop "$u" ActiveState)
  [ "$(prop "$u" InactiveEnterTimestampMonotonic)" != "$t_before" ] && { [ "$s" = inactive ] || [ "$s" = failed ]; }
}

# ---- overlays: let a test install into /usr /etc /opt /var without touching the host -------------
# overlay_script DIR: sh commands that mount overlays on /usr /etc /opt /var whose writes land in DIR
# (run them in a private mount namespace: the sandbox, or `unshare --mount`).
overlay_script() {
  local d
  for d in usr etc opt var; do
    printf 'mkdir -p %s/%s/up %s/%s/work && mount -t overlay overlay -o lowerdir=/%s,upperdir=%s/%s/up,workdir=%s/%s/work /%s\n' \
      "$1" $d "$1" $d $d "$1" $d "$1" $d $d
  done
}
