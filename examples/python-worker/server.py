#!/usr/bin/env python3
"""Example handoff worker in Python (standard library only).

The worker contract: serve on the inherited socket at fd 3, say READY=1 on NOTIFY_SOCKET,
and on SIGTERM stop accepting, finish in-flight requests and exit.
"""
import http.server
import os
import signal
import socket
import threading
import time


def notify(message: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):  # abstract socket
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(message.encode(), addr)


assert os.environ.get("LISTEN_PID") == str(os.getpid()), "run me under handoff"
identity = f"pid={os.getpid()} gen={os.environ.get('HANDOFF_GENERATION')} python"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = (identity + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)  # the listening socket handoff passed
server.daemon_threads = False  # server_close() waits for in-flight requests
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
notify("READY=1\nSTATUS=serving " + identity)


def watchdog_pings() -> None:
    """WATCHDOG=1 every half interval when handoff asks for it (watchdog = "10s")."""
    usec = int(os.environ.get("WATCHDOG_USEC") or 0)
    if usec <= 0 or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return
    while True:
        time.sleep(usec / 2e6)
        notify("WATCHDOG=1")


threading.Thread(target=watchdog_pings, daemon=True).start()
server.serve_forever()  # returns once shutdown() stops the accept loop
server.server_close()  # closes our copy of the listener, joins request threads
