'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');

/**
 * Where Egg may write. By default Egg writes run/ (config dumps, one timing file per boot) and
 * logs/ under the app's own directory; an install dir owned by root, or read-only, then breaks.
 *
 *   EGG_RUN_DIR   run files  (else egg/ in $RUNTIME_DIRECTORY from systemd's RuntimeDirectory=, else a tmp dir)
 *   EGG_LOG_DIR   log files  (else $LOGS_DIRECTORY from systemd's LogsDirectory=, else a tmp dir)
 *
 * Under handoff each worker logs into <log dir>/worker-<HANDOFF_WORKER>: every worker is its own
 * single-process Egg and rotates its own files (egg-logrotator tells only its own process to
 * reopen them), so two workers must not share a file.
 */
function firstDir(list) {
  return list ? list.split(':')[0] : undefined;
}

module.exports = appInfo => {
  const config = {};

  // Cookie signing keys. A real app sets its own (from a secret store, not from the repo).
  config.keys = process.env.EGG_KEYS || `${appInfo.name}_handoff_example_key`;

  const scratch = path.join(os.tmpdir(), `${appInfo.name}-${process.getuid ? process.getuid() : 'u'}`);
  const runtimeDir = firstDir(process.env.RUNTIME_DIRECTORY);
  config.rundir = process.env.EGG_RUN_DIR || (runtimeDir && path.join(runtimeDir, 'egg')) || path.join(scratch, 'run');
  let logDir = process.env.EGG_LOG_DIR || firstDir(process.env.LOGS_DIRECTORY) || path.join(scratch, 'logs');
  if (process.env.HANDOFF_WORKER !== undefined) logDir = path.join(logDir, `worker-${process.env.HANDOFF_WORKER}`);
  config.logger = { dir: logDir };

  // Egg creates rundir with a non-recursive mkdir; make sure the parents exist.
  for (const dir of [ config.rundir, config.logger.dir ]) {
    fs.mkdirSync(dir, { recursive: true });
  }

  // The demo schedule (app/schedule/report.js).
  config.report = {
    // How often the job starts; '0' or 'off' disables it.
    interval: process.env.EGG_SCHEDULE_INTERVAL || '30s',
    // How long one run takes (it just waits), in ms.
    durationMs: Number(process.env.EGG_SCHEDULE_MS || 3000),
    // Append `schedule start|end <id> pid=...` lines here (else the app log).
    logFile: process.env.EGG_SCHEDULE_LOG || '',
  };

  return config;
};
