'use strict';

const path = require('path');

// Local plugin: handoff worker identity, schedules once per generation, drain waits for tasks.
exports.handoff = {
  enable: true,
  path: path.join(__dirname, '../lib/plugin/egg-handoff'),
};
