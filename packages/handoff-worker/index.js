'use strict';

/**
 * @handoff/worker: the handoff worker contract for Node.js HTTP servers.
 *
 *   const worker = require('@handoff/worker');
 *   const server = http.createServer(handler);
 *   worker.onShutdown(() => worker.drain(server));  // SIGTERM: drain, then exit 0
 *   await worker.listen(server);                     // inherited sockets, or PORT when run by hand
 *   await worker.ready('serving');                   // READY=1 (and WATCHDOG=1 pings if asked for)
 *
 * Requiring this module reads LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES, NOTIFY_SOCKET,
 * WATCHDOG_USEC / WATCHDOG_PID and removes them from process.env, so nothing the app spawns later
 * takes the sockets or reports for it (what sd_listen_fds(1) and sd_notify do in C). Require it
 * early. `createWorker({ env, pid })` reads another environment (tests).
 */

const net = require('net');
const { listenFds, ListenFdsError, SD_LISTEN_FDS_START } = require('./lib/listen-fds');
const { SdNotify, SdNotifyError } = require('./lib/sd-notify');
const { watchdogFromEnv, WatchdogError } = require('./lib/watchdog');
const { track, isTracked } = require('./lib/drain');

class HandoffWorkerError extends Error {}

const num = v => (v !== undefined && /^[0-9]+$/.test(v) ? Number(v) : null);

class Worker {
  /**
   * @param {object} [opts]
   * @param {NodeJS.ProcessEnv} [opts.env] environment to read and strip (default process.env)
   * @param {number} [opts.pid] this process's pid (default process.pid)
   * @param {string} [opts.notifyCommand] systemd-notify binary (default from PATH)
   * @param {(msg: string) => void} [opts.log] where onShutdown() reports (default stderr)
   */
  constructor({ env = process.env, pid = process.pid, notifyCommand, log } = {}) {
    this.pid = pid;
    this.generation = num(env.HANDOFF_GENERATION);
    this.workerIndex = num(env.HANDOFF_WORKER);
    this.log = log || (msg => process.stderr.write(`[@handoff/worker pid=${pid}] ${msg}\n`));
    // Read everything first, then report errors when the app asks (listen/ready): a bad variable
    // must not crash `require`.
    try {
      this.sockets = listenFds({ env, pid });
      this.socketError = null;
    } catch (err) {
      this.sockets = [];
      this.socketError = err;
    }
    this.notifier = SdNotify.fromEnv(env, notifyCommand ? { command: notifyCommand } : undefined);
    try {
      this.watchdogConfig = watchdogFromEnv({ env, pid });
      this.watchdogError = null;
    } catch (err) {
      this.watchdogConfig = { enabled: false, usec: 0, intervalMs: 0, reason: err.message };
      this.watchdogError = err;
    }
    this.used = new Set();
    this.draining = false;
    this.watchdogTimer = null;
    this.shutdown = null;
  }

  /** True when the supervisor passed sockets (LISTEN_FDS) to this process. */
  get inherited() {
    return this.sockets.length > 0;
  }

  /**
   * Serves `server` on the inherited sockets: all of them, or those named `name` in
   * LISTEN_FDNAMES. The first becomes the server's own listening handle; further ones feed their
   * connections into it. Without inherited sockets, listens on `port`/`host` (run by hand).
   *
   * @returns {Promise<{inherited: boolean, sockets: {fd: number, name: string}[], address: any}>}
   */
  async listen(server, { name, port, host, fallback = true } = {}) {
    if (!server || typeof server.listen !== 'function' || typeof server.on !== 'function') {
      throw new TypeError('listen(server): pass an http, https or http2 server (for Express: http.createServer(app))');
    }
    if (this.socketError) throw this.socketError;
    const tracker = track(server);
    if (this.draining) return { inherited: this.inherited, sockets: [], address: null, draining: true };

    if (!this.inherited) {
      if (!fallback) {
        throw new HandoffWorkerError('no sockets were passed (LISTEN_FDS is not set) and fallback is off: ' +
          'run this under handoff, or allow listening on a port');
      }
      const where = {
        port: port !== undefined ? port : Number(process.env.PORT || 3000),
        host: host !== undefined ? host : (process.env.HOST || '127.0.0.1'),
      };
      await listenOn(server, where);
      return { inherited: false, sockets: [], address: server.address() };
    }

    const names = name === undefined ? null : [].concat(name);
    const pick = this.sockets.filter(s => !this.used.has(s.fd) && (!names || names.includes(s.name)));
    if (pick.length === 0) {
      const have = this.sockets.map(s => `fd ${s.fd}=${s.name}${this.used.has(s.fd) ? ' (taken)' : ''}`).join(', ');
      throw new HandoffWorkerError(names
        ? `no inherited socket named ${names.join(' or ')}: have ${have} (LISTEN_FDNAMES names them; ` +
          'handoff: --listen NAME=ADDR; systemd: FileDescriptorName=)'
        : `every inherited socket is taken already: ${have}`);
    }
    for (const s of pick) this.used.add(s.fd);
    await listenOn(server, { fd: pick[0].fd });
    for (const s of pick.slice(1)) {
      if (this.draining) break; // drain() ran meanwhile: it closed what was listening
      const feeder = net.createServer(socket => server.emit('connection', socket));
      feeder.on('error', err => server.emit('error', err));
      await listenOn(feeder, { fd: s.fd });
      tracker.extraListeners.push(feeder);
    }
    return { inherited: true, sockets: pick, address: server.address() };
  }

  /**
   * READY=1, with STATUS=<status> when given; then starts the watchdog pings if the supervisor
   * asked for them. Resolves false (sending nothing) without NOTIFY_SOCKET or once draining.
   * Rejects when systemd-notify is missing or fails: the supervisor would never see this worker
   * ready, so do not swallow it.
   */
  async ready(status, { watchdog = true } = {}) {
    if (this.draining) return false;
    const sent = await this.notifier.ready(status);
    if (watchdog) this.startWatchdog();
    return sent;
  }

  /** STATUS=<text> (one line; control characters become spaces). */
  status(text) {
    return this.notifier.status(text);
  }

  /** Any sd_notify assignments, e.g. notify(['EXTEND_TIMEOUT_USEC=30000000']). */
  notify(assignments, { ready = false, status } = {}) {
    return this.notifier.send({ ready, status, extra: assignments });
  }

  /**
   * Pings WATCHDOG=1 every WATCHDOG_USEC/2 when WATCHDOG_USEC is set (and WATCHDOG_PID, if set,
   * is this process). The timer does not keep the process alive. Idempotent.
   * @returns {{enabled: boolean, intervalMs: number, reason: string, stop(): void}}
   */
  startWatchdog() {
    if (this.watchdogError) throw this.watchdogError;
    const cfg = this.watchdogConfig;
    const handle = { enabled: cfg.enabled, intervalMs: cfg.intervalMs, reason: cfg.reason, stop: () => this.stopWatchdog() };
    if (!cfg.enabled || this.watchdogTimer) return handle;
    let inFlight = false;
    const ping = () => {
      if (inFlight) return; // a ping still running (systemd-notify waits for the receiver)
      inFlight = true;
      this.notifier.send({ extra: [ 'WATCHDOG=1' ] })
        .catch(err => this.log(`watchdog ping failed: ${err.message}`))
        .finally(() => { inFlight = false; });
    };
    this.watchdogTimer = setInterval(ping, cfg.intervalMs);
    this.watchdogTimer.unref();
    ping();
    return handle;
  }

  stopWatchdog() {
    clearInterval(this.watchdogTimer);
    this.watchdogTimer = null;
  }

  /**
   * Stops accepting on `server` (and its further inherited sockets) and resolves once every
   * connection is closed: in-flight requests finish, keep-alive connections are told
   * `Connection: close` or closed after `idleGraceMs` idle, HTTP/2 sessions get GOAWAY.
   * Calling it again returns the same promise. Also marks the worker as draining (no READY=1).
   *
   * @param {object} [opts]
   * @param {number} [opts.idleGraceMs] idle keep-alive connections are closed after this (1000)
   * @param {number} [opts.timeoutMs] destroy whatever is still open after this (0: never)
   * @returns {Promise<{forced: number}>} forced: connections destroyed at timeoutMs
   */
  drain(server, opts = {}) {
    this.draining = true;
    if (!isTracked(server) && server.listening) {
      this.log('warning: drain() of a server that did not listen() through @handoff/worker: ' +
        'connections opened before now are not waited for');
    }
    return track(server).drain(opts);
  }

  /** Requests in flight and open connections of `server` (after listen()). */
  stats(server) {
    const t = track(server);
    return { activeRequests: t.activeRequests, connections: t.connections, draining: t.draining };
  }

  /**
   * On SIGTERM (handoff's drain signal) or SIGINT: runs `fn(signal)` once, then exits 0 (1 if it
   * threw). A second signal while draining is logged and ignored; handoff's drain timeout is the
   * backstop. The exit is explicit: timers and pools would otherwise keep the process alive.
   */
  onShutdown(fn, { signals = [ 'SIGTERM', 'SIGINT' ], exit = true } = {}) {
    const handler = signal => {
      if (this.shutdown) {
        this.log(`${signal}: already draining`);
        return;
      }
      this.draining = true;
      this.stopWatchdog();
      const t0 = Date.now();
      this.log(`${signal}: draining`);
      this.shutdown = Promise.resolve()
        .then(() => fn(signal))
        .then(() => 0, err => {
          this.log(`error while draining: ${err && err.stack || err}`);
          return 1;
        })
        .then(code => {
          this.log(`drained in ${Date.now() - t0} ms, exiting ${code}`);
          if (exit) process.exit(code);
          return code;
        });
    };
    for (const s of signals) process.on(s, handler);
    return () => signals.forEach(s => process.removeListener(s, handler));
  }
}

function listenOn(server, where) {
  return new Promise((resolve, reject) => {
    const onError = err => reject(err);
    server.once('error', onError);
    server.listen(where, () => {
      server.removeListener('error', onError);
      resolve();
    });
  });
}

/** A worker reading another environment (tests), or process.env again. */
function createWorker(opts) {
  return new Worker(opts);
}

const defaultWorker = new Worker();
const worker = defaultWorker;

// Plain functions bound to the default worker, exported by name (shorthand properties only, so
// that Node's ESM loader sees them: `import { listen } from '@handoff/worker'`).
const listen = (server, opts) => defaultWorker.listen(server, opts);
const ready = (status, opts) => defaultWorker.ready(status, opts);
const status = text => defaultWorker.status(text);
const notify = (assignments, opts) => defaultWorker.notify(assignments, opts);
const startWatchdog = () => defaultWorker.startWatchdog();
const stopWatchdog = () => defaultWorker.stopWatchdog();
const drain = (server, opts) => defaultWorker.drain(server, opts);
const stats = server => defaultWorker.stats(server);
const onShutdown = (fn, opts) => defaultWorker.onShutdown(fn, opts);

module.exports = {
  listen,
  ready,
  status,
  notify,
  startWatchdog,
  stopWatchdog,
  drain,
  stats,
  onShutdown,
  worker,
  createWorker,
  Worker,
  HandoffWorkerError,
  ListenFdsError,
  SdNotifyError,
  WatchdogError,
  SD_LISTEN_FDS_START,
};
