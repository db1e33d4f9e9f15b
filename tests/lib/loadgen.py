#!/usr/bin/env python3
"""Bounded HTTP load on a loopback address, counting every failure by kind (shared by the
systemd and rpm suites).

Each of --concurrency threads opens a new TCP connection per request (so every request goes through
accept(), where a rollover or a restart would show), sends `GET PATH`, reads the whole answer and
records the status and the generation and version the body names. It stops when --stop-file exists or after
--max-seconds, whichever comes first, and writes a JSON summary to --out:
  requests, ok, refused (ECONNREFUSED: nobody held the socket), reset (connection dropped),
  timeout, bad (non-200 or unparsable), by_gen {gen: count}, by_version {version: count},
  max_latency_ms, first errors, duration.
Only loopback targets are accepted.
"""
import argparse
import json
import os
import socket
import threading
import time


def one_request(host, port, path, timeout):
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    data = b"".join(chunks)
    if not data:
        raise ConnectionResetError("connection closed without an answer")
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    return status, body.decode(errors="replace")


def identity(body):
    """(generation, version) of an answer: the Egg example's JSON ({"generation", "version"})
    or the example workers' text (`pid=1 gen=2 worker=0 version=1.0.0`)."""
    try:
        d = json.loads(body)
        return str(d["generation"]), str(d["version"])
    except (ValueError, KeyError, TypeError):
        pass
    gen = version = None
    for tok in body.split():
        if tok.startswith("gen="):
            gen = tok[4:]
        elif tok.startswith("version="):
            version = tok[8:]
    return gen, version


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--path", default="/")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--timeout", type=float, default=10)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pause-ms", type=float, default=1)
    a = ap.parse_args()
    if not (a.host.startswith("127.") or a.host in ("::1", "localhost")):
        raise SystemExit("loadgen: loopback targets only")

    lock = threading.Lock()
    st = {"requests": 0, "ok": 0, "refused": 0, "reset": 0, "timeout": 0, "bad": 0, "by_gen": {}, "by_version": {}, "errors": [], "max_latency_ms": 0.0}
    t0 = time.monotonic()
    deadline = t0 + a.max_seconds

    def note_error(kind, msg):
        with lock:
            st[kind] += 1
            if len(st["errors"]) < 20:
                st["errors"].append(f"{time.monotonic() - t0:.3f}s {kind}: {msg}")

    def worker():
        while time.monotonic() < deadline and not os.path.exists(a.stop_file):
            with lock:
                st["requests"] += 1
            t_req = time.monotonic()
            try:
                status, body = one_request(a.host, a.port, a.path, a.timeout)
                ms = (time.monotonic() - t_req) * 1000
                with lock:
                    st["max_latency_ms"] = max(st["max_latency_ms"], round(ms, 1))
                gen, version = identity(body)
                if " 200 " not in status + " " or gen is None:
                    note_error("bad", f"{status!r} {body[:80]!r}")
                else:
                    with lock:
                        st["ok"] += 1
                        st["by_gen"][gen] = st["by_gen"].get(gen, 0) + 1
                        if version is not None:
                            st["by_version"][version] = st["by_version"].get(version, 0) + 1
            except ConnectionRefusedError as e:
                note_error("refused", e)
            except (socket.timeout, TimeoutError) as e:
                note_error("timeout", e)
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
                note_error("reset", e)
            except OSError as e:
                note_error("reset", f"{type(e).__name__}: {e}")
            if a.pause_ms:
                time.sleep(a.pause_ms / 1000)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(a.max_seconds + a.timeout + 5)
    st["duration_s"] = round(time.monotonic() - t0, 3)
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(st, f)
    os.rename(tmp, a.out)


if __name__ == "__main__":
    main()
