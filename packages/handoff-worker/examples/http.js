#!/usr/bin/env node
'use strict';

// A plain node:http server as a handoff worker:
//   handoff run --listen 127.0.0.1:8080 --workers 2 -- node examples/http.js
// Run by hand (no sockets passed) it listens on $PORT (default 3000).

const http = require('node:http');
const worker = require('@handoff/worker');
const { plainHandler } = require('./common');

const server = http.createServer(plainHandler('http'));
// SIGTERM from handoff: stop accepting, finish what is in flight, exit 0.
worker.onShutdown(() => worker.drain(server));

(async () => {
  const { inherited, sockets, address } = await worker.listen(server);
  await worker.ready(inherited ? `serving on ${sockets.map(s => s.name).join(', ')}` : `serving on port ${address.port}`);
})();
