'use strict';

const fs = require('fs');

let seq = 0;

/**
 * A job that takes a while (config.report.durationMs) and says when it starts and ends, so a
 * rollover test can see that a draining worker lets it finish:
 *   schedule start <id> pid=<pid> generation=<g> worker=<w> version=<v> at=<epoch ms>
 *   schedule end <id> pid=<pid> generation=<g> worker=<w> version=<v> at=<epoch ms>
 * `type: 'worker'`: one run per tick across the workers of a generation (the handoff plugin keeps
 * it on HANDOFF_WORKER=0; see config.handoff.scheduleWorker).
 */
module.exports = app => {
  const { interval, durationMs, logFile } = app.config.report;
  const off = !interval || interval === '0' || interval === 'off';

  const say = line => {
    if (logFile) fs.appendFileSync(logFile, line + '\n');
    else app.logger.info('[report] %s', line);
  };

  return {
    schedule: {
      type: 'worker',
      interval: off ? '1h' : interval,
      disable: off,
    },
    async task() {
      const id = `${process.pid}-${++seq}`;
      const who = `pid=${process.pid} generation=${process.env.HANDOFF_GENERATION ?? '-'} ` +
        `worker=${process.env.HANDOFF_WORKER ?? '-'} version=${app.config.pkg.version}`;
      say(`schedule start ${id} ${who} at=${Date.now()}`);
      await new Promise(resolve => setTimeout(resolve, durationMs));
      say(`schedule end ${id} ${who} at=${Date.now()}`);
      app.logger.info('[report] run %s took %d ms', id, durationMs);
    },
  };
};
