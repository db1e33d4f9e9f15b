#!/usr/bin/env node
// Example handoff worker in Node.js: no dependencies, no native add-ons.
//
// The worker contract, as Node does it:
//  1. Listen on the inherited sockets: fd 3 (and 4, 5... if LISTEN_FDS > 1), not on a port.
//  2. Report readiness once listening. Node cannot send unix datagrams, so this runs
//     `systemd-notify --ready` (present wherever systemd is); handoff accepts datagrams from
//     any descendant of the worker on the worker's own NOTIFY_SOCKET.
//  3. On SIGTERM: server.close() (stop accepting; the socket itself stays open in handoff),
//     finish in-flight requests, close idle keep-alive connections, exit.
'use strict';
const http = require('http');
const { execFile } = require('child_process');

const count = Number(process.env.LISTEN_FDS || 0);
if (process.env.LISTEN_PID !== String(process.pid) || count < 1) {
  console.error('node-worker: no listening sockets for this pid (run me under handoff)');
  process.exit(1);
}
const identity = `pid=${process.pid} gen=${process.env.HANDOFF_GENERATION || '-'} worker=${process.env.HANDOFF_WORKER || '-'} node=${process.version}`;

function handler(req, res) {
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
}

process.on('SIGTERM', () => {
  console.error(`node-worker ${identity}: SIGTERM: draining`);
  let open = servers.length;
  for (const server of servers) {
    // close() stops accepting and waits for in-flight requests; idle keep-alive
    // connections are closed now so they don't hold the drain open.
    server.close(() => { if (--open === 0) process.exit(0); });
    server.closeIdleConnections();
  }
});
