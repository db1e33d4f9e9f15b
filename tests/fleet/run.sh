#!/bin/bash
# run.sh: a fleet rollout with the real ansible-playbook (examples/ansible/rollout.yml) against
# three hosts, each a sandboxed systemd (tests/systemd/sandbox.sh) reachable over real ssh.
#
#   1. builds the suite RPM and the example app as 1.0.0, 2.0.0 and a broken 3.0.0 (the same
#      build path as tests/rpm/run.sh: packaging/rpm/build.sh, cargo under nice);
#   2. makes (or reuses) a venv with ansible-core and ansible-lint from PyPI; ansible-lint on the role;
#   3. boots three sandboxes ("fleet-a", "fleet-b", "fleet-c"); in each: overlays over /usr /etc
#      /opt /var (rpm's files and database stay in the work directory), an rpm database, and
#      sshd on its own loopback port with a host key and a client key made for this run;
#   4. installs 1.0.0 everywhere with the playbook (each host's app on its own port, set by the
#      role), re-runs it (changed=0), runs it with --check for 2.0.0 (says what would change,
#      changes nothing);
#   5. under load on all three hosts (tests/lib/loadgen.py): rolls out 2.0.0 (0 failed requests,
#      every host on 2.0.0), then the broken 3.0.0 (the first host rolls back, the play fails
#      naming it and handoff's reason, the other two stay on 2.0.0 untouched, all keep answering);
#   6. attacks: repair by rolling out 2.0.0 again (with one host's handoff stopped by hand); a
#      wrong ssh key; a host unreachable when its batch comes (then the re-run that finishes the rollout).
# Prints PASS/FAIL per check, figures, and a last line "N passed, N failed"; exits non-zero when
# a check failed; always tears down (sandboxes, sshd, load generators, work directory).
#
# Run as root:   tests/fleet/run.sh
# Needs: rpm (rpmbuild), cargo, node + npm, python3 (venv, pip reaching PyPI unless FLEET_VENV has
# ansible already), openssh-server (/usr/sbin/sshd) + openssh-client, curl, systemd, util-linux,
# overlayfs. Environment: FLEET_VENV (venv with ansible-core + ansible-lint; made when missing;
# default target/fleet-venv), RPM_CARGO_TARGET_DIR (as tests/rpm), REUSE_RPMS=DIR (skip the builds),
# KEEP_WORK=1, RUN_TIMEOUT (default 2400 s).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
S=$top/tests/systemd/sandbox.sh
PKG=$top/packaging/rpm
PLAYDIR=$top/examples/ansible
PY=${PYTHON:-python3}
APP=example-app
HOSTS=(fleet-a fleet-b fleet-c)
VENV=${FLEET_VENV:-$top/target/fleet-venv}
# Pinned there: a new ansible-lint rule or ansible-core deprecation must not turn CI red by itself.
REQS=$PLAYDIR/requirements.txt
W=$(mktemp -d /tmp/handoff-fleet-test.XXXXXX)
chmod 755 "$W"
export RUN_TIMEOUT=${RUN_TIMEOUT:-2400}

hx() { local h=$1; shift; SB_STATE=$W/sb-$h timeout "${SX_TIMEOUT:-60}" "$S" run "$@"; }   # a command on host h
cleanup() {
  stop_background
  local h
  for h in "${HOSTS[@]}"; do
    [ -e "$W/sb-$h/pid" ] || continue
    if [ "$fail" != 0 ] && [ "${shown_journal:-0}" = 0 ]; then
      echo "---- last journal lines of $h ----"
      hx "$h" journalctl --no-pager -n 25 -o short-monotonic 2>/dev/null | cut -c1-200 | sed 's/^/  | /'
    fi
    SB_STATE=$W/sb-$h "$S" down >/dev/null 2>&1 || SB_STATE=$W/sb-$h "$S" down
  done
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work directory kept: $W"; else rm -rf "$W"; fi
}
# shellcheck source=../lib/suite.sh
. "$here/../lib/suite.sh"

# ---- helpers -------------------------------------------------------------------------------------
now_ms() { date +%s%3N; }
secs_since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN{printf "%.1f", (b-a)/1000}'; }
wait_for() { local secs=$1; shift; for _ in $(seq 1 $((secs*10))); do "$@" && return 0; sleep 0.1; done; return 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
hstatus() { hx "$1" handoff status --app $APP --json 2>/dev/null; }
hj() { hstatus "$1" | $PY -c "import json,sys; d=json.load(sys.stdin); print($2)" 2>/dev/null; }
curgen() { hj "$1" 'd["current_generation"]'; }
serving() {  # version of the current generation, as handoff says
  hj "$1" '[g["version"]["version"] for g in d["generations"] if g["number"]==d["current_generation"]][0]'
}
rpmq() { hx "$1" rpm --dbpath /var/lib/rpm -q --qf '%{VERSION}-%{RELEASE}' $APP 2>/dev/null; }
version_of() {  # the version the app on host h answers with
  curl -sS -m 10 "http://127.0.0.1:$(aport "$1")/" 2>/dev/null | $PY -c 'import json,sys; print(json.load(sys.stdin)["version"])' 2>/dev/null
}
jcursor() { hx "$1" journalctl -n 0 --show-cursor -q 2>/dev/null | sed -n 's/^-- cursor: //p'; }
rollovers_since() { hx "$1" journalctl --no-pager -q -o cat --after-cursor="$2" -u handoff@$APP.service 2>/dev/null | grep -c 'rollover started'; }
idx() { local i; for i in "${!HOSTS[@]}"; do [ "${HOSTS[$i]}" = "$1" ] && echo "$i"; done; }
aport() { echo "${APORTS[$(idx "$1")]}"; }
sport() { echo "${SPORTS[$(idx "$1")]}"; }

# play NAME ARGS...: ansible-playbook rollout.yml; output in $W/play.NAME.out, rc in $prc, seconds in $psecs
play() {
  local name=$1; shift; local t0; t0=$(now_ms)
  ( cd "$PLAYDIR" && timeout 900 "$VENV/bin/ansible-playbook" -i "$W/inventory.yml" rollout.yml \
      -e rollout_become=false "$@" ) > "$W/play.$name.out" 2>&1
  prc=$?; psecs=$(secs_since "$t0")
}
pout() { sed 's/^/      | /' "$W/play.$1.out" | tail -"${2:-40}"; }
# recap NAME HOST FIELD: a number from the PLAY RECAP line of HOST ("" when HOST is not in it)
recap() { sed -n "s/^$2 *: .*[^a-z]$3=\([0-9]*\).*/\1/p" "$W/play.$1.out" | tail -1; }
recap_line() { grep -E "^$2 +:" "$W/play.$1.out" | tail -1 | tr -s ' '; }
# changed_all NAME: "a=N b=N c=N" changed counts
changed_all() { local h s=""; for h in "${HOSTS[@]}"; do s="$s ${h#fleet-}=$(recap "$1" "$h" changed)"; done; echo "${s# }"; }

loadgen_start() {  # loadgen_start NAME: one generator per host, 2 connections each
  local name=$1 h
  for h in "${HOSTS[@]}"; do
    rm -f "$W/stop.$name" "$W/load.$name.$h.json"
    $PY "$top/tests/lib/loadgen.py" --port "$(aport "$h")" --concurrency 2 --timeout 15 --pause-ms 20 \
      --max-seconds 1200 --stop-file "$W/stop.$name" --out "$W/load.$name.$h.json" &
    bg_pids+=($!); eval "load_pid_${name}_${h//-/_}=$!"
  done
}
loadgen_stop() {
  local name=$1 h pid; touch "$W/stop.$name"
  for h in "${HOSTS[@]}"; do pid=$(eval echo "\$load_pid_${name}_${h//-/_}"); wait "$pid" 2>/dev/null; done
}
lg() { $PY -c "import json; d=json.load(open('$W/load.$1.$2.json')); print($3)" 2>/dev/null; }
lg_failed() { lg "$1" "$2" 'd["refused"]+d["reset"]+d["timeout"]+d["bad"]'; }
# load_report NAME: a line per host; PASS when no host saw a failed request
load_report() {
  local name=$1 h f tot=0 req=0 bad_hosts=""
  for h in "${HOSTS[@]}"; do
    f=$(lg_failed "$name" "$h"); [ -n "$f" ] || f=unknown
    info "load on $h (:$(aport "$h")): $(lg "$name" "$h" 'd["requests"]') requests, $(lg "$name" "$h" 'd["ok"]') ok, $f failed, by version $(lg "$name" "$h" 'd["by_version"]'), max latency $(lg "$name" "$h" 'd["max_latency_ms"]') ms in $(lg "$name" "$h" 'd["duration_s"]') s"
    [ "$f" = 0 ] && [ "$(lg "$name" "$h" 'd["ok"]')" -gt 20 ] || bad_hosts="$bad_hosts $h"
    req=$((req + $(lg "$name" "$h" 'd["requests"]' || echo 0))); [ "$f" = unknown ] || tot=$((tot + f))
  done
  if [ -z "$bad_hosts" ]; then ok "$2: all three hosts kept answering: $req requests, 0 failed"
  else
    bad "$2: failed or too few requests on$bad_hosts ($tot failed of $req)"
    for h in $bad_hosts; do info "$h errors: $(lg "$name" "$h" 'd["errors"][:4]')"; done
  fi
}

# ---- prerequisites -------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { bad "must run as root (the sandboxed systemd, mount namespaces)"; exit 1; }
for c in rpm rpmbuild cargo node npm "$PY" curl unshare ssh ssh-keygen; do
  command -v "$c" >/dev/null || { bad "missing $c (apt-get install rpm nodejs npm python3 curl util-linux openssh-client; cargo from rustup)"; exit 1; }
done
[ -x /usr/sbin/sshd ] || { bad "missing /usr/sbin/sshd (apt-get install openssh-server)"; exit 1; }
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null
grep -qw overlay /proc/filesystems || { bad "no overlayfs in this kernel"; exit 1; }
"$S" check >/dev/null || { bad "sandbox prerequisites: $("$S" check 2>&1)"; exit 1; }
mapfile -t PORTS < <($PY - <<'EOF'
import random, socket
ports = list(range(19100, 19300)); random.shuffle(ports); got = []
for p in ports:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); got.append(p)
    except OSError:
        pass
    finally:
        s.close()
    if len(got) == 6:
        break
print("\n".join(map(str, got)))
EOF
)
[ ${#PORTS[@]} = 6 ] || { bad "no 6 free ports in 19100-19299"; exit 1; }
SPORTS=("${PORTS[@]:0:3}") APORTS=("${PORTS[@]:3:3}")
echo "== work dir $W; ssh ports ${SPORTS[*]}; app ports ${APORTS[*]}"

# ---- 1. builds -----------------------------------------------------------------------------------
REPO=$W/repo
mkdir -p "$REPO"
CARGO_DIR=${RPM_CARGO_TARGET_DIR:-$top/target/rpm-cargo}
t_build() {
  local t0 v dir
  if [ -n "${REUSE_RPMS:-}" ]; then
    cp "$REUSE_RPMS"/handoff-[0-9]*.rpm "$REUSE_RPMS"/$APP-*.rpm "$REPO"/ && info "reusing the RPMs of $REUSE_RPMS"
  else
    t0=$(now_ms)
    if nice -n 10 "$PKG/build.sh" --outdir "$REPO" --cargo-target-dir "$CARGO_DIR" suite > "$W/build-suite.log" 2>&1; then
      ok "rpmbuild handoff.spec in $(secs_since "$t0") s (cargo target dir $CARGO_DIR)"
    else bad "rpmbuild handoff.spec:"; tail -25 "$W/build-suite.log" | sed 's/^/      /'; return 1; fi
    # 3.0.0: a syntax error in a controller, so Egg fails to boot (as in tests/rpm)
    mkdir -p "$W/broken"
    tar -C "$top/examples/egg-app" --exclude=./node_modules --exclude=./logs --exclude=./run -cf - . | tar -C "$W/broken" -xf -
    printf '\n// tests/fleet: a broken release\nthis is not javascript(\n' >> "$W/broken/app/controller/home.js"
    for v in 1.0.0 2.0.0 3.0.0; do
      dir=$top/examples/egg-app; [ $v = 3.0.0 ] && dir=$W/broken
      t0=$(now_ms)
      # Built for 127.0.0.1:7001; each host's role sets its own port (handoff_app_listen).
      if nice -n 10 "$PKG/build.sh" --outdir "$REPO" example-app --version $v --app-dir "$dir" > "$W/build-app-$v.log" 2>&1; then
        ok "rpmbuild example-app.spec $v$([ $v = 3.0.0 ] && echo ' (broken)') in $(secs_since "$t0") s"
      else bad "rpmbuild example-app.spec $v:"; tail -25 "$W/build-app-$v.log" | sed 's/^/      /'; return 1; fi
    done
  fi
  HRPM=$(cd "$REPO" && ls handoff-[0-9]*."$(uname -m)".rpm 2>/dev/null | head -1)
  [ -n "$HRPM" ] || { bad "no handoff-*.$(uname -m).rpm in $REPO"; return 1; }
  SUITE_V=$(rpm -qp --qf '%{VERSION}' "$REPO/$HRPM" 2>/dev/null); SUITE_R=$(rpm -qp --qf '%{RELEASE}' "$REPO/$HRPM" 2>/dev/null)
  for v in 1.0.0 2.0.0 3.0.0; do [ -f "$REPO/$APP-$v-1.noarch.rpm" ] || { bad "missing $APP-$v-1.noarch.rpm"; return 1; }; done
  rm -f "$REPO"/handoff-rpm-macros-* "$REPO"/handoff-debug*   # hosts need handoff and the app only
}

# ---- 2. ansible ----------------------------------------------------------------------------------
t_venv() {
  local t0; t0=$(now_ms)
  if [ -x "$VENV/bin/ansible-playbook" ] && [ -x "$VENV/bin/ansible-lint" ]; then
    info "ansible from $VENV"
  else
    if ! { nice -n 10 $PY -m venv "$VENV" && nice -n 10 "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQS"; } > "$W/pip.log" 2>&1; then
      bad "pip install -r $REQS into $VENV:"; tail -15 "$W/pip.log" | sed 's/^/      /'; return 1
    fi
    info "made $VENV from $REQS in $(secs_since "$t0") s"
  fi
  ok "$("$VENV/bin/ansible-playbook" --version 2>/dev/null | sed -n 1p | tr -d '[]'), $("$VENV/bin/ansible-lint" --version 2>/dev/null | head -1 | sed 's/\x1b\[[0-9;]*m//g; s/ using.*//')"
  # The controller's state stays in the work directory (not in ~/.ansible): temp files, ssh
  # control sockets; the hosts' temp files too.
  export ANSIBLE_HOME=$W/ansible-home ANSIBLE_LOCAL_TEMP=$W/ansible-local ANSIBLE_REMOTE_TMP=$W/ansible-remote
  export ANSIBLE_SSH_CONTROL_PATH_DIR=$W/cp ANSIBLE_RETRY_FILES_ENABLED=false ANSIBLE_NOCOLOR=1
  export ANSIBLE_PIPELINING=true ANSIBLE_TIMEOUT=20
  mkdir -p "$W/cp"
}

t_lint() {
  local out rc
  out=$(cd "$PLAYDIR" && timeout 300 nice -n 10 "$VENV/bin/ansible-lint" --offline --nocolor rollout.yml roles/handoff_app 2>&1); rc=$?
  echo "$out" > "$W/lint.out"
  if [ $rc = 0 ] && grep -q 'Passed: 0 failure(s), 0 warning(s)' <<<"$out"; then
    ok "ansible-lint rollout.yml roles/handoff_app: $(grep -o 'Passed: .*' <<<"$out")"
  else bad "ansible-lint (rc $rc):"; tail -20 <<<"$out" | sed 's/^/      /'; fi
}

# The role writes /etc/handoff/APP.toml over the package's: its worker command must be the one
# the package ships (a stale entry point fails every host's first start, worker exit status 1).
t_role_command() {
  local pkg role
  pkg=$(cd "$W" && rpm2cpio "$REPO/$APP-1.0.0-1.noarch.rpm" | cpio -i --quiet --to-stdout ./etc/handoff/$APP.toml \
    | "$VENV/bin/python" -c 'import sys, tomllib, json; print(json.dumps(tomllib.loads(sys.stdin.read())["command"]))')
  role=$("$VENV/bin/python" -c 'import sys, yaml, json
d = yaml.safe_load(open(sys.argv[1]))
print(json.dumps([c.replace("{{ handoff_app_dir }}", "/opt/" + sys.argv[2]) for c in d["handoff_app_command"]]))' \
    "$PLAYDIR/roles/handoff_app/defaults/main.yml" "$APP")
  if [ -n "$pkg" ] && [ "$pkg" = "$role" ]; then ok "the role's worker command is the package's: $role"
  else bad "the role's worker command ($role) is not the one $APP's rpm ships (${pkg:-none})"; fi
}

# ---- 3. three hosts ------------------------------------------------------------------------------
t_hosts() {
  local h i t0 d
  mkdir -p "$W/ssh" && chmod 700 "$W/ssh"
  ssh-keygen -q -t ed25519 -N '' -C fleet-test -f "$W/ssh/id" && ssh-keygen -q -t ed25519 -N '' -C wrong -f "$W/ssh/wrong" \
    && ssh-keygen -q -t ed25519 -N '' -C fleet-host -f "$W/ssh/hostkey" || { bad "ssh-keygen"; return 1; }
  cp "$W/ssh/id.pub" "$W/ssh/authorized_keys"
  : > "$W/ssh/known_hosts"
  t0=$(now_ms)
  for i in "${!HOSTS[@]}"; do
    h=${HOSTS[$i]}
    SB_STATE=$W/sb-$h "$S" up > "$W/boot.$h.out" 2>&1 || { bad "boot $h: $(cat "$W/boot.$h.out")"; return 1; }
    { echo 'set -e'
      for d in usr etc opt var; do
        echo "mkdir -p $W/ov-$h/$d/up $W/ov-$h/$d/work && mount -t overlay overlay -o lowerdir=/$d,upperdir=$W/ov-$h/$d/up,workdir=$W/ov-$h/$d/work /$d"
      done
      echo 'mkdir -p /var/lib/rpm && rpm --dbpath /var/lib/rpm --initdb'
      echo "hostname $h"
      echo 'mkdir -p /run/sshd && chmod 755 /run/sshd'
    } > "$W/setup.$h.sh"
    cat > "$W/ssh/sshd_config.$h" <<EOF
Port ${SPORTS[$i]}
ListenAddress 127.0.0.1
HostKey $W/ssh/hostkey
AuthorizedKeysFile $W/ssh/authorized_keys
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile /run/sshd-fleet.pid
Subsystem sftp internal-sftp
EOF
    hx "$h" sh "$W/setup.$h.sh" || { bad "$h: overlays, rpm database"; return 1; }
    hx "$h" systemd-run -q --unit=fleet-sshd --property=Restart=no /usr/sbin/sshd -D -e -f "$W/ssh/sshd_config.$h" \
      || { bad "$h: start sshd"; return 1; }
    echo "[127.0.0.1]:${SPORTS[$i]} $(cut -d' ' -f1,2 "$W/ssh/hostkey.pub")" >> "$W/ssh/known_hosts"
  done
  for i in "${!HOSTS[@]}"; do
    wait_for 20 port_open "${SPORTS[$i]}" || { bad "${HOSTS[$i]}: sshd does not listen on ${SPORTS[$i]}"; hx "${HOSTS[$i]}" journalctl -u fleet-sshd --no-pager | tail -5; return 1; }
  done
  ok "3 sandboxed systemd hosts up in $(secs_since "$t0") s, each with overlays (/usr /etc /opt /var), an rpm database and sshd on 127.0.0.1:${SPORTS[*]}"
  local inv=$W/inventory.yml
  { echo 'handoff_fleet:'
    echo '  hosts:'
    for i in "${!HOSTS[@]}"; do
      echo "    ${HOSTS[$i]}: {ansible_port: ${SPORTS[$i]}, handoff_app_listen: '127.0.0.1:${APORTS[$i]}'}"
    done
    echo '  vars:'
    echo '    ansible_host: 127.0.0.1'
    echo '    ansible_user: root'
    echo "    ansible_ssh_private_key_file: $W/ssh/id"
    echo "    ansible_ssh_common_args: -o UserKnownHostsFile=$W/ssh/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
    echo '    ansible_python_interpreter: /usr/bin/python3'
    echo "    handoff_app_repo_dir: $REPO"
    echo "    handoff_app_suite_version: '$SUITE_V'"
    echo "    handoff_app_suite_release: '$SUITE_R'"
    echo "    handoff_app_suite_arch: $(uname -m)"
    echo '    # Debian rpm (this test): the rpm database of /var/lib/rpm, no dependency database'
    echo '    handoff_app_rpm_dbpath: /var/lib/rpm'
    echo '    handoff_app_rpm_options: [--nodeps]'
  } > "$inv"
  local out
  out=$(cd "$PLAYDIR" && timeout 120 "$VENV/bin/ansible" -i "$inv" handoff_fleet -m ansible.builtin.command -a hostname 2>&1)
  echo "$out" > "$W/ping.out"
  if [ "$(grep -c 'CHANGED | rc=0' <<<"$out")" = 3 ] && grep -qx fleet-a <<<"$out" && grep -qx fleet-c <<<"$out"; then
    ok "ansible reaches all three over ssh (key and host key of this run): hostnames $(grep -x 'fleet-.' <<<"$out" | sort | tr '\n' ' ')"
  else bad "ansible ad-hoc over ssh:"; sed 's/^/      /' <<<"$out" | head -20; return 1; fi
}

# ---- 4. install, idempotence, check mode ---------------------------------------------------------
t_install() {
  play install -e handoff_app_version=1.0.0 -e '{"rollout_serial": "100%"}'
  local h good=0 vs=""
  for h in "${HOSTS[@]}"; do
    local v; v=$(version_of "$h"); vs="$vs $h:$v"
    [ "$v" = 1.0.0 ] && [ "$(serving "$h")" = 1.0.0 ] && [ "$(hj "$h" 'd["ready"]')" = 2 ] && good=$((good+1))
  done
  if [ $prc = 0 ] && [ $good = 3 ]; then
    ok "first install (serial 100%) in $psecs s: 1.0.0 serves on all three, each on its own port, 2/2 workers ready (changed $(changed_all install))"
  else
    bad "install: rc $prc, answers$vs"; pout install
    for h in "${HOSTS[@]}"; do
      info "---- $h: journalctl -u handoff@$APP ----"
      hx "$h" journalctl --no-pager -q -n 30 -o short-monotonic -u handoff@$APP.service 2>&1 | cut -c1-220 | sed 's/^/      | /'
    done
    shown_journal=1; return 1
  fi
  local en; en=$(hx fleet-b systemctl is-enabled handoff@$APP.socket handoff-trigger@$APP.path 2>&1 | tr '\n' ' ')
  local cfg; cfg=$(hx fleet-b head -1 /etc/handoff/$APP.toml 2>/dev/null)
  [ "$en" = "enabled enabled " ] && grep -q 'Ansible managed' <<<"$cfg" && [ ! -e /etc/handoff/$APP.toml ] \
    && ok "socket and path unit enabled; /etc/handoff/$APP.toml from the role's variables ('$cfg'); nothing on the host's /etc" \
    || bad "units '$en', config '$cfg'"
}

t_idempotent() {
  play again -e handoff_app_version=1.0.0
  local c; c=$(changed_all again)
  [ $prc = 0 ] && [ "$c" = "a=0 b=0 c=0" ] && ok "re-run with the same release: changed=0 on every host ($psecs s)" \
    || { bad "re-run: rc $prc, changed $c"; pout again 30; }
}

t_check() {
  local g; g="$(curgen fleet-a)$(curgen fleet-b)$(curgen fleet-c)"
  play check -e handoff_app_version=2.0.0 --check --diff
  local n; n=$(grep -c 'would change example-app 1.0.0-1 -> 2.0.0-1' "$W/play.check.out")
  local vs=""; local h; for h in "${HOSTS[@]}"; do vs="$vs$(rpmq "$h")/$(version_of "$h") "; done
  if [ $prc = 0 ] && [ "$n" = 3 ] && [ "$vs" = "1.0.0-1/1.0.0 1.0.0-1/1.0.0 1.0.0-1/1.0.0 " ] \
     && [ "$g" = "$(curgen fleet-a)$(curgen fleet-b)$(curgen fleet-c)" ] && grep -q 'rpm -U --test' "$W/play.check.out"; then
    ok "--check for 2.0.0 ($psecs s): 'would change example-app 1.0.0-1 -> 2.0.0-1' on each host (rpm -U --test ran; changed $(changed_all check)); nothing changed: still 1.0.0, same generations"
  else bad "--check: rc $prc, $n 'would change' lines, after: $vs"; pout check 30; fi
}

# ---- 5. rollouts under load ----------------------------------------------------------------------
t_rollout_v2() {
  local h cur_a cur_b cur_c
  cur_a=$(jcursor fleet-a); cur_b=$(jcursor fleet-b); cur_c=$(jcursor fleet-c)
  loadgen_start v2
  sleep 1
  play v2 -e handoff_app_version=2.0.0
  sleep 1
  loadgen_stop v2
  info "ansible-playbook rollout.yml 2.0.0: rc $prc in $psecs s; recap: $(recap_line v2 fleet-a); $(recap_line v2 fleet-b); $(recap_line v2 fleet-c)"
  local vs="" rq="" rolls=""
  for h in fleet-a fleet-b fleet-c; do
    vs="$vs$(version_of "$h")/$(serving "$h") "; rq="$rq$(rpmq "$h") "
  done
  rolls="$(rollovers_since fleet-a "$cur_a") $(rollovers_since fleet-b "$cur_b") $(rollovers_since fleet-c "$cur_c")"
  [ $prc = 0 ] && [ "$vs" = "2.0.0/2.0.0 2.0.0/2.0.0 2.0.0/2.0.0 " ] && [ "$rq" = "2.0.0-1 2.0.0-1 2.0.0-1 " ] \
    && ok "rollout 2.0.0: play ok, every host on 2.0.0 (rpm -q, handoff status, the app's answer), one rollover each ($rolls)" \
    || { bad "rollout 2.0.0: rc $prc, answers/status '$vs', rpm '$rq', rollovers '$rolls'"; pout v2; }
  [ "$rolls" = "1 1 1" ] || bad "rollovers per host during the 2.0.0 rollout: $rolls (want 1 1 1)"
  # serial [1, 25%] of 3 hosts: three batches of one, in inventory order; the gate ran after each
  local order; order=$(awk '/^TASK \[handoff_app : Install or upgrade the app package\]/{t=1; next} t && /^changed: \[/{gsub(/.*\[|\].*/,""); printf "%s ", $0; t=0} /^TASK/{t=0}' "$W/play.v2.out")
  local batches; batches=$(grep -c '^TASK \[handoff_app : Install or upgrade the app package\]' "$W/play.v2.out")
  local gates; gates=$(grep -c '2.0.0 serves: generation' "$W/play.v2.out")
  [ "$order" = "fleet-a fleet-b fleet-c " ] && [ "$batches" = 3 ] && [ "$gates" = 3 ] \
    && ok "one host at a time (the upgrade task ran in 3 batches: serial [1, 25%]), upgraded in order '$order'; each gated on handoff status ('$(grep -m1 -o '2.0.0 serves: generation[^"]*' "$W/play.v2.out")')" \
    || bad "batches: the upgrade task ran $batches times, upgrade order '$order', $gates gate reports"
  grep -q 'generation [0-9]* serves (2 workers) after' "$W/play.v2.out" \
    && ok "the play shows each upgrade's scriptlet: '$(grep -o 'generation [0-9]* serves ([0-9]* workers) after [0-9.]* m\?s' "$W/play.v2.out" | uniq | tr '\n' ';')'" \
    || bad "the scriptlet's rollover line is not in the play output"
  load_report v2 "under load during the 2.0.0 rollout"
  local allv; allv=$(for h in "${HOSTS[@]}"; do lg v2 "$h" 'sorted(d["by_version"])'; done | sort -u | tr '\n' ' ')
  grep -q "'1.0.0', '2.0.0'" <<<"$allv" && ok "each host answered 1.0.0 then 2.0.0 during it ($allv)" || bad "versions seen: $allv"
}

t_rollout_broken() {
  local h g_b g_c cur_b cur_c
  g_b=$(curgen fleet-b); g_c=$(curgen fleet-c); cur_b=$(jcursor fleet-b); cur_c=$(jcursor fleet-c)
  local g_a; g_a=$(curgen fleet-a)
  loadgen_start v3
  sleep 1
  play v3 -e handoff_app_version=3.0.0
  sleep 1
  loadgen_stop v3
  info "ansible-playbook rollout.yml 3.0.0 (broken): rc $prc in $psecs s; recap: $(recap_line v3 fleet-a)"
  local msg; msg=$(grep -m1 -o 'fleet-a: example-app 3.0.0 DID NOT START[^"]*' "$W/play.v3.out")
  if [ $prc != 0 ] && [ "$(recap v3 fleet-a failed)" = 1 ] && [ -n "$msg" ] && grep -q 'rolled back' <<<"$msg" && grep -q 'exited with status' <<<"$msg"; then
    ok "rollout 3.0.0: the play fails (rc $prc) on the first host with handoff's reason: '$(cut -c1-330 <<<"$msg")'"
  else bad "rollout 3.0.0: rc $prc, failed on fleet-a: '$(recap v3 fleet-a failed)', message '$msg'"; pout v3; fi
  grep -q 'NO MORE HOSTS LEFT' "$W/play.v3.out" && ok "ansible stops the play: 'NO MORE HOSTS LEFT' (max_fail_percentage: 0)" || bad "no 'NO MORE HOSTS LEFT' in the play output"
  [ "$(rpmq fleet-a)" = 3.0.0-1 ] && [ "$(version_of fleet-a)" = 2.0.0 ] && [ "$(serving fleet-a)" = 2.0.0 ] && [ "$(curgen fleet-a)" = "$g_a" ] \
    && ok "fleet-a rolled back: 3.0.0 installed, 2.0.0 (generation $g_a) keeps serving" \
    || bad "fleet-a: rpm $(rpmq fleet-a), answers $(version_of fleet-a), generation $g_a -> $(curgen fleet-a)"
  local touched; touched=$(grep -cE '\[fleet-(b|c)\]' "$W/play.v3.out")
  if [ "$touched" = 0 ] && [ "$(rpmq fleet-b)$(rpmq fleet-c)" = 2.0.0-12.0.0-1 ] && [ "$(curgen fleet-b)" = "$g_b" ] && [ "$(curgen fleet-c)" = "$g_c" ] \
     && [ "$(rollovers_since fleet-b "$cur_b")$(rollovers_since fleet-c "$cur_c")" = 00 ] \
     && [ "$(version_of fleet-b)$(version_of fleet-c)" = 2.0.02.0.0 ]; then
    ok "fleet-b and fleet-c untouched: no task ran there, rpm 2.0.0-1, same generations ($g_b, $g_c), no rollover in their journals, answering 2.0.0"
  else bad "fleet-b/c touched: $touched task lines, rpm $(rpmq fleet-b)/$(rpmq fleet-c), generations $g_b->$(curgen fleet-b) $g_c->$(curgen fleet-c)"; fi
  load_report v3 "under load during the failed 3.0.0 rollout"
  local seen; seen=$(for h in "${HOSTS[@]}"; do lg v3 "$h" 'sorted(d["by_version"])'; done | sort -u | tr '\n' ' ')
  [ "$seen" = "['2.0.0'] " ] && ok "every answer during it came from 2.0.0" || bad "versions answered during the broken rollout: $seen"
}

# ---- 6. attacks ----------------------------------------------------------------------------------
t_repair() {
  # fleet-a: 3.0.0 on disk, 2.0.0 serving. fleet-b: its handoff stopped by hand (socket and service).
  local g; g=$(curgen fleet-a); local cur; cur=$(jcursor fleet-a)
  hx fleet-b systemctl stop handoff@$APP.socket handoff@$APP.service >/dev/null 2>&1
  local st; st=$(hx fleet-b systemctl is-active handoff@$APP.socket handoff@$APP.service | tr '\n' ' ')
  port_open "$(aport fleet-b)" && bad "fleet-b still listens after stopping handoff"
  play repair -e handoff_app_version=2.0.0
  local n; n=$(rollovers_since fleet-a "$cur")
  [ $prc = 0 ] && [ "$(rpmq fleet-a)" = 2.0.0-1 ] && [ "$(curgen fleet-a)" = "$g" ] && [ "$n" = 0 ] \
    && grep -q 'unchanged since generation' "$W/play.repair.out" \
    && ok "repair: rollout.yml 2.0.0 again ($psecs s): fleet-a downgraded to 2.0.0-1 with no rollover (the scriptlet: '.../package.json unchanged since generation $g')" \
    || { bad "repair: rc $prc, fleet-a rpm $(rpmq fleet-a) generation $g -> $(curgen fleet-a), $n rollovers, changed $(changed_all repair)"; pout repair; }
  local v; v=$(version_of fleet-b)
  [ $prc = 0 ] && [ "$v" = 2.0.0 ] && [ "$(serving fleet-b)" = 2.0.0 ] && [ "$(recap repair fleet-b changed)" -ge 1 ] \
    && [ "$(recap repair fleet-c changed)" = 0 ] \
    && ok "the same play on fleet-b, whose handoff was stopped (socket+service: $st): started again and checked (changed $(changed_all repair)); 2.0.0 answers there; fleet-c changed=0" \
    || bad "stopped handoff on fleet-b: rc $prc, it answers '$v', changed $(changed_all repair)"
}

t_wrong_key() {
  # a control path of its own: the good key's ssh master connections must not be reused
  ANSIBLE_SSH_CONTROL_PATH_DIR=$W/cp-wrong play wrongkey -e handoff_app_version=1.0.0 -e "ansible_ssh_private_key_file=$W/ssh/wrong"
  local vs; vs="$(rpmq fleet-a) $(rpmq fleet-b) $(rpmq fleet-c)"
  [ $prc = 4 ] && grep -q 'UNREACHABLE' "$W/play.wrongkey.out" && grep -q 'Permission denied (publickey)' "$W/play.wrongkey.out" \
    && [ "$(recap wrongkey fleet-a unreachable)" = 1 ] && [ -z "$(recap wrongkey fleet-b ok)" ] && [ "$vs" = "2.0.0-1 2.0.0-1 2.0.0-1" ] \
    && ok "wrong ssh key: rc 4, fleet-a UNREACHABLE ('Permission denied (publickey)'), the play stops there; nothing changed anywhere ($vs)" \
    || { bad "wrong key: rc $prc, rpm $vs"; pout wrongkey 20; }
}

t_unreachable() {
  # fleet-c's sshd goes away before its batch: rollout to 1.0.0 (a real rollover, going back)
  hx fleet-c systemctl stop fleet-sshd
  wait_for 10 eval '! port_open '"$(sport fleet-c)"
  loadgen_start unreach
  sleep 1
  play unreach -e handoff_app_version=1.0.0
  local r1=$prc s1=$psecs
  hx fleet-c systemd-run -q --unit=fleet-sshd2 --property=Restart=no /usr/sbin/sshd -D -e -f "$W/ssh/sshd_config.fleet-c"
  wait_for 20 port_open "$(sport fleet-c)"
  play resume -e handoff_app_version=1.0.0
  sleep 1
  loadgen_stop unreach
  local vs; vs="$(rpmq fleet-a)/$(rpmq fleet-b)"
  if [ $r1 = 4 ] && [ "$(recap unreach fleet-c unreachable)" = 1 ] && [ "$vs" = 1.0.0-1/1.0.0-1 ] && grep -q 'UNREACHABLE' "$W/play.unreach.out"; then
    ok "fleet-c unreachable when its batch came (sshd stopped): rc 4 after $s1 s, fleet-a and fleet-b already on 1.0.0, fleet-c left on its release"
  else bad "unreachable: rc $r1, fleet-a/b rpm $vs, fleet-c unreachable=$(recap unreach fleet-c unreachable)"; pout unreach 25; fi
  [ $prc = 0 ] && [ "$(rpmq fleet-c)" = 1.0.0-1 ] && [ "$(version_of fleet-c)" = 1.0.0 ] && [ "$(recap resume fleet-a changed)$(recap resume fleet-b changed)" = 00 ] \
    && ok "re-run once it is back ($psecs s): fleet-c rolled to 1.0.0, fleet-a/b changed=0" \
    || { bad "resume: rc $prc, fleet-c $(rpmq fleet-c)/$(version_of fleet-c), changed $(changed_all resume)"; pout resume 25; }
  load_report unreach "under load during the interrupted rollout and its re-run"
}

t_host_untouched() {
  local left
  left=$(ls -d /opt/example-app /etc/handoff/example-app.toml /usr/lib/systemd/system/handoff@* /etc/systemd/system/handoff@example-app.socket.d 2>/dev/null)
  [ -z "$left" ] && ok "the machine's own /opt /etc /usr are untouched (no example-app, no handoff units)" || bad "on the host: $left"
}

t0_all=$(now_ms)
t_build || exit 1
t_venv || exit 1
t_lint
t_role_command
if t_hosts; then
  if t_install; then
    t_idempotent
    t_check
    t_rollout_v2
    t_rollout_broken
    t_repair
    t_wrong_key
    t_unreachable
  fi
fi
for h in "${HOSTS[@]}"; do SB_STATE=$W/sb-$h "$S" down >/dev/null 2>&1; done
t_host_untouched
info "fleet suite: $(secs_since "$t0_all") s in all"
