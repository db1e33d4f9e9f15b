#!/usr/bin/env node
'use strict';

// Fastify: let it build its routes (ready()), then serve its own server on handoff's sockets
// instead of fastify.listen(), which binds a port. On SIGTERM drain first, then fastify.close()
// for its onClose hooks (by then no connection is left for it to cut).

const Fastify = require('fastify');
const worker = require('@handoff/worker');
const { identity, slowMs, sleep } = require('./common');

const app = Fastify({ logger: false });
app.get('/', async () => identity('fastify'));
app.get('/slow', async req => {
  await sleep(slowMs(req.query));
  return identity('fastify');
});

worker.onShutdown(async () => {
  await worker.drain(app.server);
  await app.close();
});

(async () => {
  await app.ready();
  await worker.listen(app.server);
  await worker.ready('serving fastify');
})();
