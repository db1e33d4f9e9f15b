'use strict';

/**
 * sd_watchdog_enabled(3) for Node.js: whether the supervisor wants `WATCHDOG=1` pings from this
 * process, and how often.
 *
 * Protocol: `WATCHDOG_USEC=<n>` is the watchdog timeout in microseconds; `WATCHDOG_PID`, when
 * set, is the pid the request is meant for (another process inheriting the variables must not
 * ping). The convention is to ping at half the timeout. Like `sd_watchdog_enabled(1, ...)`, the
 * variables are removed from the environment.
 */

class WatchdogError extends Error {}

/**
 * @param {object} [opts]
 * @param {NodeJS.ProcessEnv} [opts.env]
 * @param {number} [opts.pid]
 * @param {boolean} [opts.unsetEnv] default true
 * @returns {{ enabled: boolean, usec: number, intervalMs: number, reason: string }}
 */
function watchdogFromEnv({ env = process.env, pid = process.pid, unsetEnv = true } = {}) {
  const { WATCHDOG_USEC: usec, WATCHDOG_PID: forPid } = env;
  if (unsetEnv) {
    delete env.WATCHDOG_USEC;
    delete env.WATCHDOG_PID;
  }
  const off = reason => ({ enabled: false, usec: 0, intervalMs: 0, reason });
  if (usec === undefined || usec === '') return off('WATCHDOG_USEC is not set');
  if (!/^[0-9]+$/.test(usec) || Number(usec) === 0) {
    throw new WatchdogError(`WATCHDOG_USEC=${JSON.stringify(usec)} is not a positive number of microseconds`);
  }
  if (forPid !== undefined && forPid !== '') {
    if (!/^[0-9]+$/.test(forPid)) throw new WatchdogError(`WATCHDOG_PID=${JSON.stringify(forPid)} is not a pid`);
    if (Number(forPid) !== pid) return off(`WATCHDOG_PID=${forPid} is not this process (${pid})`);
  }
  const n = Number(usec);
  // Half the timeout, as sd_watchdog_enabled(3) recommends; at least 1 ms.
  return { enabled: true, usec: n, intervalMs: Math.max(1, Math.floor(n / 2000)), reason: `WATCHDOG_USEC=${n}` };
}

module.exports = { watchdogFromEnv, WatchdogError };
