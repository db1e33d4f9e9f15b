'use strict';

const fs = require('fs');
const path = require('path');
const { handoffIdentity } = require('./lib/identity');

/**
 * Agent half: keeps the app's `type: 'worker'` schedules off every worker but the chosen one
 * (config.handoff.scheduleWorker). egg-schedule has registered its timers by now (it does so in
 * a beforeStart hook) but starts them only on 'egg-ready', after willReady.
 */
class HandoffAgentBoot {
  constructor(agent) {
    this.agent = agent;
    agent.handoff = handoffIdentity();
  }

  async willReady() {
    const { agent } = this;
    const { worker } = agent.handoff;
    const chosen = agent.config.handoff.scheduleWorker;
    if (worker === null || chosen === 'all' || Number(chosen) === worker) return;

    const appDirs = [ path.join(agent.baseDir, 'app/schedule'), ...(agent.config.schedule.directory || []) ]
      .map(realpathOrSelf)
      .map(d => d + path.sep);
    for (const [ key, item ] of Object.entries(agent.schedules || {})) {
      if (item.schedule.type !== 'worker' || item.schedule.disable) continue;
      if (!appDirs.some(d => key.startsWith(d))) continue;
      agent.schedule.unregisterSchedule(key);
      agent.coreLogger.info('[egg-handoff] schedule %s runs on worker %s only; not on this worker %s',
        path.relative(agent.baseDir, key), chosen, worker);
    }
  }
}

function realpathOrSelf(p) {
  try {
    return fs.realpathSync(p);
  } catch (_) {
    return p;
  }
}

module.exports = HandoffAgentBoot;
