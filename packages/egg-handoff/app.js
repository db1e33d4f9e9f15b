'use strict';

const { handoffIdentity } = require('./lib/identity');

/**
 * App half: counts running scheduled tasks, so that a draining worker can wait for them.
 * `app.close()` does not wait for a running task, and a process that exits cuts it off.
 *
 * app.handoff.generation / .worker  HANDOFF_GENERATION / HANDOFF_WORKER as numbers (null without handoff)
 * app.handoff.runningTasks          scheduled tasks running right now
 * app.handoff.stopSchedules()       no new runs; resolves once the running ones have finished
 */
class HandoffAppBoot {
  constructor(app) {
    this.app = app;
    let running = 0;
    let waiters = [];
    const settle = () => {
      if (running !== 0) return;
      const w = waiters;
      waiters = [];
      w.forEach(resolve => resolve());
    };
    this.wrap = task => async function trackedTask(...args) {
      running++;
      try {
        return await task.apply(this, args);
      } finally {
        running--;
        settle();
      }
    };
    app.handoff = {
      ...handoffIdentity(),
      get runningTasks() {
        return running;
      },
      async stopSchedules() {
        // In single mode the agent lives in this process. Closing its scheduler stops new
        // dispatches; a job dispatched just before reaches the app one tick later, so let
        // those ticks pass before looking at the counter.
        if (app.agent && app.agent.schedule) app.agent.schedule.close();
        await new Promise(resolve => setImmediate(resolve));
        await new Promise(resolve => setImmediate(resolve));
        if (running === 0) return;
        await new Promise(resolve => waiters.push(resolve));
      },
    };
  }

  didLoad() {
    // egg-schedule (a dependency, so loaded before us) has collected the tasks by now.
    const worker = this.app.scheduleWorker;
    for (const item of Object.values(worker.scheduleItems)) item.task = this.wrap(item.task);
    const register = worker.registerSchedule.bind(worker);
    worker.registerSchedule = item => register({ ...item, task: this.wrap(item.task) });
  }
}

module.exports = HandoffAppBoot;
