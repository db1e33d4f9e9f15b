'use strict';

/**
 * sd_notify(3) for Node.js, without native add-ons.
 *
 * The protocol: `NOTIFY_SOCKET` names a unix DATAGRAM socket (a path, or `@name` for the abstract
 * namespace); a process reports its state by sending one datagram of newline-separated
 * `KEY=VALUE` lines, e.g. `READY=1\nSTATUS=serving`. Node.js cannot send unix datagrams, so this
 * module runs `systemd-notify`, which ships with systemd on every host that has it. The
 * supervisor (handoff, or systemd with `NotifyAccess=all`) accepts datagrams from the worker's
 * descendants, so a short-lived child sending them is fine.
 *
 * systemd-notify is run without `--no-block`: after the message it sends a `BARRIER=1` datagram
 * carrying a pipe and waits (at most 5 s) until the receiver has closed it, i.e. until the
 * receiver has processed the message. handoff closes passed fds, so this returns promptly.
 *
 * Without `NOTIFY_SOCKET` (the app was started by hand or by egg-scripts) every call is a no-op.
 */

const { execFile } = require('child_process');

class SdNotifyError extends Error {}

/**
 * STATUS= text as one safe line: a newline would start a new assignment for the receiver, and an
 * ESC or other control character would reach the operator's terminal through `handoff status`.
 */
function oneLine(text) {
  // eslint-disable-next-line no-control-regex
  return String(text).replace(/[\u0000-\u001f\u007f]/g, ' ');
}

class SdNotify {
  /**
   * @param {string|undefined} socket the value of NOTIFY_SOCKET, or undefined
   * @param {object} [opts]
   * @param {string} [opts.command] the systemd-notify binary (default: `systemd-notify` from PATH)
   * @param {number} [opts.timeoutMs] kill systemd-notify if it takes longer (default 10 s)
   */
  constructor(socket, { command = 'systemd-notify', timeoutMs = 10000 } = {}) {
    this.socket = socket || undefined;
    this.command = command;
    this.timeoutMs = timeoutMs;
  }

  /**
   * Reads `NOTIFY_SOCKET` and removes it from the environment, so that nothing else the process
   * spawns reports on the worker's behalf by accident.
   */
  static fromEnv(env = process.env, opts) {
    const socket = env.NOTIFY_SOCKET;
    delete env.NOTIFY_SOCKET;
    return new SdNotify(socket, opts);
  }

  get enabled() {
    return this.socket !== undefined;
  }

  /** `READY=1`, with an optional `STATUS=` line. */
  ready(status) {
    return this.send({ ready: true, status });
  }

  /** `STATUS=` only. */
  status(status) {
    return this.send({ status });
  }

  /**
   * Sends one notification.
   * @param {object} msg
   * @param {boolean} [msg.ready] add `READY=1`
   * @param {string} [msg.status] add `STATUS=<text>` (single line)
   * @param {string[]} [msg.extra] more `KEY=VALUE` assignments, e.g. `['STOPPING=1']`
   * @returns {Promise<boolean>} true if sent, false when there is no NOTIFY_SOCKET
   */
  send({ ready = false, status, extra = [] } = {}) {
    if (!this.enabled) return Promise.resolve(false);
    const args = [];
    if (ready) args.push('--ready');
    if (status !== undefined) args.push(`--status=${oneLine(status)}`);
    for (const kv of extra) {
      // eslint-disable-next-line no-control-regex
      if (!/^[A-Z_][A-Z0-9_]*=[^\u0000-\u001f\u007f]*$/.test(kv)) {
        return Promise.reject(new SdNotifyError(`not a KEY=VALUE notify assignment: ${JSON.stringify(kv)}`));
      }
      args.push(kv);
    }
    if (args.length === 0) return Promise.resolve(false);
    const env = { ...process.env, NOTIFY_SOCKET: this.socket };
    return new Promise((resolve, reject) => {
      execFile(this.command, args, { env, timeout: this.timeoutMs }, (err, stdout, stderr) => {
        if (!err) return resolve(true);
        if (err.code === 'ENOENT') {
          return reject(new SdNotifyError(
            `cannot report readiness: ${this.command} not found (PATH=${process.env.PATH}). ` +
            'It comes with systemd (Debian/Ubuntu: package "systemd"; Fedora/RHEL: "systemd"); ' +
            'install it; until then handoff --ready notify never sees this worker ready ' +
            '(--ready delay:DUR does not need it)'));
        }
        const why = err.killed ? `timed out after ${this.timeoutMs} ms` : `exit ${err.code}${err.signal ? ` (${err.signal})` : ''}`;
        reject(new SdNotifyError(
          `${this.command} ${args.join(' ')} failed (${why}) sending to NOTIFY_SOCKET=${this.socket}: ${String(stderr).trim()}`));
      });
    });
  }
}

module.exports = { SdNotify, SdNotifyError, oneLine };
