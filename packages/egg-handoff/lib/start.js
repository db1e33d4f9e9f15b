'use strict';

/**
 * Runs an Egg app as a handoff worker (what `egg-handoff-start` does):
 *   1. takes the listening sockets handoff passed (all of LISTEN_FDS, checking LISTEN_PID); without
 *      them (run by hand) listens on $HOST:$PORT (127.0.0.1:7001);
 *   2. boots Egg in single-process mode, `require('egg').start({ baseDir })` (the framework is the
 *      app's own, resolved from baseDir); a boot error exits 1, so handoff rolls the release back;
 *   3. serves app.callback() and emits app's 'server' event as egg-cluster does;
 *   4. reports READY=1 (systemd-notify) once app, agent and sockets are up;
 *   5. on SIGTERM (handoff's drain signal) stops accepting, lets in-flight requests and running
 *      scheduled tasks finish, closes the app, and exits 0.
 */

const fs = require('fs');
const http = require('http');
const path = require('path');
// First: takes LISTEN_*, NOTIFY_SOCKET and WATCHDOG_* out of the environment before Egg runs.
const hw = require('@handoff/worker');

/**
 * @param {object} [opts]
 * @param {string} [opts.baseDir] the Egg app (default $EGG_BASE_DIR, else the current directory)
 * @param {number} [opts.idleGraceMs] close idle keep-alive connections after this while draining
 * @param {(msg: string) => void} [opts.log]
 */
function start(opts = {}) {
  const worker = hw.worker;
  const baseDirGiven = path.resolve(opts.baseDir || process.env.EGG_BASE_DIR || process.cwd());
  const idleGraceMs = opts.idleGraceMs !== undefined ? opts.idleGraceMs : Number(process.env.EGG_DRAIN_IDLE_MS || 1000);
  if (!process.env.NODE_ENV && !process.env.EGG_SERVER_ENV) process.env.NODE_ENV = 'production';
  const { generation, workerIndex } = worker;
  const tag = `[egg-handoff pid=${process.pid}${generation !== null ? ` gen=${generation}` : ''}` +
    `${workerIndex !== null ? ` worker=${workerIndex}` : ''}]`;
  const log = opts.log || (msg => process.stderr.write(`${tag} ${msg}\n`));
  worker.log = log;

  let baseDir;
  try {
    // A `current` symlink switched between releases: this generation keeps the release it booted.
    baseDir = fs.realpathSync(baseDirGiven);
    if (!fs.existsSync(path.join(baseDir, 'package.json'))) {
      throw new Error(`no package.json in ${baseDir}: pass the app directory (egg-handoff-start /opt/app, or EGG_BASE_DIR)`);
    }
  } catch (err) {
    log(`fatal: ${err.message}`);
    process.exit(1);
  }

  let app = null;
  let server = null;
  let state = 'booting'; // booting -> serving -> draining

  async function main() {
    const t0 = Date.now();
    const pkg = JSON.parse(fs.readFileSync(path.join(baseDir, 'package.json'), 'utf8'));
    const framework = (pkg.egg && pkg.egg.framework) || 'egg';
    // The app's own Egg (and framework), not one next to this package.
    const frameworkPath = path.dirname(require.resolve(`${framework}/package.json`, { paths: [ baseDir ] }));
    const egg = require(require.resolve('egg', { paths: [ frameworkPath, baseDir ] }));
    app = await egg.start({ baseDir, framework: frameworkPath });
    // SIGTERM / SIGINT from now on: drain, then exit 0 (1 if draining threw); explicitly, as Egg's
    // agent keeps timers (alive check, schedule timers) that would keep the event loop running.
    // Not before: while Egg boots nothing is served, and its loader runs long synchronous
    // stretches (requiring every file) during which a JavaScript handler cannot run (seconds on a
    // loaded machine; once past handoff's drain timeout, which then SIGKILLs). Node's default
    // handling ends the process at once instead.
    worker.onShutdown(drainOnce, { exit: true });

    server = http.createServer(app.callback());
    // Egg's cluster worker does this for the server it creates: app.server, egg's
    // uncaught-exception handling and clientError logging, config.serverTimeout.
    app.emit('server', server);

    const where = await worker.listen(server, {
      port: Number(process.env.PORT || 7001),
      host: process.env.HOST || '127.0.0.1',
    });
    if (where.draining || state === 'draining') return;
    const on = where.inherited
      ? where.sockets.map(({ fd, name }) => `fd ${fd} (${name})`).join(', ')
      : `http://${where.address.address}:${where.address.port}`;

    state = 'serving';
    const version = app.config.pkg.version;
    log(`egg ${app.config.env} app ${app.name}@${version} ready in ${Date.now() - t0} ms, serving on ${on}`);
    if (!app.handoff) warnNoPlugin();
    // Rejects when systemd-notify is missing: with --ready notify handoff would wait for nothing
    // and roll back at --ready-timeout. Exit instead, so the reason is the first thing it sees.
    await worker.ready(`serving ${app.name}@${version}`);
  }

  async function drain(signal) {
    const wasServing = state === 'serving';
    state = 'draining';
    if (!app) return; // (not reached: the handler is installed once the app exists)
    const t0 = Date.now();
    const st = server ? worker.stats(server) : { activeRequests: 0 };
    log(`${signal}: draining (${st.activeRequests} requests in flight, ` +
      `${app.handoff ? app.handoff.runningTasks : '?'} scheduled tasks running)`);
    await Promise.all([
      // No new scheduled runs; wait for the running ones (the plugin's counter).
      app.handoff ? app.handoff.stopSchedules() : undefined,
      // Stop accepting; let requests finish; close keep-alive connections cleanly.
      server ? worker.drain(server, { idleGraceMs }) : undefined,
    ]);
    // The app's and agent's beforeClose hooks: database pools, loggers, ...
    await app.close();
    removeTimingFiles(app);
    log(`drained in ${Date.now() - t0} ms${wasServing ? '' : ' (was not serving yet)'}`);
  }

  function warnNoPlugin() {
    log('warning: the egg-handoff plugin is not enabled (config/plugin.js: exports.handoff = ' +
      "{ enable: true, package: 'egg-handoff' }): every worker runs type 'worker' schedules, and " +
      'running scheduled tasks are not waited for when draining');
  }

  let draining = null;
  const drainOnce = reason => draining || (draining = drain(reason));

  // Under egg-cluster an uncaught exception makes the worker stop taking connections and the
  // master fork a replacement. Here: drain and exit 1, and handoff replaces the worker. Egg's own
  // handler (installed by the 'server' event) logs the error.
  process.on('uncaughtException', err => {
    const ignore = (app && app.config.serverGracefulIgnoreCode) || [];
    if (err && ignore.includes(err.code)) return;
    if (state === 'booting') {
      log(`uncaught exception while booting: ${err && err.stack || err}`);
      process.exit(1);
    }
    drainOnce('uncaught exception').then(() => process.exit(1), () => process.exit(1));
  });

  log(`booting ${baseDir}`);
  return main().catch(err => {
    log(`fatal: ${state === 'booting' ? 'egg failed to start' : 'cannot serve'}: ${err && err.stack || err}`);
    process.exit(1);
  });
}

// Egg writes run/<type>_timing_<pid>.json at every boot; with a new pid per rollover they pile up.
function removeTimingFiles(app) {
  for (const type of [ 'agent', 'application' ]) {
    try {
      fs.unlinkSync(path.join(app.config.rundir, `${type}_timing_${process.pid}.json`));
    } catch (_) {
      // not written, or already gone
    }
  }
}

module.exports = { start };
