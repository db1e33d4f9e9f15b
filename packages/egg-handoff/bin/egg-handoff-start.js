#!/usr/bin/env node
'use strict';

// egg-handoff-start [APP_DIR]: run the Egg app in APP_DIR (default $EGG_BASE_DIR, else the current
// directory) as a handoff worker. In handoff's configuration:
//
//   command = ["/opt/app/node_modules/.bin/egg-handoff-start", "/opt/app"]
//
// Environment: EGG_BASE_DIR, EGG_DRAIN_IDLE_MS (close idle keep-alive connections after this while
// draining, default 1000), HOST/PORT (only without handoff: default 127.0.0.1:7001), NODE_ENV
// (set to "production" when neither it nor EGG_SERVER_ENV is set, as egg-scripts does).

const args = process.argv.slice(2);
if (args.includes('-h') || args.includes('--help') || args.length > 1 || (args[0] || '').startsWith('-')) {
  const out = args.includes('-h') || args.includes('--help') ? process.stdout : process.stderr;
  out.write('usage: egg-handoff-start [APP_DIR]\n' +
    '  Runs the Egg app in APP_DIR (default $EGG_BASE_DIR, else the current directory) as a handoff\n' +
    '  worker: serves on the sockets handoff passes, reports READY=1, drains on SIGTERM.\n' +
    '  Without handoff it listens on $HOST:$PORT (default 127.0.0.1:7001).\n');
  process.exit(out === process.stdout ? 0 : 64);
}
require('../lib/start').start({ baseDir: args[0] });
