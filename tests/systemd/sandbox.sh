#!/bin/bash
# sandbox.sh: a real systemd (252+) as PID 1 of private pid/mount/uts/ipc/cgroup namespaces on the
# host's root filesystem, for handoff's systemd tests. The host's PID 1 need not be systemd.
#
# Derived from ../shared/systemd-sandbox/systemd-sandbox.sh; what changed and why:
#   - one state directory (and one cgroup, named after it) per sandbox, so a test run never meets a
#     sandbox left by another run, and two runs can coexist;
#   - `check` says up front what is missing on a fresh machine (root, unshare --cgroup, cgroup2, ...);
#   - `up` that fails half-way tears down what it started; `down` is idempotent and, if poweroff does
#     not finish (or the pid file is gone), kills whatever is left in the sandbox's cgroup;
#   - helpers for tests: install units and drop-ins, wait for a unit state (bounded), read the journal,
#     run a command inside without exec (usable when sourced).
#
# Usage (as root):
#   sandbox.sh check                    prerequisites; exit 1 with a reason if one is missing
#   sandbox.sh up                       boot; prints pid, state and boot time
#   sandbox.sh run CMD [ARGS...]        run CMD inside (systemctl, journalctl, systemd-run, ...)
#   sandbox.sh install FILE...          copy unit files into the sandbox's /run/systemd/system, daemon-reload
#   sandbox.sh dropin UNIT NAME         stdin becomes /run/systemd/system/UNIT.d/NAME.conf, daemon-reload
#   sandbox.sh wait UNIT STATE [SECS]   wait until ActiveState (or SubState) of UNIT is STATE (default 20 s)
#   sandbox.sh journal [ARGS...]        journalctl --no-pager ARGS inside the sandbox
#   sandbox.sh status | console | down
# Environment: SB_STATE (state dir, default /tmp/handoff-sandbox), SB_TIMEOUT (seconds, default 60).
# Sourcing this file (`. sandbox.sh`) defines the sb_* functions without running anything.
#
# What the sandbox shares with the host: the filesystem (/, /tmp, /etc, ...) and the network
# namespace, so sockets on 127.0.0.1 are reachable from the host. Private: /run, /dev, /proc,
# /sys/fs/cgroup, hostname, IPC. Units go into /run/systemd/system (a tmpfs that vanishes on down);
# `systemctl enable --runtime` only (plain enable would write into the host's /etc).
set -euo pipefail

SB_STATE=${SB_STATE:-/tmp/handoff-sandbox}
SB_TIMEOUT=${SB_TIMEOUT:-60}
SB_SYSTEMD=${SB_SYSTEMD:-/lib/systemd/systemd}
# The cgroup2 hierarchy on the host: hybrid layout (Debian CI hosts) or pure unified.
if [ -e /sys/fs/cgroup/unified/cgroup.procs ]; then SB_CG2=/sys/fs/cgroup/unified; else SB_CG2=/sys/fs/cgroup; fi
# One cgroup per state dir: its name is derived from the state dir's path.
SB_CG=${SB_CG:-handoff-sb-$(printf '%s' "$SB_STATE" | cksum | cut -d' ' -f1)}

sb_log() { echo "sandbox: $*" >&2; }

sb_pid() { cat "$SB_STATE/pid" 2>/dev/null || true; }   # host PID of the sandbox's PID 1

sb_alive() { local p; p=$(sb_pid); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

sb_check() {
  local ok=0 v
  [ "$(id -u)" = 0 ] || { sb_log "must run as root"; ok=1; }
  for v in unshare nsenter mount mknod timeout cksum; do
    command -v "$v" >/dev/null || { sb_log "missing $v (apt-get install util-linux coreutils mount)"; ok=1; }
  done
  if command -v unshare >/dev/null && ! unshare --help 2>&1 | grep -q -- '--cgroup'; then
    sb_log "unshare lacks --cgroup (util-linux >= 2.28 needed)"; ok=1
  fi
  [ -x "$SB_SYSTEMD" ] || { sb_log "no $SB_SYSTEMD (apt-get install systemd)"; ok=1; }
  command -v systemctl >/dev/null || { sb_log "no systemctl (apt-get install systemd)"; ok=1; }
  [ "$(stat -f -c %T "$SB_CG2" 2>/dev/null)" = cgroup2fs ] || { sb_log "no cgroup2 mount at $SB_CG2"; ok=1; }
  return $ok
}

sb_inner() {  # runs as PID 1 of the new namespaces, then execs systemd
  set -e
  # private /run (systemd's sockets, runtime units, volatile journal); -n: no utab write to host /run
  mount -n -t tmpfs -o mode=0755,nosuid,nodev,size=256m tmpfs /run
  mkdir -p /run/lock /run/systemd/system /run/systemd/journald.conf.d /run/systemd/system.conf.d
  # private /dev (like nspawn): otherwise /dev/log, /dev/initctl symlinks land in the host's /dev
  mkdir -p /run/.sbdev && mount -t tmpfs -o mode=0755,nosuid,size=64m tmpfs /run/.sbdev
  ( cd /run/.sbdev
    mknod -m 666 null c 1 3; mknod -m 666 zero c 1 5; mknod -m 666 full c 1 7
    mknod -m 666 random c 1 8; mknod -m 666 urandom c 1 9; mknod -m 666 tty c 5 0
    touch console && mount --bind "$SB_STATE/console.log" console   # PID 1 console -> host log file
    mkdir pts shm && chmod 1777 shm
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts pts && ln -s pts/ptmx ptmx
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs shm
    ln -s /proc/self/fd fd; ln -s fd/0 stdin; ln -s fd/1 stdout; ln -s fd/2 stderr )
  mount --move /run/.sbdev /dev && rmdir /run/.sbdev
  # cgroup: only a cgroup2 mount rooted at our cgroup namespace -> systemd runs in unified mode
  umount -R /sys/fs/cgroup 2>/dev/null || umount -l /sys/fs/cgroup
  # read-only /sys and /proc/sys like systemd-nspawn, so udev/sysctl/binfmt units skip themselves
  mount -o remount,bind,ro /sys
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
  mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
  # journal only in /run (the host may have /var/log/journal, which would make it persistent)
  printf '[Journal]\nStorage=volatile\nReadKMsg=no\nRateLimitBurst=0\n' > /run/systemd/journald.conf.d/sandbox.conf
  # Tests should fail fast rather than wait for the 90 s defaults.
  printf '[Manager]\nDefaultTimeoutStartSec=30s\nDefaultTimeoutStopSec=30s\n' > /run/systemd/system.conf.d/sandbox.conf
  # minimal default target instead of graphical.target (don't boot the host's services)
  cat > /run/systemd/system/sandbox.target <<'U'
[Unit]
Description=systemd sandbox target
Requires=sysinit.target
Wants=sockets.target paths.target slices.target
After=sysinit.target sockets.target paths.target slices.target
AllowIsolate=yes
U
  # units that would modify the shared host (tmpfiles D /tmp wipes /tmp!, sysusers, utmp, timers...)
  local u
  for u in systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service \
           systemd-tmpfiles-clean.service systemd-tmpfiles-clean.timer \
           systemd-sysctl.service systemd-modules-load.service kmod-static-nodes.service \
           systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
           systemd-random-seed.service systemd-update-utmp.service systemd-update-utmp-runlevel.service \
           systemd-firstboot.service systemd-machine-id-commit.service systemd-sysusers.service \
           systemd-pstore.service systemd-timesyncd.service systemd-journal-flush.service \
           systemd-repart.service systemd-pcrphase.service systemd-pcrphase-sysinit.service \
           systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
           systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service \
           systemd-remount-fs.service systemd-fsck-root.service ldconfig.service \
           systemd-update-done.service systemd-journal-catalog-update.service \
           dev-hugepages.mount dev-mqueue.mount sys-kernel-config.mount sys-kernel-debug.mount \
           sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
           apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
           e2scrub_reap.service fstrim.timer man-db.timer logrotate.timer \
           getty@tty1.service console-getty.service serial-getty@ttyS0.service \
           systemd-ask-password-console.path systemd-ask-password-wall.path; do
    ln -sf /dev/null "/run/systemd/system/$u"
  done
  exec env -i container=handoff-sandbox PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
       LANG=C.UTF-8 "$SB_SYSTEMD" --unit=sandbox.target --show-status=no
}

# Run CMD inside the sandbox (as a child; returns its exit code). Host variables that would confuse
# systemd tools inside (a notify socket, inherited listen fds) are dropped.
sb_in() {
  local pid; pid=$(sb_pid)
  [ -n "$pid" ] || { sb_log "not up (no $SB_STATE/pid)"; return 1; }
  nsenter --target "$pid" --mount --uts --ipc --pid --cgroup --wd="$PWD" -- \
    env -u NOTIFY_SOCKET -u LISTEN_PID -u LISTEN_FDS -u LISTEN_FDNAMES -u INVOCATION_ID "$@"
}

sb_up() {
  sb_check || return 1
  if sb_alive; then sb_log "already up (pid $(sb_pid))"; return 0; fi
  mkdir -p "$SB_STATE"; rm -f "$SB_STATE/pid" "$SB_STATE/unshare.pid"; : > "$SB_STATE/console.log"
  mkdir -p "$SB_CG2/$SB_CG"
  local t0 self; t0=$(date +%s.%N); self=$(readlink -f "${BASH_SOURCE[0]}")
  # move a subshell into our cgroup, then unshare: the cgroup namespace is rooted there
  ( echo $BASHPID > "$SB_CG2/$SB_CG/cgroup.procs"
    exec unshare --pid --fork --kill-child --mount --uts --ipc --cgroup --propagation private \
         --mount-proc env SB_STATE="$SB_STATE" SB_SYSTEMD="$SB_SYSTEMD" "$self" __inner
  ) </dev/null >"$SB_STATE/console.log" 2>&1 &
  local upid=$! pid=""
  echo "$upid" > "$SB_STATE/unshare.pid"
  for _ in $(seq 1 100); do  # host PID of the namespace's init (the child of unshare)
    pid=$(awk '{print $1}' "/proc/$upid/task/$upid/children" 2>/dev/null || true)
    [ -n "$pid" ] && break; sleep 0.05
  done
  if [ -z "$pid" ]; then sb_log "failed to start"; cat "$SB_STATE/console.log" >&2; sb_down >/dev/null; return 1; fi
  echo "$pid" > "$SB_STATE/pid"
  for _ in $(seq 1 $((SB_TIMEOUT*10))); do   # wait until systemd answers on its private socket
    [ -S "/proc/$pid/root/run/systemd/private" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      sb_log "systemd died"; cat "$SB_STATE/console.log" >&2; sb_down >/dev/null; return 1
    fi
    sleep 0.1
  done
  local st; st=$(timeout "$SB_TIMEOUT" "$self" run systemctl is-system-running --wait 2>&1 || true)
  echo "sandbox up: pid=$pid state=$st boot=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.3f", b-a}')s"
  case "$st" in
    running|degraded) ;;
    *) sb_log "boot did not finish (state '$st')"; cat "$SB_STATE/console.log" >&2; sb_down >/dev/null; return 1 ;;
  esac
}

# Kill everything still in the sandbox's cgroup subtree (last resort).
sb_kill_cgroup() {
  local cg=$SB_CG2/$SB_CG p
  [ -d "$cg" ] || return 0
  if [ -e "$cg/cgroup.kill" ]; then echo 1 > "$cg/cgroup.kill" 2>/dev/null || true; return 0; fi
  for _ in 1 2 3 4 5; do   # no cgroup.kill (kernel < 5.14): SIGKILL each pid, a few rounds
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r p; do
      kill -9 "$p" 2>/dev/null || true
    done
    sleep 0.1
  done
}

sb_down() {
  local pid upid
  pid=$(sb_pid); upid=$(cat "$SB_STATE/unshare.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -s SIGRTMIN+4 "$pid" 2>/dev/null || true      # systemd: poweroff (as nspawn does)
    for _ in $(seq 1 $((SB_TIMEOUT*10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then sb_log "poweroff timed out, SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
  fi
  # PID 1 of a pid namespace dying takes every process of the namespace with it; anything left in
  # the cgroup (e.g. the pid file was lost) is killed here.
  sb_kill_cgroup
  if [ -n "$upid" ]; then for _ in $(seq 1 50); do kill -0 "$upid" 2>/dev/null || break; sleep 0.1; done; fi
  if [ -d "$SB_CG2/$SB_CG" ]; then   # remove the (now empty) cgroups, deepest first
    for _ in $(seq 1 20); do
      find "$SB_CG2/$SB_CG" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [ -d "$SB_CG2/$SB_CG" ] || break; sleep 0.1
    done
  fi
  rm -f "$SB_STATE/pid" "$SB_STATE/unshare.pid"
  if [ -d "$SB_CG2/$SB_CG" ]; then sb_log "warning: cgroup $SB_CG2/$SB_CG still present"; return 1; fi
  echo "sandbox down"
}

# Copy unit files into the sandbox's runtime unit directory, then daemon-reload.
sb_install() {
  local pid; pid=$(sb_pid); [ -n "$pid" ] || { sb_log "not up"; return 1; }
  cp -- "$@" "/proc/$pid/root/run/systemd/system/"
  sb_in systemctl daemon-reload
}

# sb_dropin UNIT NAME: stdin becomes the drop-in UNIT.d/NAME.conf; then daemon-reload.
sb_dropin() {
  local pid; pid=$(sb_pid); [ -n "$pid" ] || { sb_log "not up"; return 1; }
  local d="/proc/$pid/root/run/systemd/system/$1.d"
  mkdir -p "$d" && cat > "$d/$2.conf"
  sb_in systemctl daemon-reload
}

# sb_wait UNIT STATE [SECS]: poll until ActiveState or SubState equals STATE; 1 on timeout.
sb_wait() {
  local unit=$1 want=$2 secs=${3:-20} n cur=""
  for ((n = 0; n < secs * 10; n++)); do
    cur=$(sb_in systemctl show -P ActiveState,SubState "$unit" 2>/dev/null | tr '\n' ' ')
    case " $cur" in *" $want "*) return 0 ;; esac
    sleep 0.1
  done
  sb_log "timeout: $unit is '$cur', wanted $want after ${secs}s"; return 1
}

sb_journal() { sb_in journalctl --no-pager "$@"; }

sb_main() {
  case "${1:-}" in
    check) sb_check && echo "sandbox prerequisites ok (cgroup2 at $SB_CG2, $("$SB_SYSTEMD" --version | head -1))" ;;
    up) sb_up ;;
    run) shift; sb_in "$@" ;;
    install) shift; sb_install "$@" ;;
    dropin) shift; sb_dropin "$@" ;;
    wait) shift; sb_wait "$@" ;;
    journal) shift; sb_journal "$@" ;;
    down) sb_down ;;
    status) echo "pid=$(sb_pid) state_dir=$SB_STATE cgroup=$SB_CG2/$SB_CG"; if sb_alive; then sb_in systemctl is-system-running || true; fi ;;
    console) cat "$SB_STATE/console.log" ;;
    __inner) sb_inner ;;
    *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' >&2; return 2 ;;
  esac
}

# Run only when executed, not when sourced.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then sb_main "$@"; fi
