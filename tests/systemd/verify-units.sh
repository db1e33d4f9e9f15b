#!/bin/bash
# verify-units.sh: check the unit files in units/ with `systemd-analyze verify`, strictly.
#
# systemd-analyze verify exits 0 on warnings such as "Unknown key" (a typo silently ignored by
# systemd), so any line it prints counts as a failure here. The units are instantiated as
# handoff@verify.* inside a throw-away root (--root) that has the host's system units and stub
# /usr/bin/handoff{,-trigger}, so the check needs neither installed binaries nor a running systemd.
#
# The notify-reload drop-in needs systemd >= 253. On older systemd the two complaints it must cause
# (unknown Type=notify-reload, unknown ReloadSignal=) are expected and anything else fails.
# Also checked: every non-obvious setting has a comment above it (units/ conventions).
#
# Usage: tests/systemd/verify-units.sh [UNITS_DIR]      exit 0 when all checks pass
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
units=${1:-$here/../../units}
units=$(cd "$units" && pwd)
command -v systemd-analyze >/dev/null || { echo "FAIL: systemd-analyze not found (apt-get install systemd)"; exit 1; }
sysunits=$(pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || true)
for d in "$sysunits" /usr/lib/systemd/system /lib/systemd/system; do [ -n "$d" ] && [ -e "$d/sysinit.target" ] && { sysunits=$d; break; }; done
[ -e "$sysunits/sysinit.target" ] || { echo "FAIL: no system unit directory with sysinit.target"; exit 1; }
ver=$(systemd-analyze --version | awk 'NR==1{print $2}')

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/usr/lib/systemd" "$root/etc/systemd/system" "$root/etc/handoff"
cp -a "$sysunits" "$root/usr/lib/systemd/system"
for b in handoff handoff-trigger; do printf '#!/bin/sh\nexit 0\n' > "$root/usr/bin/$b"; chmod 755 "$root/usr/bin/$b"; done
cp "$units"/handoff@.socket "$units"/handoff@.service "$units"/handoff-trigger@.path \
   "$units"/handoff-trigger@.service "$units"/handoff-trigger-current@.path \
   "$units"/handoff-trigger-current@.service "$root/etc/systemd/system/"

pass=0; fail=0
ok() { echo "PASS: $*"; pass=$((pass+1)); }
bad() { echo "FAIL: $*"; fail=$((fail+1)); }

# verify UNIT...: prints what systemd-analyze said; 0 only when it exited 0 and said nothing
verify() {
  local out rc
  out=$(systemd-analyze verify --root="$root" --man=no --generators=no "$@" 2>&1); rc=$?
  printf '%s' "$out"
  [ $rc = 0 ] && [ -z "$out" ]
}

for u in handoff@verify.socket handoff@verify.service handoff-trigger@verify.path handoff-trigger@verify.service \
         handoff-trigger-current@verify.path handoff-trigger-current@verify.service; do
  if out=$(verify "$u"); then ok "systemd-analyze verify $u"; else bad "systemd-analyze verify $u:"; echo "$out" | sed 's/^/    /'; fi
done

# The notify-reload variant, as an instance drop-in.
mkdir -p "$root/etc/systemd/system/handoff@verify.service.d"
cp "$units/handoff-notify-reload.conf" "$root/etc/systemd/system/handoff@verify.service.d/notify-reload.conf"
out=$(verify handoff@verify.service); rc=$?
if [ "$ver" -ge 253 ]; then
  if [ $rc = 0 ]; then ok "notify-reload drop-in verifies (systemd $ver)"; else bad "notify-reload drop-in:"; echo "$out" | sed 's/^/    /'; fi
else
  rest=$(printf '%s\n' "$out" | grep -v -e 'Failed to parse service type, ignoring: notify-reload' \
                                       -e "Unknown key 'ReloadSignal'" | grep . || true)
  if [ -z "$rest" ] && printf '%s' "$out" | grep -q 'notify-reload'; then
    ok "notify-reload drop-in parses; systemd $ver < 253 rejects only Type=notify-reload and ReloadSignal= (as documented)"
  else
    bad "notify-reload drop-in, unexpected output on systemd $ver:"; echo "$out" | sed 's/^/    /'
  fi
fi
rm -rf "$root/etc/systemd/system/handoff@verify.service.d"

# The binaries the units run are the installed ones, not a build tree's.
if grep -h '^Exec' "$units"/*.service | grep -v -e '^Exec[A-Za-z]*=/usr/bin/handoff' -e '^ExecReload=$' | grep .; then
  bad "an Exec line runs something else than /usr/bin/handoff*"
else ok "Exec lines run /usr/bin/handoff and /usr/bin/handoff-trigger"; fi

# Every setting that is not self-explanatory sits in a block of settings right below a comment.
obvious='^(Description|Documentation|ExecStart|WantedBy|Unit|Type)$'
uncommented=$(for f in "$units"/*.socket "$units"/*.service "$units"/*.path "$units"/*.conf; do
  awk -v f="$(basename "$f")" -v obvious="$obvious" '
    /^[[:space:]]*#/ { covered=1; next }
    /^[[:space:]]*$/ { covered=0; next }
    /^\[/ { covered=0; next }
    { key=$0; sub(/=.*/, "", key); if (!covered && key !~ obvious) print f ":" NR ": " $0 }' "$f"
done)
if [ -z "$uncommented" ]; then ok "every non-obvious setting is commented"
else bad "settings without a comment above them:"; echo "$uncommented" | sed 's/^/    /'; fi

echo "$pass passed, $fail failed"
[ $fail = 0 ]
