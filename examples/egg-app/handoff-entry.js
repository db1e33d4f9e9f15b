#!/usr/bin/env node
'use strict';

/**
 * handoff-entry.js: run an Egg app as a handoff worker. THE recipe (docs/egg.md).
 *
 *   handoff run --listen 127.0.0.1:7001 --workers 2 --ready notify --drain-timeout 30s \
 *     -- node /opt/app/handoff-entry.js
 *
 * One worker = one single-process Egg (app and agent in this process); handoff replaces
 * egg-cluster's master and keeps N of them running. This script:
 *   1. takes the listening sockets handoff passed (fd 3, and 4.. with LISTEN_FDS > 1), checking
 *      LISTEN_PID; without them (run by hand) it listens on $HOST:$PORT (127.0.0.1:7001);
 *   2. boots Egg with require('egg').start({ baseDir }); a boot error exits 1, so handoff
 *      rolls the release back;
 *   3. serves app.callback() on every socket, emits app's 'server' event like egg-cluster does;
 *   4. reports READY=1 over sd_notify (via systemd-notify) once app, agent and sockets are up;
 *   5. on SIGTERM (handoff's drain signal) stops accepting, lets in-flight requests and running
 *      scheduled tasks finish, closes the app, and exits 0.
 *
 * Copy it with lib/ (listen-fds.js, sd-notify.js, graceful-http.js and plugin/egg-handoff) into
 * an Egg app; nothing in it is specific to this example.
 *
 * Environment:
 *   EGG_BASE_DIR       app directory (default: this file's directory)
 *   EGG_DRAIN_IDLE_MS  while draining, close keep-alive connections idle this long (default 1000)
 *   HOST, PORT         where to listen when not given sockets (default 127.0.0.1, 7001)
 *   NODE_ENV           set to "production" when neither it nor EGG_SERVER_ENV is set, as egg-scripts does
 */

const path = require('path');
const fs = require('fs');
const { listenFds } = require('./lib/listen-fds');
const { SdNotify } = require('./lib/sd-notify');
const { GracefulServer } = require('./lib/graceful-http');

// Read (and remove from the environment) what the supervisor handed over, before anything else
// runs or is spawned.
const baseDir = path.resolve(process.env.EGG_BASE_DIR || __dirname);
const notifier = SdNotify.fromEnv();
const generation = process.env.HANDOFF_GENERATION;
const workerIndex = process.env.HANDOFF_WORKER;
const idleGraceMs = Number(process.env.EGG_DRAIN_IDLE_MS || 1000);
if (!process.env.NODE_ENV && !process.env.EGG_SERVER_ENV) process.env.NODE_ENV = 'production';

const tag = `[handoff-entry pid=${process.pid}${generation ? ` gen=${generation}` : ''}${workerIndex ? ` worker=${workerIndex}` : ''}]`;
const log = msg => process.stderr.write(`${tag} ${msg}\n`);

let sockets;
try {
  sockets = listenFds();
} catch (err) {
  log(`fatal: ${err.message}`);
  process.exit(1);
}

let app = null;
let servers = [];
let state = 'booting'; // booting -> serving -> draining

async function main() {
  const t0 = Date.now();
  app = await require('egg').start({ baseDir });

  const handler = app.callback();
  servers = (sockets.length ? sockets : [ null ]).map(() => new GracefulServer(handler));
  // Egg's cluster worker does this for the server it creates: expose app.server, install egg's
  // uncaught-exception handling and clientError logging, apply config.serverTimeout.
  app.emit('server', servers[0].server);
  for (const s of servers.slice(1)) {
    s.server.on('clientError', (err, socket) => app.onClientError(err, socket));
    if (typeof app.config.serverTimeout === 'number') s.server.setTimeout(app.config.serverTimeout);
  }

  let where;
  if (sockets.length) {
    await Promise.all(sockets.map(({ fd }, i) => servers[i].listen({ fd })));
    where = sockets.map(({ fd, name }) => `fd ${fd} (${name})`).join(', ');
  } else {
    const host = process.env.HOST || '127.0.0.1';
    const port = Number(process.env.PORT || 7001);
    await servers[0].listen({ host, port });
    where = `http://${host}:${port}`;
  }
  if (state === 'draining') return; // a drain signal came while we were starting up

  state = 'serving';
  const version = app.config.pkg.version;
  log(`egg ${app.config.env} app ${app.name}@${version} ready in ${Date.now() - t0} ms, serving on ${where}`);
  try {
    await notifier.ready(`serving ${app.name}@${version} on ${servers.length} socket(s)`);
  } catch (err) {
    // Not fatal here: with `--ready delay:DUR` handoff does not wait for READY=1 (it still passes
    // NOTIFY_SOCKET); with `--ready notify` it rolls back after --ready-timeout, and this says why.
    log(`error: ${err.message}`);
  }
}

async function drain(reason, exitCode) {
  if (state === 'draining') {
    log(`${reason}: already draining`);
    return;
  }
  const wasServing = state === 'serving';
  state = 'draining';
  if (!app) {
    // Still booting: nothing is served and no job has run yet.
    log(`${reason} while booting: exiting`);
    process.exit(exitCode);
  }
  const t0 = Date.now();
  log(`${reason}: draining (${servers.reduce((n, s) => n + s.activeRequests, 0)} requests in flight, ` +
    `${app.handoff ? app.handoff.runningTasks : '?'} scheduled tasks running)`);
  try {
    await Promise.all([
      // No new scheduled runs; wait for the running ones (egg-handoff plugin).
      app.handoff ? app.handoff.stopSchedules() : warnNoPlugin(),
      // Stop accepting; let requests finish; close keep-alive connections cleanly.
      ...servers.map(s => s.drain({ idleGraceMs })),
    ]);
    // The app's and agent's beforeClose hooks: database pools, loggers, ...
    await app.close();
  } catch (err) {
    log(`error while draining: ${err && err.stack || err}`);
    exitCode = exitCode || 1;
  }
  removeTimingFiles();
  log(`drained in ${Date.now() - t0} ms${wasServing ? '' : ' (was not serving yet)'}, exiting ${exitCode}`);
  // Exit explicitly: egg's agent keeps timers (alive check, schedule timers) that would keep the
  // event loop running.
  process.exit(exitCode);
}

function warnNoPlugin() {
  log('warning: egg-handoff plugin not enabled; running scheduled tasks are not waited for');
}

// Egg writes run/<type>_timing_<pid>.json at every boot; with a new pid per rollover they pile
// up. Remove ours on the way out.
function removeTimingFiles() {
  for (const type of [ 'agent', 'application' ]) {
    try {
      fs.unlinkSync(path.join(app.config.rundir, `${type}_timing_${process.pid}.json`));
    } catch (_) {
      // not written, or already gone
    }
  }
}

process.on('SIGTERM', () => drain('SIGTERM', 0));
process.on('SIGINT', () => drain('SIGINT', 0));

// Under egg-cluster an uncaught exception makes the worker stop taking connections and the
// master fork a replacement. Here: drain and exit 1, and handoff replaces the worker. Egg's own
// handler (installed by the 'server' event) logs the error.
process.on('uncaughtException', err => {
  const ignore = (app && app.config.serverGracefulIgnoreCode) || [];
  if (err && ignore.includes(err.code)) return;
  if (state === 'booting') log(`uncaught exception while booting: ${err && err.stack || err}`);
  drain('uncaught exception', 1);
});

main().catch(err => {
  log(`fatal: ${state === 'booting' ? 'egg failed to start' : 'cannot serve'}: ${err && err.stack || err}`);
  process.exit(1);
});
