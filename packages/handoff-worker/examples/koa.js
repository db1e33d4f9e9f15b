#!/usr/bin/env node
'use strict';

// Koa: serve app.callback() with http.createServer (not app.listen(), which binds a port).

const http = require('node:http');
const Koa = require('koa');
const worker = require('@handoff/worker');
const { identity, slowMs, sleep } = require('./common');

const app = new Koa();
app.use(async ctx => {
  if (ctx.path === '/slow') await sleep(slowMs(ctx.query));
  else if (ctx.path !== '/') return;
  ctx.body = identity('koa');
});

const server = http.createServer(app.callback());
worker.onShutdown(() => worker.drain(server));

(async () => {
  await worker.listen(server);
  await worker.ready('serving koa');
})();
