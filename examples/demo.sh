#!/usr/bin/env bash
# The demo: handoff serves the example worker on 127.0.0.1:8080 (PORT=... to change), a client
# hammers it, and three live rollovers happen under its feet. Ends by itself (about 10 s) and
# prints how many requests failed (the point: zero). `examples/demo.sh --keep` leaves it running.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-8080}
keep=${1:-}
echo "== building (release)"
cargo build --release -q -p handoff -p handoff-example-worker
bin=target/release
rt=$(mktemp -d /tmp/handoff-demo.XXXXXX)
ctl=$rt/control.sock
cleanup() {
  [ -n "${client:-}" ] && kill "$client" 2>/dev/null || true
  if [ "$keep" != --keep ] && [ -n "${hpid:-}" ]; then kill -TERM "$hpid" 2>/dev/null && wait "$hpid" 2>/dev/null || true; rm -rf "$rt"; fi
}
trap cleanup EXIT

echo "== starting handoff on 127.0.0.1:$port with 2 workers (log: $rt/handoff.log)"
$bin/handoff run --listen "127.0.0.1:$port" --workers 2 --runtime-dir "$rt" --drain-timeout 5s \
  -- "$bin/handoff-example-worker" 2>"$rt/handoff.log" &
hpid=$!
for _ in $(seq 50); do $bin/handoff status --control "$ctl" >/dev/null 2>&1 && break; sleep 0.1; done
$bin/handoff status --control "$ctl"

echo "== a client sends requests back to back (a new connection each); it prints each new generation it meets"
count=$rt/client.count
python3 - "$port" "$count" >"$rt/client.log" <<'PY' &
import socket, sys, time
port, count = int(sys.argv[1]), sys.argv[2]
ok = fail = 0; last_gen = None; t0 = time.time()
while time.time() - t0 < 60:
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
    if (ok + fail) % 100 == 0:
        open(count, "w").write("%d %d" % (ok, fail))
PY
client=$!
tail -f "$rt/client.log" &
tailer=$!
sleep 1.5
for i in 1 2 3; do
  echo "== rollover $i: handoff reload"
  $bin/handoff reload --control "$ctl"
  sleep 1.5
done
kill "$tailer" 2>/dev/null || true
echo "== status after three rollovers"
$bin/handoff status --control "$ctl"
kill "$client" 2>/dev/null || true; wait "$client" 2>/dev/null || true; client=
read -r ok fail < "$count" || true
echo "== client: ${ok:-?} requests answered, ${fail:-?} failed, across 3 rollovers"
if [ "$keep" = --keep ]; then
  echo "== still running (pid $hpid). Try: curl 127.0.0.1:$port/ ; $bin/handoff reload --control $ctl ; kill $hpid"
fi
