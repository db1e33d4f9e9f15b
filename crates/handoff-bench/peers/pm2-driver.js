#!/usr/bin/env node
// Drives PM2 for handoff-bench through PM2's programmatic API (what `pm2 reload` calls), so a
// rollover's time is PM2's, not the start-up of a `pm2` CLI process per reload.
//
// Environment: PM2_HOME (a private daemon), BENCH_PM2_MODULE (path of the pm2 package),
// BENCH_SCRIPT (the worker), BENCH_HOST, BENCH_PORT, BENCH_INSTANCES, BENCH_APP_ENV (a JSON
// object of extra environment for the app).
// Protocol: one JSON line once started ({"started":true,"pids":[..],"daemon":PID}); then, per
// line on stdin: `pids` -> {"pids":[..]}, `reload` -> {"reloaded":true} when pm2.reload calls
// back, `stop` -> deletes the app, kills the daemon, {"stopped":true} and exits. Errors:
// {"error":"..."}.
'use strict';
const fs = require('fs');
const path = require('path');
const readline = require('readline');
const pm2 = require(process.env.BENCH_PM2_MODULE);

const name = 'bench';
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const fail = (err) => out({ error: String(err && err.message ? err.message : err) });

function pids(cb) {
  pm2.list((err, list) => {
    if (err) return cb(err);
    cb(null, list.filter((p) => p.name === name && p.pm2_env.status === 'online').map((p) => p.pid));
  });
}

function daemonPid() {
  try {
    return Number(fs.readFileSync(path.join(process.env.PM2_HOME, 'pm2.pid'), 'utf8'));
  } catch (e) {
    return null;
  }
}

pm2.connect((err) => {
  if (err) { fail(err); process.exit(1); }
  pm2.start({
    name,
    script: process.env.BENCH_SCRIPT,
    exec_mode: 'cluster',
    instances: Number(process.env.BENCH_INSTANCES || 2),
    wait_ready: true,
    listen_timeout: 30000,
    kill_timeout: 10000,
    env: {
      ...JSON.parse(process.env.BENCH_APP_ENV || '{}'),
      PORT: process.env.BENCH_PORT,
      HOST: process.env.BENCH_HOST || '127.0.0.1',
    },
  }, (err) => {
    if (err) { fail(err); return; }
    pids((err, p) => (err ? fail(err) : out({ started: true, pids: p, daemon: daemonPid() })));
  });
});

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  switch (line.trim()) {
    case 'pids':
      pids((err, p) => (err ? fail(err) : out({ pids: p })));
      break;
    case 'reload':
      pm2.reload(name, (err) => (err ? fail(err) : out({ reloaded: true })));
      break;
    case 'stop':
      pm2.delete(name, () => pm2.killDaemon(() => {
        pm2.disconnect();
        out({ stopped: true });
        process.exit(0);
      }));
      break;
    default:
      fail(`unknown command ${line}`);
  }
});
// The bench went away (or is done): leave too, the daemon is the bench's to stop.
rl.on('close', () => { pm2.disconnect(); process.exit(0); });
