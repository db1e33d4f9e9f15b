#!/bin/bash
# walkthrough.sh: docs/operating.md followed as written, on a clean sandboxed systemd, so that the
# page cannot drift from what works.
#
# The page marks the blocks an operator runs with `<!-- walkthrough: run -->` (a shell block, run as
# root from the top of the checkout) or `<!-- walkthrough: file PATH -->` (the block's text is PATH).
# This script extracts them in order and runs them inside the sandbox, whose /usr, /etc, /opt and /var
# are overlays (writes land in the work directory; the host is untouched). Two substitutions only:
# `target/release/` becomes the binaries under test (HANDOFF_BIN_DIR), and port 8080 a free port.
# Before the first block it puts the release of the app `shop` (examples/node-worker/server.js with
# a package.json and package-lock.json) into /opt/shop, as the page's step 2 says a package would.
# Then it checks: the app serves from the workers' user, `systemctl reload` rolled it over, the
# units' Documentation= files exist, the drop-in's environment reaches the workers, the log directory
# is writable by them, and a new package.json rolls the app over once through the trigger.
#
# Run as root:  tests/systemd/walkthrough.sh    (about 20 s; needs node + npm, curl, python3)
# Environment: HANDOFF_BIN_DIR (default target/debug), KEEP_WORK=1, RUN_TIMEOUT (default 300).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
BIN=$(cd "${HANDOFF_BIN_DIR:-$top/target/debug}" 2>/dev/null && pwd || echo "${HANDOFF_BIN_DIR:-$top/target/debug}")
S=$here/sandbox.sh
PY=${PYTHON:-python3}
DOC=${WALKTHROUGH_DOC:-$top/docs/operating.md}
W=$(mktemp -d /tmp/handoff-walkthrough.XXXXXX)
chmod 755 "$W"
export SB_STATE=$W/sandbox
# shellcheck source=sandbox.sh
. "$S"
set +e

cleanup() {
  stop_background
  if sb_alive; then
    if [ "$fail" != 0 ]; then
      echo "---- last journal lines of the sandbox (for the failures above) ----"
      timeout 20 "$S" run journalctl --no-pager -n 60 -o short-monotonic 2>/dev/null | cut -c1-220 | sed 's/^/  | /'
    fi
    sb_down >/dev/null 2>&1 || sb_down
  fi
  if [ "${KEEP_WORK:-0}" = 1 ] || [ "$fail" != 0 ]; then echo "work directory kept: $W"; else rm -rf "$W"; fi
}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
# shellcheck source=../lib/suite.sh
. "$here/../lib/suite.sh"
# shellcheck source=../lib/handoff.sh
. "$here/../lib/handoff.sh"      # the default paths: /usr/bin, /etc/handoff, /opt, as on the page
APP=shop

[ "$(id -u)" = 0 ] || { bad "must run as root (the sandboxed systemd)"; exit 1; }
for b in handoff handoff-trigger; do
  [ -x "$BIN/$b" ] || { bad "missing $BIN/$b: run cargo build first (or set HANDOFF_BIN_DIR)"; exit 1; }
done
for c in node npm curl "$PY"; do command -v "$c" >/dev/null || { bad "missing $c"; exit 1; }; done
sb_check || { bad "sandbox prerequisites"; exit 1; }
PORT=$(free_port)

# ---- the page's marked blocks, in order --------------------------------------------------------
mkdir -p "$W/steps"
$PY - "$DOC" "$W/steps" "$BIN" "$PORT" <<'EOF' || { bad "cannot extract the walkthrough from $DOC"; exit 1; }
import re, sys, os
doc, out, bin_dir, port = sys.argv[1:]
lines = open(doc).read().split("\n")
n, i = 0, 0
while i < len(lines):
    m = re.match(r"\s*<!-- walkthrough: (run|file (\S+)) -->\s*$", lines[i])
    i += 1
    if not m:
        continue
    while i < len(lines) and not lines[i].strip():
        i += 1
    fence = re.match(r"(\s*)```", lines[i]) if i < len(lines) else None
    if not fence:
        sys.exit(f"{doc}:{i}: a walkthrough marker must be followed by a fenced block")
    indent = len(fence.group(1))
    body = []
    i += 1
    while i < len(lines) and not lines[i].strip().startswith("```"):
        body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
        i += 1
    i += 1
    text = "\n".join(body) + "\n"
    text = text.replace("target/release/", bin_dir + "/").replace("8080", port)
    n += 1
    kind = "run" if m.group(1) == "run" else "file"
    with open(os.path.join(out, f"{n:02d}.{kind}"), "w") as f:
        f.write(text)
    if kind == "file":
        with open(os.path.join(out, f"{n:02d}.path"), "w") as f:
            f.write(m.group(2))
if n < 5:
    sys.exit(f"{doc}: only {n} walkthrough blocks")
print(n)
EOF
nsteps=$(ls "$W/steps"/*.run "$W/steps"/*.file | wc -l)
info "$nsteps marked blocks in ${DOC#"$top"/}"

# ---- a clean machine: the sandbox, with /usr /etc /opt /var as overlays -------------------------
sb_up > "$W/boot.out" 2>&1 || { bad "sandbox boot: $(cat "$W/boot.out")"; exit 1; }
overlay_script "$W/ov" > "$W/overlays.sh"
sx sh -e "$W/overlays.sh" && [ "$(sx findmnt -n -o FSTYPE /etc)" = overlay ] || { bad "overlays in the sandbox"; exit 1; }
# npm's cache and logs go to the work directory, not the host's /root/.npm
export npm_config_cache=$W/npm-cache

# The release of shop, as a package would install it (the page's step 2): root-owned files.
rel=$W/release
mkdir -p "$rel"
cp "$top/examples/node-worker/server.js" "$rel/"
printf '%s\n' '{"name":"shop","version":"1.0.0","private":true}' > "$rel/package.json"
printf '%s\n' '{"name":"shop","version":"1.0.0","lockfileVersion":3,"requires":true,"packages":{"":{"name":"shop","version":"1.0.0"}}}' > "$rel/package-lock.json"
sx sh -c "install -d -m 0755 /opt/shop && cp '$rel'/* /opt/shop/ && chmod 0644 /opt/shop/*" \
  || { bad "put the release into /opt/shop"; exit 1; }

cd "$top" || exit 1
for f in "$W/steps"/*; do
  case "$f" in
    *.run)
      info "step $(basename "$f" .run): $(grep -v '^\s*$' "$f" | head -1 | cut -c1-90)$([ "$(grep -c . "$f")" -gt 1 ] && echo ' ...')"
      if SX_TIMEOUT=120 sx bash -euo pipefail "$f" > "$f.out" 2>&1; then :; else
        bad "docs/operating.md step $(basename "$f" .run) failed (exit $?):"; sed 's/^/      | /' "$f" | head -8; sed 's/^/      > /' "$f.out" | tail -12
        exit 1
      fi ;;
    *.file)
      p=$(cat "${f%.file}.path")
      info "step $(basename "$f" .file): write $p"
      sx sh -c 'mkdir -p "$(dirname "$1")" && cat > "$1"' _ "$p" < "$f" || { bad "cannot write $p"; exit 1; } ;;
  esac
done
ok "followed docs/operating.md: $nsteps blocks ran as written"

# ---- what the page promises ------------------------------------------------------------------------
check_out=$(cat "$(ls "$W/steps"/*.run | tail -1).out")
if grep -q 'gen=1 ' <<<"$check_out" && grep -qiE 'gen(eration)? 2\b|current.*2' <<<"$check_out"; then
  ok "the page's check: the first request was answered by generation 1, and after systemctl reload handoff status shows generation 2"
else bad "the page's check printed:"; sed 's/^/      > /' <<<"$check_out"; fi
a=$(get "http://127.0.0.1:$PORT/"); b=$(get "http://[::1]:$PORT/")
grep -q 'gen=2 ' <<<"$a" && grep -q 'gen=2 ' <<<"$b" \
  && ok "after systemctl reload, 127.0.0.1:$PORT and [::1]:$PORT are served by generation 2: $a" \
  || bad "after the reload: '$a' / '$b'"
[ "$(curgen $APP)" = 2 ] && ok "handoff status --app shop: current generation 2" || bad "current generation '$(curgen $APP)'"

uid=$(sx id -u $APP 2>/dev/null)
users=$(sx ps -o user= -C node 2>/dev/null | sort | uniq -c | tr -s ' ' | tr '\n' ';')
hu=$(sx ps -o user= -p "$(prop "$(svc $APP)" MainPID)" 2>/dev/null | tr -d ' ')
[ -n "$uid" ] && [ "$users" = " 2 $APP;" ] && [ "$hu" = root ] \
  && ok "2 workers run as $APP (uid $uid), handoff as root" || bad "worker users '$users', handoff runs as '$hu'"

wpid=$(sx pgrep -u $APP -f /opt/shop/server.js 2>/dev/null | head -1)
env_ok=$(sx cat "/proc/$wpid/environ" 2>/dev/null | tr '\0' '\n' | grep -x 'EGG_LOG_DIR=/var/log/shop')
if [ -n "$env_ok" ] && sx setpriv --reuid $APP --regid $APP --init-groups touch /var/log/shop/probe 2>/dev/null \
   && ! sx setpriv --reuid $APP --regid $APP --init-groups touch /opt/shop/probe 2>/dev/null; then
  ok "the drop-in's EGG_LOG_DIR=/var/log/shop reaches the workers; $APP can write there, not into /opt/shop"
else bad "environment/log dir: worker $wpid env '$env_ok'"; fi

docs_missing=""
for u in handoff@$APP.socket handoff@$APP.service handoff-trigger@$APP.path handoff-trigger@$APP.service; do
  for d in $(prop "$u" Documentation); do
    case "$d" in file://*) sx test -f "${d#file://}" || docs_missing="$docs_missing $u:$d" ;; esac
  done
done
[ -z "$docs_missing" ] && ok "every file:// in the units' Documentation= exists" || bad "Documentation= points at missing files:$docs_missing"
en=$(sx systemctl is-enabled handoff@$APP.socket handoff-trigger@$APP.path handoff@$APP.service 2>&1 | tr '\n' ' ')
[ "$en" = "enabled enabled enabled " ] && ok "socket, path and service units enabled" || bad "is-enabled: $en"

# A new release by rename, as a package manager writes it: the trigger rolls over once.
trig_mark $APP
sx sh -c "printf '%s\n' '{\"name\":\"shop\",\"version\":\"1.1.0\",\"private\":true}' > /opt/shop/.pj.tmp && mv /opt/shop/.pj.tmp /opt/shop/package.json"
if wait_for 30 trig_done $APP; then
  wait_for 10 eval '[ "$(maxgen $APP)" = 3 ]'
  v=$(hj $APP 'd["generations"][0]["version"]["version"]')
  [ "$(maxgen $APP)" = 3 ] && [ "$v" = 1.1.0 ] && [ "$(prop "$(trig_unit $APP)" Result)" = success ] \
    && ok "a new package.json: the trigger rolled over once (generation 3, version $v)" \
    || bad "new release: generation $(maxgen $APP), version $v, trigger $(prop "$(trig_unit $APP)" Result)"
else bad "new release: the trigger did not run to its end within 30 s"; fi

failed=$(sx systemctl --failed --no-legend --plain 2>/dev/null)
[ -z "$failed" ] && ok "no failed units" || bad "failed units: $failed"
