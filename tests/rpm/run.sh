#!/bin/bash
# run.sh: the RPM packaging end to end, with real rpmbuild, real rpm and a real systemd.
#
#   1. builds the suite (packaging/rpm/handoff.spec) and the example app (example-app.spec) as
#      v1 (1.0.0), v2 (2.0.0) and a broken v3 (3.0.0: a syntax error in a controller, so Egg
#      fails to boot);
#   2. checks without systemd: `rpm --eval` of every %handoff_* macro, the scriptlet helper with a
#      stand-in systemctl, the built packages (files, modes, scriptlets, dependencies, rpmlint
#      when installed), and an image-build style install where systemd is not running;
#   3. in a sandboxed systemd (tests/systemd/sandbox.sh): installs the suite and v1, upgrades to
#      v2 under continuous load (exactly one rollover, no failed request), to v3 (rolled back, v2
#      keeps serving, the failure is reported), downgrades to v2, erases everything.
# Prints PASS/FAIL per check and a last line "N passed, N failed"; exits non-zero when a check
# failed; always tears down (sandbox, namespaces, work directory).
#
# What it touches: nothing of the host's. The sandbox's /usr, /etc, /opt and /var are overlays
# whose writes land in the work directory (so rpm's files, the app's user, unit symlinks and the
# rpm database /var/lib/rpm vanish with it), and the image-build check runs in a mount namespace
# with the same kind of overlays. The rpm database is /var/lib/rpm inside the overlay: its lock
# /var/lib/rpm/.rpm.lock is the one handoff-trigger waits for by default, as on EL.
#
# Run as root, from anywhere:   tests/rpm/run.sh
# Needs: rpm (rpmbuild), cargo, node + npm, python3, curl, systemd + util-linux, overlayfs;
# rpmlint is used when installed. Environment: RPM_CARGO_TARGET_DIR (cargo's build directory for
# the suite RPM, kept between runs; default target/rpm-cargo), REUSE_RPMS=DIR (skip the builds,
# take the RPMs from DIR), KEEP_WORK=1 (keep the work directory), RUN_TIMEOUT (default 900 s).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
S=$top/tests/systemd/sandbox.sh
PKG=$top/packaging/rpm
PY=${PYTHON:-python3}
APP=example-app
W=$(mktemp -d /tmp/handoff-rpm-test.XXXXXX)
chmod 755 "$W"
export SB_STATE=$W/sandbox
# shellcheck source=../systemd/sandbox.sh
. "$S"
set +e   # sandbox.sh sets -e for its own use; the checks below handle failures themselves

cleanup() {
  stop_background
  if sb_alive; then
    if [ "$fail" != 0 ]; then
      echo "---- last journal lines of the sandbox (for the failures above) ----"
      timeout 20 "$S" run journalctl --no-pager -n 60 -o short-monotonic 2>/dev/null | cut -c1-220 | sed 's/^/  | /'
    fi
    sb_down >/dev/null 2>&1 || sb_down
  fi
  if [ "${KEEP_WORK:-0}" = 1 ]; then echo "work directory kept: $W"; else rm -rf "$W"; fi
}
# shellcheck source=../lib/suite.sh
. "$here/../lib/suite.sh"

# ---- helpers: tests/lib/handoff.sh (the packages install to /usr/bin, /etc/handoff, /opt) --------
# shellcheck source=../lib/handoff.sh
. "$here/../lib/handoff.sh"
TRIG=$(trig_unit $APP)
# Debian's rpm warns on every install that rpm is not its package manager: drop those two lines.
undebian() { grep -v -e 'RPM should not be used directly' -e 'assuming you know what you are doing'; }
# rpm inside the sandbox, on the overlay's database; output in $W/rpm.out, exit status returned
srpm() { SX_TIMEOUT=240 sx rpm --dbpath /var/lib/rpm "$@" > "$W/rpm.out.raw" 2>&1; local rc=$?; undebian < "$W/rpm.out.raw" > "$W/rpm.out"; return $rc; }
rpm_out() { sed 's/^/        rpm| /' "$W/rpm.out"; }
# the app's load: a longer timeout and a pause between requests (Egg is slower than the example worker)
app_load_start() { local name=$1; shift; loadgen_start "$name" "$PORT" --timeout 15 --pause-ms 5 "$@"; }
version_of() { get "http://127.0.0.1:$PORT/" "${1:-10}" | $PY -c 'import json,sys; print(json.load(sys.stdin)["version"])' 2>/dev/null; }

# ---- prerequisites -------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { bad "must run as root (the sandboxed systemd, mount namespaces)"; exit 1; }
for c in rpm rpmbuild cargo node npm "$PY" curl unshare; do
  command -v "$c" >/dev/null || { bad "missing $c (apt-get install rpm nodejs npm python3 curl util-linux; cargo from rustup)"; exit 1; }
done
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null
grep -qw overlay /proc/filesystems || { bad "no overlayfs in this kernel: the tests keep rpm off the host's files with it"; exit 1; }
sb_check || { bad "sandbox prerequisites"; exit 1; }
PORT=$($PY - <<'EOF'
import random, socket
ports = list(range(18900, 19000)); random.shuffle(ports)
for p in ports:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass
    finally:
        s.close()
EOF
)
[ -n "$PORT" ] || { bad "no free port in 18900-18999"; exit 1; }
host_had_user=$(getent passwd $APP >/dev/null && echo yes || echo no)
echo "== work dir $W, app port $PORT"

# ---- 1. builds -----------------------------------------------------------------------------------
OUT=$W/rpms
mkdir -p "$OUT"
CARGO_DIR=${RPM_CARGO_TARGET_DIR:-$top/target/rpm-cargo}
t_build() {
  if [ -n "${REUSE_RPMS:-}" ]; then
    cp "$REUSE_RPMS"/*.rpm "$OUT"/ && info "reusing the RPMs of $REUSE_RPMS"
  else
    local t0; t0=$(now_ms)
    if nice "$PKG/build.sh" --outdir "$OUT" --cargo-target-dir "$CARGO_DIR" suite > "$W/build-suite.log" 2>&1; then
      ok "rpmbuild handoff.spec in $(( ($(now_ms)-t0)/1000 )) s: $(cd "$OUT" && ls handoff-*.rpm | tr '\n' ' ')"
    else bad "rpmbuild handoff.spec:"; tail -25 "$W/build-suite.log" | sed 's/^/      /'; return 1; fi
    # The same suite as release 1.2: an upgrade of handoff itself (t_upgrade_suite). Cargo's
    # build is reused; only the packaging runs again.
    t0=$(now_ms)
    if nice "$PKG/build.sh" --outdir "$OUT/suite2" --cargo-target-dir "$CARGO_DIR" --rpmbuild-arg "--define=dist .2" suite > "$W/build-suite2.log" 2>&1; then
      ok "rpmbuild handoff.spec again as release 1.2 in $(( ($(now_ms)-t0)/1000 )) s"
    else bad "rpmbuild handoff.spec (release 1.2):"; tail -25 "$W/build-suite2.log" | sed 's/^/      /'; return 1; fi
    # v3: the example app with a syntax error in its controller (Egg loads it at boot and fails)
    mkdir -p "$W/broken"
    tar -C "$top/examples/egg-app" --exclude=./node_modules --exclude=./logs --exclude=./run -cf - . | tar -C "$W/broken" -xf -
    printf '\n// tests/rpm: a broken release\nthis is not javascript(\n' >> "$W/broken/app/controller/home.js"
    local v dir
    for v in 1.0.0 2.0.0 3.0.0; do
      dir=$top/examples/egg-app; [ $v = 3.0.0 ] && dir=$W/broken
      t0=$(now_ms)
      if nice "$PKG/build.sh" --outdir "$OUT" example-app --version $v --listen "127.0.0.1:$PORT" --app-dir "$dir" > "$W/build-app-$v.log" 2>&1; then
        ok "rpmbuild example-app.spec $v$([ $v = 3.0.0 ] && echo ' (broken)') in $(( ($(now_ms)-t0)/1000 )) s"
      else bad "rpmbuild example-app.spec $v:"; tail -25 "$W/build-app-$v.log" | sed 's/^/      /'; return 1; fi
    done
  fi
  HRPM=$(ls "$OUT"/handoff-[0-9]*."$(uname -m)".rpm 2>/dev/null | head -1)
  HRPM2=$(ls "$OUT"/suite2/handoff-[0-9]*."$(uname -m)".rpm 2>/dev/null | head -1)
  MRPM=$(ls "$OUT"/handoff-rpm-macros-*.noarch.rpm 2>/dev/null | head -1)
  A1=$OUT/$APP-1.0.0-1.noarch.rpm A2=$OUT/$APP-2.0.0-1.noarch.rpm A3=$OUT/$APP-3.0.0-1.noarch.rpm
  local f; for f in "$HRPM" "$MRPM" "$A1" "$A2" "$A3"; do [ -f "$f" ] || { bad "missing RPM ${f:-handoff/handoff-rpm-macros}"; return 1; }; done
  if [ -n "${REUSE_RPMS:-}" ]; then  # the port the app RPMs were built for
    PORT=$(rpm2cpio "$A1" | cpio -i --quiet --to-stdout ./usr/lib/systemd/system/handoff@$APP.socket.d/50-$APP.conf | sed -n 's/^ListenStream=127.0.0.1://p')
    info "the reused app RPMs listen on 127.0.0.1:$PORT"
  fi
}

# ---- 2a. the macros, as rpm expands them -----------------------------------------------------------
ev() { rpm --load "$PKG/macros.handoff" --eval "$1" 2>&1; }
t_eval() {
  local out helper=/usr/libexec/handoff/rpm-helper
  [ "$(rpm --eval '%{_libexecdir}')" = /usr/libexec ] || helper="$(rpm --eval '%{_libexecdir}')/handoff/rpm-helper"
  out=$(ev '%handoff_post -e -s myapp')
  grep -qF "$helper post myapp \"\$1\" --enable --start || :" <<<"$out" && grep -qF "if [ -x $helper ]" <<<"$out" \
    && ok "rpm --eval %handoff_post -e -s myapp: $(grep -oF "$helper post myapp \"\$1\" --enable --start" <<<"$out")" \
    || { bad "%handoff_post -e -s:"; echo "$out" | sed 's/^/      /'; }
  out=$(ev '%handoff_post myapp')
  grep -qF "$helper post myapp \"\$1\" || :" <<<"$out" && ! grep -q -- '--enable\|--start' <<<"$out" \
    && ok "rpm --eval %handoff_post myapp: presets decide, no start" || { bad "%handoff_post:"; echo "$out" | sed 's/^/      /'; }
  local m
  for m in preun postun; do
    out=$(ev "%handoff_$m myapp")
    grep -qF "$helper $m myapp \"\$1\" || :" <<<"$out" && ok "rpm --eval %handoff_$m myapp passes the scriptlet's \$1" \
      || { bad "%handoff_$m:"; echo "$out" | sed 's/^/      /'; }
  done
  out=$(ev '%handoff_posttrans myapp')
  grep -qF "$helper posttrans myapp || :" <<<"$out" && ok "rpm --eval %handoff_posttrans myapp" \
    || { bad "%handoff_posttrans:"; echo "$out" | sed 's/^/      /'; }
  out=$(ev '%handoff_requires')
  if grep -qx 'Requires: *handoff' <<<"$out" && grep -qx 'Requires(post): *handoff' <<<"$out" \
     && grep -qx 'Requires(preun): *handoff' <<<"$out" && grep -qx 'Requires(postun): *systemd' <<<"$out"; then
    ok "rpm --eval %handoff_requires: $(grep -c Requires <<<"$out") Requires lines (handoff and systemd for the scriptlets)"
  else bad "%handoff_requires:"; echo "$out" | sed 's/^/      /'; fi
  # the expansion is valid sh
  local sc=$W/scriptlet.sh
  ev '%handoff_post -e -s myapp' > "$sc" && sh -n "$sc" && ev '%handoff_preun myapp' > "$sc" && sh -n "$sc" \
    && ok "the expanded scriptlets are valid sh" || bad "an expanded scriptlet is not valid sh"
  # mistakes fail the build, with a message
  local rc
  out=$(ev '%handoff_post'); rc=$?
  [ $rc != 0 ] && grep -q 'app name is missing' <<<"$out" && ok "%handoff_post without an app fails: $out" \
    || bad "%handoff_post without an app: rc $rc, '$out'"
  out=$(ev '%handoff_preun a b'); rc=$?
  [ $rc != 0 ] && grep -q 'one app per call' <<<"$out" && ok "%handoff_preun with two apps fails: $out" \
    || bad "%handoff_preun a b: rc $rc, '$out'"
  out=$(ev '%handoff_postun -e myapp'); rc=$?
  [ $rc != 0 ] && ok "%handoff_postun -e (no such option) fails" || bad "%handoff_postun -e: rc $rc, '$out'"
  # handoff.spec on EL: systemd-rpm-macros' definitions win over the spec's stand-ins
  local units='handoff@.socket handoff@.service handoff-trigger@.path handoff-trigger@.service handoff-trigger-current@.path handoff-trigger-current@.service'
  out=$(rpmspec -P --define 'systemd_post() EL_POST %{?*}' --define 'systemd_preun() EL_PREUN %{?*}' \
        --define 'systemd_postun() EL_POSTUN %{?*}' --define 'systemd_requires Requires(post): el-systemd' \
        --define '_unitdir /usr/lib/systemd/EL' "$PKG/handoff.spec" 2>&1)
  if grep -qx "EL_POST $units" <<<"$out" && grep -qx "EL_PREUN $units" <<<"$out" && grep -qx "EL_POSTUN $units" <<<"$out" \
     && grep -qx 'Requires(post): el-systemd' <<<"$out" && grep -qx '/usr/lib/systemd/EL/handoff@.service' <<<"$out" \
     && ! grep -q 'daemon-reload' <<<"$out"; then
    ok "handoff.spec with systemd-rpm-macros defined (as on EL): their %systemd_post/preun/postun, %{systemd_requires}, %{_unitdir} are used, not the stand-ins"
  else bad "handoff.spec does not defer to systemd-rpm-macros:"; grep -E 'EL_|el-systemd|daemon-reload' <<<"$out" | sed 's/^/      /'; fi
  # the skeleton spec in docs/packaging.md parses, and its scriptlets call the helper
  sed -n '/^```spec$/,/^```$/p' "$top/docs/packaging.md" | sed '1d;$d' > "$W/docs-skeleton.spec"
  out=$(rpmspec -P --load "$PKG/macros.handoff" --define '_unitdir /usr/lib/systemd/system' "$W/docs-skeleton.spec" 2>&1); rc=$?
  [ $rc = 0 ] && [ "$(grep -c 'rpm-helper [a-z]* myapp' <<<"$out")" = 4 ] && grep -q '^Requires(post): *handoff' <<<"$out" \
    && ok "the example spec in docs/packaging.md parses with the macros ($(wc -l < "$W/docs-skeleton.spec") lines, 4 scriptlets)" \
    || { bad "docs/packaging.md's spec (rc $rc):"; echo "$out" | tail -5 | sed 's/^/      /'; }
  out=$(rpmspec -P "$PKG/handoff.spec" 2>&1)
  grep -q 'systemctl --no-reload preset handoff@.socket' <<<"$out" && grep -qx 'Requires(post): systemd' <<<"$out" \
    && ok "handoff.spec without systemd-rpm-macros (Debian's rpm): the stand-ins expand" || bad "stand-ins do not expand"
}

# ---- 2b. the helper, with stand-ins for systemctl and handoff ------------------------------------
t_helper() {
  local d=$W/helper H=$PKG/handoff-rpm-helper out rc
  mkdir -p "$d/bin" "$d/systemd"
  cat > "$d/bin/systemctl" <<EOF
#!/bin/sh
echo "\$*" >> "$d/calls"
case "\$1" in is-active) exit \${FAKE_ACTIVE:-0} ;; show) echo no ;; esac
exit 0
EOF
  cat > "$d/bin/handoff" <<EOF
#!/bin/sh
echo "\$*" >> "$d/calls"
echo "\${FAKE_OUT:-generation 2 serves (2 workers) after 900 ms}"; exit \${FAKE_RC:-0}
EOF
  chmod 755 "$d/bin/systemctl" "$d/bin/handoff"
  hp() {  # hp SYSTEMD(yes|no) ARGS...: run the helper, output in $out, calls in $d/calls
    local running=$1; shift
    : > "$d/calls"
    out=$(SYSTEMCTL=$d/bin/systemctl HANDOFF_BIN=$d/bin/handoff HANDOFF_RPM_STATE_DIR=$d/state \
          HANDOFF_RPM_SYSTEMD_DIR=$([ "$running" = yes ] && echo "$d/systemd" || echo "$d/none") "$H" "$@" 2>&1)
  }
  calls() { tr '\n' ';' < "$d/calls"; }
  # image build: systemd not running
  hp no post x 1 --enable --start; rc=$?
  [ $rc = 0 ] && [ "$(calls)" = "--no-reload enable handoff@x.socket handoff-trigger@x.path;" ] && [ "$(cat "$d/state/x")" = start ] \
    && ok "helper, no systemd: first install enables the socket and the .path unit (offline), remembers 'start'" \
    || bad "helper post 1 (no systemd): rc $rc calls '$(calls)' state '$(cat "$d/state/x" 2>/dev/null)' out '$out'"
  hp no post x 1 --enable --start
  [ "$(cat "$d/state/x")" = start ] && ok "helper: post twice is harmless" || bad "helper: post twice"
  hp no posttrans x; rc=$?
  [ $rc = 0 ] && [ -z "$(calls)" ] && [ ! -e "$d/state/x" ] && grep -q 'systemd is not running here' <<<"$out" \
    && ok "helper, no systemd: posttrans starts nothing, says so: $out" \
    || bad "helper posttrans (no systemd): rc $rc calls '$(calls)' out '$out'"
  hp no posttrans x; rc=$?
  [ $rc = 0 ] && [ -z "$(calls)" ] && [ -z "$out" ] && ok "helper: a second posttrans does nothing" || bad "helper: second posttrans: '$(calls)' '$out'"
  hp no post x 1
  [ "$(calls)" = "--no-reload preset handoff@x.socket handoff-trigger@x.path;" ] && ok "helper: without --enable the presets decide" \
    || bad "helper post without --enable: '$(calls)'"
  hp no preun x 1
  [ -z "$(calls)" ] && ok "helper: preun of an upgrade (1) does nothing" || bad "helper preun 1: '$(calls)'"
  hp no preun x 0
  [ "$(calls)" = "--no-reload disable handoff-trigger@x.path handoff@x.socket handoff@x.service;" ] && [ ! -e "$d/state/x" ] \
    && ok "helper, no systemd: erase disables offline" || bad "helper preun 0 (no systemd): '$(calls)'"
  # systemd running (stand-in): upgrade
  hp yes post x 2; hp yes posttrans x; rc=$?
  [ $rc = 0 ] && grep -q 'reload --if-changed --control /run/handoff-x/control.sock' "$d/calls" && grep -q 'generation 2 serves' <<<"$out" \
    && ok "helper, systemd running: upgrade -> posttrans runs handoff reload --if-changed: $out" \
    || bad "helper upgrade posttrans: rc $rc calls '$(calls)' out '$out'"
  hp yes post x 2; FAKE_RC=1 FAKE_OUT="rolled back: worker exited with status 1" hp yes posttrans x; rc=$?
  [ $rc = 0 ] && grep -q 'DID NOT START' <<<"$out" && grep -q "stop handoff-trigger@x.service" "$d/calls" \
    && ok "helper: a rolled-back rollover is reported (exit 0), the pending trigger run cancelled" \
    || bad "helper rolled back: rc $rc calls '$(calls)' out '$out'"
  hp yes post x 2; FAKE_ACTIVE=3 hp yes posttrans x; rc=$?
  [ $rc = 0 ] && ! grep -q reload "$d/calls" && grep -q 'not running' <<<"$out" \
    && ok "helper: upgrade of a stopped app rolls nothing over: $out" || bad "helper stopped app: '$(calls)' '$out'"
  hp yes post x 1 --start; hp yes posttrans x
  grep -q '^daemon-reload' "$d/calls" && grep -q '^start handoff@x.socket handoff-trigger@x.path' "$d/calls" \
    && ok "helper: first install with systemd running: daemon-reload, start socket + path" || bad "helper first install: '$(calls)'"
  local n
  for n in 'a b' '../x' '' '-x'; do
    hp yes post "$n" 1; rc=$?
    [ $rc = 64 ] || { bad "helper accepted the app name '$n' (rc $rc)"; return; }
  done
  hp yes post x; rc=$?
  [ $rc = 64 ] && ok "helper: invalid app names and missing arguments are usage errors (64)" || bad "helper: post without count rc $rc"
}

# ---- 2c. the packages ----------------------------------------------------------------------------
t_packages() {
  local v files
  v=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$top/Cargo.toml")
  [ "$(rpm -qp --qf '%{VERSION}' "$HRPM" 2>/dev/null)" = "$v" ] && ok "handoff RPM version $v = Cargo.toml's" \
    || bad "handoff RPM version $(rpm -qp --qf '%{VERSION}' "$HRPM") != $v"
  files=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]' "$HRPM" 2>/dev/null)
  local want bad_modes=""
  for want in '-rwxr-xr-x root:root /usr/bin/handoff' '-rwxr-xr-x root:root /usr/bin/handoff-trigger' \
              '-rwxr-xr-x root:root /usr/libexec/handoff/rpm-helper' \
              '-rw-r--r-- root:root /usr/lib/systemd/system/handoff@.socket' '-rw-r--r-- root:root /usr/lib/systemd/system/handoff@.service' \
              '-rw-r--r-- root:root /usr/lib/systemd/system/handoff-trigger@.path' '-rw-r--r-- root:root /usr/lib/systemd/system/handoff-trigger@.service' \
              '-rw-r--r-- root:root /usr/lib/systemd/system/handoff-trigger-current@.path' '-rw-r--r-- root:root /usr/lib/systemd/system/handoff-trigger-current@.service' \
              '-rw-r--r-- root:root /usr/share/man/man1/handoff.1.gz' '-rw-r--r-- root:root /usr/share/man/man1/handoff-run.1.gz' \
              '-rw-r--r-- root:root /usr/share/man/man1/handoff-reload.1.gz' '-rw-r--r-- root:root /usr/share/man/man1/handoff-status.1.gz' \
              '-rw-r--r-- root:root /usr/share/man/man1/handoff-trigger.1.gz' \
              '-rw-r--r-- root:root /usr/share/bash-completion/completions/handoff' '-rw-r--r-- root:root /usr/share/zsh/site-functions/_handoff' \
              '-rw-r--r-- root:root /usr/share/doc/handoff/README.md' 'drwxr-xr-x root:root /etc/handoff'; do
    grep -qxF -e "$want" <<<"$files" || bad_modes="$bad_modes; missing '$want'"
  done
  grep -q ' /usr/lib/rpm/macros.d/macros.handoff$' <<<"$files" && bad_modes="$bad_modes; macros file in the main package"
  [ -z "$bad_modes" ] && ok "handoff RPM: binaries, helper, 4 unit templates, man pages, completions, docs, /etc/handoff with the right modes and owners" \
    || bad "handoff RPM files${bad_modes}"
  [ "$(rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$MRPM" 2>/dev/null)" = "-rw-r--r-- /usr/lib/rpm/macros.d/macros.handoff" ] \
    && ok "handoff-rpm-macros RPM: only %{_rpmmacrodir}/macros.handoff (0644), noarch" || bad "handoff-rpm-macros files: $(rpm -qlp "$MRPM")"
  # the units run what the package installs
  local d=$W/x-suite
  mkdir -p "$d" && (cd "$d" && rpm2cpio "$HRPM" | cpio -idm --quiet)
  local exe missing=""
  for exe in $(grep -ho '^Exec[A-Za-z]*=[^ ]*' "$d"/usr/lib/systemd/system/* | cut -d= -f2 | sort -u); do
    [ -x "$d$exe" ] || missing="$missing $exe"
  done
  [ -z "$missing" ] && ok "every Exec*= of the units names a binary of the package ($(grep -ho '^Exec[A-Za-z]*=[^ ]*' "$d"/usr/lib/systemd/system/* | cut -d= -f2 | sort -u | tr '\n' ' '))" \
    || bad "units run binaries the package lacks:$missing"
  if command -v systemd-analyze >/dev/null; then
    local va rc
    va=$(systemd-analyze verify --man=no --recursive-errors=no --root="$d" \
        handoff@demo.socket handoff@demo.service handoff-trigger@demo.path handoff-trigger@demo.service 2>&1); rc=$?
    [ $rc = 0 ] && [ -z "$va" ] && ok "systemd-analyze verify --root of the packaged units (instance demo): clean" \
      || bad "systemd-analyze verify of the packaged units (rc $rc): $va"
  fi
  local mw="" pg
  if ! command -v man >/dev/null; then info "man not installed: man pages not rendered"
  else for pg in "$d"/usr/share/man/man1/*.1.gz; do
    mw="$mw$(zcat "$pg" | LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l - 2>&1 >/dev/null)"
  done
  [ -z "$mw" ] && grep -q -- '--rpm-lock' <<<"$(zcat "$d/usr/share/man/man1/handoff-trigger.1.gz" | MANWIDTH=80 man -l - 2>/dev/null)" \
    && ok "man pages render without warnings: $(cd "$d/usr/share/man/man1" && ls | tr '\n' ' ')" || bad "man pages: '$mw'"
  fi
  # scriptlets
  local sc; sc=$(rpm -qp --scripts "$A2" 2>/dev/null)
  if grep -qF 'rpm-helper post example-app "$1" --enable --start' <<<"$sc" && grep -qF 'rpm-helper preun example-app "$1"' <<<"$sc" \
     && grep -qF 'rpm-helper postun example-app "$1"' <<<"$sc" && grep -q '^posttrans scriptlet' <<<"$sc" \
     && grep -qF 'rpm-helper posttrans example-app' <<<"$sc"; then
    ok "example-app scriptlets: post/preun/postun/posttrans call the helper (rpm -qp --scripts)"
  else bad "example-app scriptlets:"; echo "$sc" | sed 's/^/      /'; fi
  sc=$(rpm -qp --scripts "$HRPM" 2>/dev/null)
  grep -q 'systemctl --no-reload preset handoff@.socket' <<<"$sc" && grep -q 'daemon-reload' <<<"$sc" \
    && ok "handoff scriptlets: %systemd_post/%systemd_preun/%systemd_postun (stand-ins here)" || { bad "handoff scriptlets:"; echo "$sc" | sed 's/^/      /'; }
  # dependencies: none derived from the bundled node_modules
  local req unexpected
  req=$(rpm -qp --qf '[%{REQUIREFLAGS:deptype} %{REQUIRENAME}\n]' "$A2" 2>/dev/null | sort -u)
  unexpected=$(awk '{print $2}' <<<"$req" | sort -u | grep -v -x -e handoff -e systemd -e 'nodejs' -e shadow-utils -e /bin/sh -e 'config(example-app)' -e 'rpmlib(.*)')
  if [ -z "$unexpected" ] && grep -q '^post handoff' <<<"$req" && grep -q '^preun handoff' <<<"$req" && grep -q '^pre shadow-utils' <<<"$req"; then
    ok "example-app Requires: handoff (also for post/preun/postun), systemd, nodejs, shadow-utils; nothing from node_modules"
  else bad "example-app requires: unexpected '$unexpected'"; echo "$req" | sed 's/^/      /'; fi
  # the handoff packages are bundled as npm installed them (node_modules), no copied entry script
  local appfiles; appfiles=$(rpm -qlp "$A2" 2>/dev/null)
  if grep -qx /opt/example-app/node_modules/egg-handoff/bin/egg-handoff-start.js <<<"$appfiles" \
     && grep -qx /opt/example-app/node_modules/@handoff/worker/index.js <<<"$appfiles" \
     && ! grep -q -e '^/opt/example-app/handoff-entry.js$' -e '^/opt/example-app/lib/' <<<"$appfiles"; then
    ok "example-app bundles egg-handoff and @handoff/worker in node_modules; no copied handoff-entry.js or lib/"
  else bad "example-app files: $(grep -v node_modules/ <<<"$appfiles" | tr '\n' ' ')"; fi
  [ "$(rpm -qp --qf '%{ARCH}' "$A2" 2>/dev/null)" = noarch ] && ok "example-app is noarch" || bad "example-app arch $(rpm -qp --qf '%{ARCH}' "$A2")"
  # package.json carries the version: the release marker
  local vv="" f
  for f in "$A1" "$A2" "$A3"; do
    mkdir -p "$W/x-app" && rm -rf "$W/x-app"/* && (cd "$W/x-app" && rpm2cpio "$f" | cpio -idm --quiet ./opt/example-app/package.json ./etc/handoff/example-app.toml)
    vv="$vv $($PY -c "import json; d=json.load(open('$W/x-app/opt/example-app/package.json')); print(d['version'] + '/' + d['rpmRelease'])")"
  done
  [ "$vv" = " 1.0.0/example-app-1.0.0-1 2.0.0/example-app-2.0.0-1 3.0.0/example-app-3.0.0-1" ] \
    && ok "package.json in the app RPMs:$vv" || bad "package.json versions:$vv"
  grep -q '^version_file = "/opt/example-app/package.json"' "$W/x-app/etc/handoff/example-app.toml" && grep -q '^user = "example-app"' "$W/x-app/etc/handoff/example-app.toml" \
    && ok "/etc/handoff/example-app.toml: version_file is the package.json, workers run as example-app" || bad "example-app.toml: $(cat "$W/x-app/etc/handoff/example-app.toml")"
  [ "$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$A2" 2>/dev/null | grep ' /etc/handoff/example-app.toml$' | cut -d' ' -f1)" = cn ] \
    && ok "the app's handoff config is %config(noreplace)" || bad "example-app.toml is not %config(noreplace)"
  # rpmlint, where installed (Debian: apt-get install rpmlint)
  if command -v rpmlint >/dev/null; then
    local lo e
    lo=$(cd "$W" && rpmlint -r "$PKG/handoff.rpmlintrc" "$HRPM" "$MRPM" 2>&1)
    e=$(grep -E ': [EW]: ' <<<"$lo" | grep -v unused-rpmlintrc-filter)
    [ -z "$e" ] && ok "rpmlint handoff, handoff-rpm-macros: no errors, no warnings (filters in packaging/rpm/handoff.rpmlintrc)" || { bad "rpmlint handoff:"; echo "$e" | sed 's/^/      /'; }
    lo=$(cd "$W" && rpmlint -r "$PKG/example-app.rpmlintrc" "$A2" 2>&1)
    e=$(grep -E ': [EW]: ' <<<"$lo" | grep -v unused-rpmlintrc-filter)
    [ -z "$e" ] && ok "rpmlint example-app: no errors, no warnings (filters in packaging/rpm/example-app.rpmlintrc)" || { bad "rpmlint example-app:"; echo "$e" | head -20 | sed 's/^/      /'; }
    lo=$( (cd "$W" && rpmlint -r "$PKG/handoff.rpmlintrc" "$PKG/handoff.spec"; rpmlint -r "$PKG/example-app.rpmlintrc" "$PKG/example-app.spec") 2>&1)
    e=$(grep -E ': E: ' <<<"$lo" | grep -v unused-rpmlintrc-filter)
    [ -z "$e" ] && ok "rpmlint of both specs: no errors" || { bad "rpmlint specs:"; echo "$e" | sed 's/^/      /'; }
  else
    info "rpmlint not installed (apt-get install rpmlint): the checks above stand in for it"
  fi
}

# ---- 2d. an image build: rpm -i where systemd is not running ------------------------------------
# A private mount namespace on the host (PID 1 is not systemd there): overlays over /usr /etc /opt
# /var (overlay_script, tests/lib/handoff.sh) and an empty /run, so /run/systemd/system is absent,
# as in a chroot or a container build.
t_image_build() {
  local ov=$W/ov-image out rc
  {
    echo 'set -e'
    overlay_script "$ov"
    echo 'mount -t tmpfs tmpfs /run'
    echo 'mkdir -p /var/lib/rpm && rpm --dbpath /var/lib/rpm --initdb'
    echo "rpm --dbpath /var/lib/rpm -i --nodeps '$HRPM' '$A1'"
    echo 'echo "== enabled:"; ls /etc/systemd/system/sockets.target.wants/ /etc/systemd/system/paths.target.wants/'
    echo 'getent passwd example-app >/dev/null && echo "== user example-app exists"'
    echo "ls /var/lib/rpm-state/handoff/ 2>/dev/null | sed 's/^/== leftover state: /'"
    echo "rpm --dbpath /var/lib/rpm -e example-app handoff"
    echo 'echo "== after erase:"; ls /etc/systemd/system/sockets.target.wants/ /etc/systemd/system/paths.target.wants/ 2>&1 | grep handoff || echo "no handoff units enabled"'
  } > "$W/image-build.sh"
  out=$(timeout 300 unshare --mount --propagation private sh "$W/image-build.sh" 2>&1 | undebian); rc=$?
  echo "$out" > "$W/image-build.out"
  if [ $rc = 0 ] && grep -q 'handoff@example-app.socket' <<<"$out" && grep -q 'handoff-trigger@example-app.path' <<<"$out" \
     && grep -q 'systemd is not running here' <<<"$out" && grep -q 'user example-app exists' <<<"$out" && ! grep -q 'leftover state' <<<"$out"; then
    ok "image build (no systemd running): rpm -i exits 0, socket + path unit enabled offline, nothing started: '$(grep 'not running here' <<<"$out")'"
  else bad "image build install (rc $rc):"; echo "$out" | sed 's/^/      /'; fi
  grep -q 'no handoff units enabled' <<<"$out" && ok "image build: rpm -e disables them offline" || bad "image build erase left units enabled"
  if grep -q ":$PORT " <<<"$(ss -ltn 2>/dev/null)"; then bad "something listens on $PORT after the image build"; fi
}

# ---- 3. the sandboxed systemd --------------------------------------------------------------------
t_boot() {
  sb_up > "$W/boot.out" 2>&1 || { bad "sandbox boot: $(cat "$W/boot.out")"; return 1; }
  local ov=$W/ov-sandbox
  overlay_script "$ov" > "$W/overlays.sh"
  sx sh -e "$W/overlays.sh" && sx sh -c 'mkdir -p /var/lib/rpm && rpm --dbpath /var/lib/rpm --initdb' \
    && [ "$(sx findmnt -n -o FSTYPE /usr)" = overlay ] \
    || { bad "overlays in the sandbox"; return 1; }
  ok "sandbox up ($(sed -n 's/^sandbox up: //p' "$W/boot.out")); /usr /etc /opt /var are overlays, rpm database /var/lib/rpm in it"
}

t_install_suite() {
  srpm -i --nodeps "$HRPM" "$MRPM"; local rc=$?
  [ $rc = 0 ] && [ "$(sx rpm --dbpath /var/lib/rpm -q handoff 2>/dev/null)" = "$(rpm -qp "$HRPM" 2>/dev/null)" ] \
    && ok "rpm -i handoff handoff-rpm-macros: $(sx rpm --dbpath /var/lib/rpm -qa 2>/dev/null | sort | tr '\n' ' ')" \
    || { bad "rpm -i the suite (rc $rc):"; rpm_out; return 1; }
  [ "$(prop handoff@probe.socket LoadState)" = loaded ] && [ "$(sx rpm --eval '%{?handoff_post:defined}' 2>/dev/null)" = defined ] \
    && ok "systemd knows the templates (handoff@probe.socket loads), rpm knows the macros" || bad "templates not loaded / macros not defined"
}

t_install_v1() {
  srpm -i --nodeps "$A1"; local rc=$?
  local st_sock st_path st_svc en
  st_sock=$(prop handoff@$APP.socket ActiveState); st_path=$(prop handoff-trigger@$APP.path ActiveState)
  st_svc=$(prop handoff@$APP.service ActiveState)
  en=$(sx systemctl is-enabled handoff@$APP.socket handoff-trigger@$APP.path 2>&1 | tr '\n' ' ')
  if [ $rc = 0 ] && [ "$st_sock" = active ] && [ "$st_path" = active ] && [ "$en" = "enabled enabled " ] && grep -q 'started handoff@example-app.socket' "$W/rpm.out"; then
    ok "rpm -i example-app 1.0.0: socket and .path unit enabled and started, service $st_svc until the first connection: $(cat "$W/rpm.out")"
  else bad "rpm -i v1: rc $rc, socket $st_sock, path $st_path, enabled '$en'"; rpm_out; return 1; fi
  local first t0 t1 g; t0=$(now_ms); first=$(get "http://127.0.0.1:$PORT/" 60); t1=$(now_ms)
  # The first worker answers as soon as it listens; generation 1 is current once all are ready.
  wait_for 30 eval '[ "$(curgen $APP)" = 1 ]'; g=$(curgen $APP)
  if grep -q '"version":"1.0.0"' <<<"$first" && [ "$g" = 1 ]; then
    ok "127.0.0.1:$PORT answers version 1.0.0 (socket activation, Egg booted in $((t1-t0)) ms), generation 1"
  else bad "v1: the first request got '$first' after $((t1-t0)) ms, generation '$g'; now: '$(get "http://127.0.0.1:$PORT/")'"; return 1; fi
  local uid users; uid=$(sx id -u $APP 2>/dev/null)
  users=$(sx ps -o uid= -C node 2>/dev/null | tr -d ' ' | sort | uniq -c | tr -s ' ' | tr '\n' ';')
  [ -n "$uid" ] && [ "$users" = " 2 $uid;" ] && [ "$(sx ps -o uid= -C handoff 2>/dev/null | tr -d ' ')" = 0 ] \
    && ok "2 workers, running as $APP (uid $uid); handoff runs as root" || bad "worker uids: '$users' ($APP is uid '$uid')"
}

t_upgrade_v2() {
  local g0 cur t0 t1 rc
  g0=$(curgen $APP); cur=$(jcursor); trig_mark $APP
  app_load_start v2 --concurrency 4 --max-seconds 180
  sleep 1
  t0=$(now_ms); srpm -U --nodeps "$A2"; rc=$?; t1=$(now_ms)
  local v_after; v_after=$(version_of)
  if wait_for 40 trig_done $APP; then :; else info "the trigger did not finish within 40 s (state $(prop $TRIG ActiveState))"; fi
  sleep 2
  loadgen_stop v2
  local g1 starts trig_log req okc failed
  g1=$(curgen $APP)
  starts=$(jsince "$cur" -u handoff@$APP.service | grep -c 'rollover started')
  trig_log=$(jsince "$cur" -u $TRIG)
  req=$(lg v2 'd["requests"]'); okc=$(lg v2 'd["ok"]'); failed=$(lg_failed v2)
  info "rpm -U took $((t1-t0)) ms; load: $req requests, $okc ok, $failed failed, by version $(lg v2 'd["by_version"]') in $(lg v2 'd["duration_s"]') s"
  [ $rc = 0 ] && grep -q 'generation [0-9]* serves' "$W/rpm.out" \
    && ok "rpm -U example-app 2.0.0: exit 0; %posttrans rolled over: $(cat "$W/rpm.out")" || { bad "rpm -U v2: rc $rc"; rpm_out; }
  [ "$v_after" = 2.0.0 ] && ok "right after rpm -U returns, the app answers 2.0.0" || bad "after rpm -U: version '$v_after'"
  if [ "$g1" = $((g0+1)) ] && [ "$starts" = 1 ]; then
    ok "exactly one rollover: generation $g0 -> $g1, one 'rollover started' in the journal"
  else bad "rollovers: generation $g0 -> $g1, 'rollover started' x$starts"; fi
  if grep -q 'is held: a package transaction is running' <<<"$trig_log" && grep -q 'unchanged since generation' <<<"$trig_log" \
     && [ "$(prop $TRIG Result)" = success ]; then
    ok "the .path unit fired too: the trigger waited for rpm's lock, then found the release unchanged (exit 0)"
  else bad "trigger during the upgrade: result $(prop $TRIG Result)"; sed 's/^/      /' <<<"$trig_log" | tail -8; fi
  [ "$failed" = 0 ] && [ "$okc" -gt 100 ] && [ "$(lg v2 'd["by_version"].get("2.0.0", 0)')" -gt 0 ] \
    && ok "under load during rpm -U: $okc/$req requests ok, 0 failed, answers from 1.0.0 then 2.0.0" \
    || { bad "load during rpm -U: $failed/$req failed"; info "errors: $(lg v2 'd["errors"][:5]')"; }
  local good=0
  for _ in 1 2 3 4 5 6; do [ "$(version_of)" = 2.0.0 ] && good=$((good+1)); done
  [ $good = 6 ] && ok "6 fresh requests: all answered by 2.0.0" || bad "fresh requests after the upgrade: $good/6 from 2.0.0"
}

t_upgrade_broken() {
  local g0 cur rc
  g0=$(curgen $APP); cur=$(jcursor); trig_mark $APP
  app_load_start v3 --concurrency 4 --max-seconds 180
  sleep 1
  srpm -U --nodeps "$A3"; rc=$?
  wait_for 40 trig_done $APP
  sleep 3
  loadgen_stop v3
  local g1 outcome msg starts j v
  g1=$(curgen $APP); outcome=$(hj $APP 'd["last_rollover"]["outcome"]'); msg=$(hj $APP 'd["last_rollover"]["message"]')
  starts=$(jsince "$cur" -u handoff@$APP.service | grep -c 'rollover started')
  j=$(jsince "$cur")
  v=$(version_of)
  if [ $rc = 0 ] && grep -q 'DID NOT START' "$W/rpm.out" && grep -q 'reason: .*rolled back' "$W/rpm.out"; then
    ok "rpm -U example-app 3.0.0 (broken): exit 0, the scriptlet says: $(grep -m1 'reason:' "$W/rpm.out" | cut -c1-160)"
  else bad "rpm -U v3: rc $rc, no failure message:"; rpm_out; fi
  [ "$v" = 2.0.0 ] && [ "$g1" = "$g0" ] && ok "rolled back: 2.0.0 (generation $g1) keeps serving" || bad "after v3: serving '$v', generation $g0 -> $g1"
  [ "$outcome" = RolledBack ] || [ "$outcome" = rolled-back ] || [ "$outcome" = rolled_back ] \
    && ok "handoff status: last rollover $outcome: $msg" || bad "handoff status outcome '$outcome' ($msg)"
  if grep -q 'SyntaxError' <<<"$j" && grep -q 'ERROR rolled back' <<<"$j" && grep -q 'handoff-rpm\[[0-9]*\]: example-app: .*rolled back' <<<"$(jsince "$cur" -o short)"; then
    ok "journal: the worker's SyntaxError, handoff's 'rolled back', and the scriptlet's own line (handoff-rpm)"
  else bad "journal lacks the failure:"; grep -E 'SyntaxError|rolled back|handoff-rpm' <<<"$j" | head -5 | sed 's/^/      /'; fi
  [ "$starts" = 1 ] && [ "$(prop $TRIG ActiveState)" != failed ] \
    && ok "one attempt only: the trigger run of this transaction was cancelled, not retried (trigger $(prop $TRIG ActiveState))" \
    || bad "broken release: $starts rollover attempts, trigger $(prop $TRIG ActiveState)/$(prop $TRIG Result)"
  local failed req; failed=$(lg v3 'd["refused"]+d["reset"]+d["timeout"]+d["bad"]'); req=$(lg v3 'd["requests"]')
  [ "$failed" = 0 ] && ok "under load during the failed upgrade: $req requests, 0 failed, all from $(lg v3 'list(d["by_version"])')" \
    || { bad "load during v3: $failed/$req failed"; info "errors: $(lg v3 'd["errors"][:5]')"; }
}

# issue 12: upgrading handoff itself re-execs the running app (%posttrans: handoff reexec), under
# load: same MainPID, same workers, 0 failed requests, and the process runs the new file.
t_upgrade_suite() {
  [ -f "${HRPM2:-}" ] || { info "no release-1.2 handoff RPM (REUSE_RPMS without suite2/): skipped"; return; }
  local pid0 pid1 w0 w1 g0 g1 nr0 nr1 rc exe req okc failed
  pid0=$(prop handoff@$APP.service MainPID); nr0=$(prop handoff@$APP.service NRestarts)
  w0=$(hj $APP 'sorted(w["pid"] for w in d["workers"] if w["state"] == "ready")'); g0=$(curgen $APP)
  app_load_start suite --concurrency 4 --max-seconds 120
  sleep 1
  srpm -U --nodeps "$HRPM2"; rc=$?
  sleep 1
  loadgen_stop suite
  pid1=$(prop handoff@$APP.service MainPID); nr1=$(prop handoff@$APP.service NRestarts)
  w1=$(hj $APP 'sorted(w["pid"] for w in d["workers"] if w["state"] == "ready")'); g1=$(curgen $APP)
  exe=$(sx readlink "/proc/$pid1/exe" 2>/dev/null)
  req=$(lg suite 'd["requests"]'); okc=$(lg suite 'd["ok"]'); failed=$(lg_failed suite)
  info "rpm -U handoff (release 1.2): $(tr '\n' ' ' < "$W/rpm.out"); load: $req requests, $okc ok, $failed failed"
  if [ $rc = 0 ] && grep -q "handoff@$APP.service re-exec'd onto the new handoff" "$W/rpm.out" \
     && [ -n "$pid0" ] && [ "$pid0" = "$pid1" ] && [ "$nr0" = "$nr1" ] && [ "$w0" = "$w1" ] && [ "$g0" = "$g1" ] \
     && [ "$exe" = /usr/bin/handoff ] && [ "$(hj $APP 'd.get("reexecs", 0)')" = 1 ]; then
    ok "rpm -U handoff: %posttrans re-exec'd handoff@$APP: MainPID $pid1 unchanged and running /usr/bin/handoff (not deleted), workers $w1 unchanged, generation $g1, no restart"
  else bad "rpm -U handoff: rc $rc; MainPID $pid0 -> $pid1 (exe '$exe'); NRestarts $nr0 -> $nr1; workers $w0 -> $w1; generation $g0 -> $g1"; rpm_out; fi
  [ "$failed" = 0 ] && [ "$okc" -gt 50 ] && ok "under load during rpm -U handoff: $okc/$req requests ok, 0 failed" \
    || { bad "load during rpm -U handoff: $failed/$req failed"; info "errors: $(lg suite 'd["errors"][:5]')"; }
}

t_downgrade() {
  local g0 cur rc starts
  g0=$(curgen $APP); cur=$(jcursor); trig_mark $APP
  srpm -U --nodeps --oldpackage "$A2"; rc=$?
  wait_for 40 trig_done $APP; sleep 2
  starts=$(jsince "$cur" -u handoff@$APP.service | grep -c 'rollover started')
  if [ $rc = 0 ] && [ "$starts" = 0 ] && [ "$(curgen $APP)" = "$g0" ] && [ "$(version_of)" = 2.0.0 ] && grep -q unchanged "$W/rpm.out"; then
    ok "downgrade to the running 2.0.0 (rpm -U --oldpackage): no rollover needed: $(cat "$W/rpm.out")"
  else bad "downgrade: rc $rc, $starts rollovers, generation $g0 -> $(curgen $APP)"; rpm_out; fi
}

t_erase() {
  local cgf
  cgf=$(cg_procs_file handoff@$APP.service)
  local pids_before; pids_before=$(cat "$cgf" 2>/dev/null | wc -l)
  srpm -e example-app; local rc=$?
  local u states="" enabled="" left
  for u in handoff@$APP.socket handoff@$APP.service handoff-trigger@$APP.path $TRIG; do
    states="$states $(prop "$u" ActiveState)"
  done
  enabled=$(sx systemctl is-enabled handoff@$APP.socket handoff@$APP.service handoff-trigger@$APP.path 2>&1 | tr '\n' ' ')
  left=$(sx sh -c "pgrep -a -u $APP; ps -eo pid=,args= | grep -e /opt/example-app -e 'handoff run' | grep -v grep" 2>/dev/null)
  if [ $rc = 0 ] && [ "$states" = " inactive inactive inactive inactive" ] && [ "$enabled" = "disabled disabled disabled " ] && [ -z "$left" ]; then
    ok "rpm -e example-app: units stopped and disabled, none of its $pids_before processes left: $(cat "$W/rpm.out")"
  else bad "rpm -e: rc $rc, states$states, enabled '$enabled', left: $left"; rpm_out; fi
  local c; c=$(get "http://127.0.0.1:$PORT/" 3)
  grep -qi 'refused\|connect' <<<"$c" && ok "port $PORT closed" || bad "port $PORT still answers: $c"
  local files; files=$(sx sh -c 'ls -d /opt/example-app /etc/handoff/example-app.toml /usr/lib/systemd/system/handoff@example-app.* /var/lib/rpm-state/handoff/example-app /etc/systemd/system/*.wants/*example-app* 2>/dev/null')
  [ -z "$files" ] && ok "its files, unit drop-ins, enablement symlinks and scriptlet state are gone" || bad "left after rpm -e: $files"
  local failed; failed=$(sx systemctl --failed --no-legend --plain 2>/dev/null)
  [ -z "$failed" ] && ok "no failed units in the sandbox" || bad "failed units: $failed"
  srpm -e handoff handoff-rpm-macros; rc=$?
  files=$(sx sh -c 'ls -d /usr/bin/handoff* /usr/lib/systemd/system/handoff* /usr/libexec/handoff /usr/lib/rpm/macros.d/macros.handoff 2>/dev/null')
  [ $rc = 0 ] && [ -z "$files" ] && ok "rpm -e handoff handoff-rpm-macros: all gone" || { bad "rpm -e suite: rc $rc, left $files"; rpm_out; }
}

t_host_untouched() {
  local left
  left=$(ls -d /opt/example-app /etc/handoff/example-app.toml /usr/lib/systemd/system/handoff@example-app.* /usr/libexec/handoff/rpm-helper 2>/dev/null)
  [ "$host_had_user" = no ] && getent passwd $APP >/dev/null && left="$left user:$APP"
  [ -z "$left" ] && ok "the host is untouched (no /opt/example-app, no units, no user)" || bad "the host has: $left"
}

t_build || exit 1
t_eval
t_helper
t_packages
t_image_build
if t_boot; then
  if t_install_suite && t_install_v1; then
    t_upgrade_v2
    t_upgrade_suite
    t_upgrade_broken
    t_downgrade
  fi
  t_erase
fi
sb_down >/dev/null 2>&1
t_host_untouched
