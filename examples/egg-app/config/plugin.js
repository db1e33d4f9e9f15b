'use strict';

// egg-handoff (npm): schedules once per handoff generation, drain waits for running tasks.
exports.handoff = { enable: true, package: 'egg-handoff' };

// egg-static creates app/public at boot when it is missing (git does not keep the empty
// directory, and an rpm-installed app dir is read-only to the app's user), and this app serves
// no static files: off. An app that does serve them ships app/public in its package.
exports.static = false;
