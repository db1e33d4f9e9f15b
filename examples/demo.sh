#!/usr/bin/env bash
# The demo: handoff serves the example worker on 127.0.0.1:8080 (PORT=... to change), a client
# hammers it, and three live rollovers happen under its feet. Ends by itself (about 10 s) and
# prints how many requests failed (the point: zero). It removes everything it started and wrote
# (/tmp/handoff-demo.*) when it ends.
#
#   examples/demo.sh            build (release, with cargo's progress), run, clean up
#   examples/demo.sh --keep     then leave handoff running until you press Ctrl-C (or the shell
#                               that started it sends SIGTERM/SIGHUP); cleans up then
# Environment: PORT (default 8080); HANDOFF_BIN_DIR=DIR uses the binaries in DIR and skips the
# build; DEMO_ROLLOVERS (default 3); DEMO_PAUSE seconds between rollovers (default 1.5).
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-8080}
keep=${1:-}
rollovers=${DEMO_ROLLOVERS:-3}
pause=${DEMO_PAUSE:-1.5}
if [ -n "${HANDOFF_BIN_DIR:-}" ]; then
  bin=$HANDOFF_BIN_DIR
  echo "== using the binaries in $bin"
else
  # The first build takes minutes: show cargo's progress rather than minutes of silence.
  echo "== building handoff and the example worker (release; the first build takes a few minutes)"
  cargo build --release -p handoff -p handoff-example-worker
  bin=target/release
fi
rt=$(mktemp -d /tmp/handoff-demo.XXXXXX)
ctl=$rt/control.sock
client='' tailer='' hpid=''
cleanup() {
  local p
  for p in $tailer $client; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -n "$hpid" ] && kill -0 "$hpid" 2>/dev/null; then
    echo "== stopping handoff (pid $hpid): its workers drain, then it exits"
    kill -TERM "$hpid" 2>/dev/null || true
    wait "$hpid" 2>/dev/null || true
  fi
  rm -rf "$rt"
  echo "== cleaned up (removed $rt)"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

echo "== starting handoff on 127.0.0.1:$port with 2 workers (log: $rt/handoff.log)"
"$bin/handoff" run --listen "127.0.0.1:$port" --workers 2 --runtime-dir "$rt" --drain-timeout 5s \
  -- "$bin/handoff-example-worker" 2>"$rt/handoff.log" &
hpid=$!
for _ in $(seq 100); do
  "$bin/handoff" status --control "$ctl" >/dev/null 2>&1 && break
  kill -0 "$hpid" 2>/dev/null || { echo "== handoff exited:"; cat "$rt/handoff.log"; exit 1; }
  sleep 0.1
done
"$bin/handoff" status --control "$ctl"

echo "== a client sends requests back to back (a new connection each); it prints each new generation it meets"
count=$rt/client.count
: > "$rt/client.log"   # exists before the tail starts
python3 - "$port" "$count" >"$rt/client.log" <<'PY' &
import socket, sys, time
port, count = int(sys.argv[1]), sys.argv[2]
ok = fail = 0; last_gen = None; t0 = time.time()
def save():
    with open(count + ".tmp", "w") as f:
        f.write("%d %d" % (ok, fail))
    import os; os.replace(count + ".tmp", count)
import signal
signal.signal(signal.SIGTERM, lambda *_: (save(), sys.exit(0)))   # the last count, not the last 50th
while time.time() - t0 < 600:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        if not data.startswith(b"HTTP/1.1 200"):
            raise OSError("bad answer %r" % data[:40])
        ok += 1
        body = data.split(b"\r\n\r\n", 1)[1].decode().strip()
        gen = body.split()[1]
        if gen != last_gen:
            print("   client: request %6d answered by %s" % (ok + fail, body), flush=True)
            last_gen = gen
    except OSError as e:
        fail += 1
        print("   client: FAILED:", e, flush=True)
    if (ok + fail) % 50 == 0:
        save()
PY
client=$!
tail -n +1 -f "$rt/client.log" &
tailer=$!
sleep "$pause"
for i in $(seq 1 "$rollovers"); do
  echo "== rollover $i: handoff reload"
  "$bin/handoff" reload --control "$ctl"
  sleep "$pause"
done
echo "== status after $rollovers rollovers"
"$bin/handoff" status --control "$ctl"
kill "$client" 2>/dev/null || true; wait "$client" 2>/dev/null || true; client=''
kill "$tailer" 2>/dev/null || true; wait "$tailer" 2>/dev/null || true; tailer=''
read -r ok fail < "$count" || true
echo "== client: ${ok:-?} requests answered, ${fail:-?} failed, across $rollovers rollovers"
if [ "$keep" = --keep ]; then
  echo "== still running (pid $hpid). Try: curl 127.0.0.1:$port/ ; $bin/handoff reload --control $ctl"
  echo "== press Ctrl-C to stop it and remove $rt (by hand: kill $hpid; rm -rf $rt)"
  wait "$hpid" || true
  hpid=''
fi
