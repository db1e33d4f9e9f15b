'use strict';

module.exports = () => ({
  handoff: {
    /**
     * Which worker of a handoff generation runs the app's own `type: 'worker'` schedules
     * (files in app/schedule and config.schedule.directory).
     *
     * Under egg-cluster one agent picks one worker for such a job. Under handoff every worker is a
     * single-process Egg with its own agent, so without this each of the N workers would run the
     * job. Default 0: only HANDOFF_WORKER=0 runs them. 'all': every worker runs them (use when the
     * job takes a lock of its own). A worker index that does not exist disables them.
     *
     * `type: 'all'` schedules and plugin schedules (log rotation, tmpdir cleanup: per-process
     * housekeeping) run in every worker regardless. Without handoff (no HANDOFF_WORKER) the process
     * is the only one and runs everything.
     */
    scheduleWorker: 0,
  },
});
