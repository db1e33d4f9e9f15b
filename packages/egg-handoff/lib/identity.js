'use strict';

/** What handoff told this worker about itself; nulls when not run by handoff. */
function handoffIdentity(env = process.env) {
  const num = v => (v !== undefined && /^[0-9]+$/.test(v) ? Number(v) : null);
  return {
    generation: num(env.HANDOFF_GENERATION),
    worker: num(env.HANDOFF_WORKER),
  };
}

module.exports = { handoffIdentity };
