#!/usr/bin/env node
// The Node.js example worker (examples/node-worker/server.js), written the PM2 way: PM2's
// cluster mode owns the port (Node's cluster module: the master listens and hands connections
// to the workers), so the worker listens on PORT like any Node server would, tells PM2 it is
// ready with process.send('ready') (wait_ready), and drains on SIGINT (PM2's kill signal):
// stop accepting, finish in-flight requests, close idle keep-alive connections, exit.
'use strict';
const http = require('http');

const identity = `pid=${process.pid} instance=${process.env.NODE_APP_INSTANCE || '-'} node=${process.version}`;

function handler(req, res) {
  const slow = /^\/slow(?:\?ms=(\d+))?/.exec(req.url);
  const reply = () => {
    res.setHeader('Content-Type', 'text/plain');
    res.end(`${identity}\n`);
  };
  if (slow) setTimeout(reply, Number(slow[1] || 2000)); else reply();
}

const server = http.createServer(handler);
server.listen(Number(process.env.PORT), process.env.HOST || '127.0.0.1', () => {
  if (process.send) process.send('ready');
});

function drain(sig) {
  console.error(`pm2-worker ${identity}: ${sig}: draining`);
  server.close(() => process.exit(0));
  server.closeIdleConnections();
}
process.on('SIGINT', () => drain('SIGINT'));
process.on('SIGTERM', () => drain('SIGTERM'));
