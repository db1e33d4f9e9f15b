'use strict';

// egg-handoff: the Egg plugin lives in app.js, agent.js and config/ (Egg loads them by path);
// this is the programmatic entry point: require('egg-handoff').start({ baseDir }) does what the
// egg-handoff-start command does.

module.exports = {
  start: opts => require('./lib/start').start(opts),
  handoffIdentity: env => require('./lib/identity').handoffIdentity(env),
};
