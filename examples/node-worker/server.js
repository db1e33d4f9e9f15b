#!/usr/bin/env node
// Example handoff worker in Node.js: no dependencies, no native add-ons.
//
// The worker contract, as Node does it:
//  1. Listen on the inherited sockets: fd 3 (and 4, 5... if LISTEN_FDS > 1), not on a port.
//  2. Report readiness once listening. Node cannot send unix datagrams, so this runs
//     `systemd-notify --ready` (present wherever systemd is); handoff accepts datagrams from
//     any descendant of the worker on the worker's own NOTIFY_SOCKET.
//  3. On SIGTERM: stop accepting (close our listening handle; the socket itself stays open in
//     handoff and the new workers), answer requests still arriving on open keep-alive
//     connections with `Connection: close`, close connections idle for a second, exit.
//     Not plain server.close(): since Node 19 it also drops idle keep-alive connections at
//     once, and a client sending its next request on one at that moment gets ECONNRESET.
'use strict';
const http = require('http');
const net = require('net');
const { execFile } = require('child_process');

const count = Number(process.env.LISTEN_FDS || 0);
if (process.env.LISTEN_PID !== String(process.pid) || count < 1) {
  console.error('node-worker: no listening sockets for this pid (run me under handoff)');
  process.exit(1);
}
const identity = `pid=${process.pid} gen=${process.env.HANDOFF_GENERATION || '-'} worker=${process.env.HANDOFF_WORKER || '-'} node=${process.version}`;

let draining = false;
const idleSince = new Map(); // open connection -> when it last finished a response (0: busy)

function handler(req, res) {
  idleSince.set(req.socket, 0);
  if (draining) res.setHeader('Connection', 'close');
  res.once('finish', () => idleSince.has(req.socket) && idleSince.set(req.socket, Date.now()));
  const slow = /^\/slow(?:\?ms=(\d+))?/.exec(req.url);
  const reply = () => {
    res.setHeader('Content-Type', 'text/plain');
    res.end(`${identity}\n`);
  };
  if (slow) setTimeout(reply, Number(slow[1] || 2000)); else reply();
}

// One http.Server per inherited socket (a server listens on one handle).
let listening = 0;
const servers = [];
for (let i = 0; i < count; i++) {
  const server = http.createServer(handler);
  server.on('connection', (socket) => {
    idleSince.set(socket, Date.now());
    socket.once('close', () => idleSince.delete(socket));
  });
  servers.push(server);
  server.listen({ fd: 3 + i }, () => {
    if (++listening === count) notifyReady();
  });
}

function notifyReady() {
  if (!process.env.NOTIFY_SOCKET) return;
  execFile('systemd-notify', ['--ready', `--status=serving: ${identity}`], (err) => {
    if (err) console.error(`node-worker: systemd-notify failed: ${err.message}`);
  });
  // handoff's `watchdog`: WATCHDOG=1 every half interval, from a timer on the event loop, so a
  // blocked loop stops the pings and handoff replaces this worker.
  const usec = Number(process.env.WATCHDOG_USEC || 0);
  if (usec > 0 && (process.env.WATCHDOG_PID || String(process.pid)) === String(process.pid)) {
    setInterval(() => execFile('systemd-notify', ['WATCHDOG=1'], () => {}), usec / 2000).unref();
  }
}

process.on('SIGTERM', () => {
  console.error(`node-worker ${identity}: SIGTERM: draining`);
  draining = true;
  const since = Date.now();
  for (const server of servers) net.Server.prototype.close.call(server); // stop accepting only
  setInterval(() => {
    const now = Date.now();
    for (const [socket, idle] of idleSince) {
      if (idle !== 0 && now - Math.max(idle, since) >= 1000) socket.destroy();
    }
    if (idleSince.size === 0) process.exit(0);
  }, 50);
});
