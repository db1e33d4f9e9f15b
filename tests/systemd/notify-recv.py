#!/usr/bin/env python3
"""A fake service manager's notify socket: records every sd_notify datagram.

Binds an AF_UNIX datagram socket at SOCKET and appends one JSON line per datagram to OUT:
{"t": CLOCK_MONOTONIC in microseconds at receipt, "fields": {"READY": "1", ...}}.
Exits when STOP_FILE exists or after MAX_SECONDS.
Usage: notify-recv.py SOCKET OUT STOP_FILE MAX_SECONDS
"""
import json
import os
import socket
import sys
import time

path, out, stop, max_s = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
s.settimeout(0.1)
deadline = time.monotonic() + max_s
with open(out, "a", buffering=1) as f:
    while time.monotonic() < deadline and not os.path.exists(stop):
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        fields = {}
        for line in data.decode(errors="replace").split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                fields[k] = v
        f.write(json.dumps({"t": now_us, "fields": fields}) + "\n")
