#!/usr/bin/env node
// The Egg example app (examples/egg-app), written the PM2 way: PM2's cluster mode owns the port
// (Node's cluster module: the master listens and hands connections to the instances), so each
// instance boots a single-process Egg (`require('egg').start`, the same boot as egg-handoff-start)
// and listens on PORT, tells PM2 it is ready with process.send('ready') (wait_ready), and drains
// on SIGINT (PM2's kill signal): stop accepting, let in-flight requests finish (answering with
// `Connection: close`), close idle keep-alive connections, close the app, exit.
// (egg-scripts / egg-cluster, Egg's own way, runs its own master and is not a PM2 app; this is
// how an Egg app is usually put under PM2's cluster mode.)
// Environment: EGG_BASE_DIR (the app), PORT, HOST, and the app's own (EGG_RUN_DIR, ...).
'use strict';
const http = require('http');
const path = require('path');

const baseDir = path.resolve(process.env.EGG_BASE_DIR);
const egg = require(require.resolve('egg', { paths: [ baseDir ] }));
const log = (m) => process.stderr.write(`pm2-egg-worker pid=${process.pid}: ${m}\n`);

let app = null;
let server = null;
let draining = false;

async function main() {
  app = await egg.start({ baseDir });
  const handler = app.callback();
  server = http.createServer((req, res) => {
    if (draining) res.setHeader('Connection', 'close');
    handler(req, res);
  });
  app.emit('server', server);
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(process.env.PORT), process.env.HOST || '127.0.0.1', resolve);
  });
  if (process.send) process.send('ready');
}

function drain(sig) {
  if (draining) return;
  draining = true;
  log(`${sig}: draining`);
  if (!server) process.exit(0);
  server.close(async () => {
    try { await app.close(); } catch (e) { log(`close: ${e}`); }
    process.exit(0);
  });
  server.closeIdleConnections();
}
process.on('SIGINT', () => drain('SIGINT'));
process.on('SIGTERM', () => drain('SIGTERM'));
main().catch((e) => { log(`fatal: ${e && e.stack || e}`); process.exit(1); });
