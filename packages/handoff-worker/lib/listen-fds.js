'use strict';

/**
 * sd_listen_fds(3) for Node.js: the listening sockets a supervisor (handoff, or systemd socket
 * activation) handed to this process.
 *
 * Protocol: `LISTEN_FDS=<n>` sockets sit at fds 3 .. 3+n-1, `LISTEN_PID` is the pid they are meant
 * for (a shell that forks instead of exec'ing would otherwise pass its sockets on by mistake), and
 * `LISTEN_FDNAMES` optionally names them, colon-separated.
 *
 * Like `sd_listen_fds(unset_environment = 1)`, the three variables are removed from
 * `process.env`, so child processes (systemd-notify, anything the app spawns) do not take the
 * sockets for their own.
 */

const fs = require('fs');

const SD_LISTEN_FDS_START = 3;

class ListenFdsError extends Error {}

/**
 * @param {object} [opts]
 * @param {NodeJS.ProcessEnv} [opts.env] environment to read (default `process.env`)
 * @param {number} [opts.pid] the pid the sockets must be meant for (default `process.pid`)
 * @param {boolean} [opts.unsetEnv] remove the variables after reading them (default true)
 * @returns {{fd: number, name: string}[]} empty when the process was not given any sockets
 */
function listenFds({ env = process.env, pid = process.pid, unsetEnv = true } = {}) {
  const { LISTEN_FDS: count, LISTEN_PID: forPid, LISTEN_FDNAMES: names } = env;
  if (unsetEnv) {
    delete env.LISTEN_FDS;
    delete env.LISTEN_PID;
    delete env.LISTEN_FDNAMES;
  }
  if (count === undefined || count === '') return [];

  if (!/^[0-9]+$/.test(count)) {
    throw new ListenFdsError(`LISTEN_FDS=${JSON.stringify(count)} is not a number`);
  }
  if (forPid === undefined || !/^[0-9]+$/.test(forPid)) {
    throw new ListenFdsError(`LISTEN_FDS is set but LISTEN_PID=${JSON.stringify(forPid)} is not a pid`);
  }
  if (Number(forPid) !== pid) {
    throw new ListenFdsError(
      `LISTEN_PID=${forPid} but this process is ${pid}: the sockets were meant for another process ` +
      '(is a wrapper forking node instead of exec\'ing it? run `exec node ...` or let handoff start node directly)');
  }
  const n = Number(count);
  let fdNames = [];
  if (names !== undefined && names !== '') {
    fdNames = names.split(':');
    if (fdNames.length !== n) {
      throw new ListenFdsError(`LISTEN_FDNAMES has ${fdNames.length} names for LISTEN_FDS=${n} sockets`);
    }
  }

  const out = [];
  for (let i = 0; i < n; i++) {
    const fd = SD_LISTEN_FDS_START + i;
    let st;
    try {
      st = fs.fstatSync(fd);
    } catch (err) {
      throw new ListenFdsError(`LISTEN_FDS=${n} but fd ${fd} is not open (${err.code})`);
    }
    if (!st.isSocket()) {
      throw new ListenFdsError(`LISTEN_FDS=${n} but fd ${fd} is not a socket`);
    }
    // systemd's default name for an unnamed socket.
    out.push({ fd, name: fdNames[i] || 'unknown' });
  }
  return out;
}

module.exports = { listenFds, ListenFdsError, SD_LISTEN_FDS_START };
