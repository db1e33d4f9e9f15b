#!/usr/bin/env node
'use strict';

// Express: its app is a request handler; serve it with http.createServer (not app.listen(),
// which binds a port).

const http = require('node:http');
const express = require('express');
const worker = require('@handoff/worker');
const { identity, slowMs, sleep } = require('./common');

const app = express();
app.get('/', (req, res) => res.json(identity('express')));
app.get('/slow', async (req, res) => {
  await sleep(slowMs(req.query));
  res.json(identity('express'));
});

const server = http.createServer(app);
worker.onShutdown(() => worker.drain(server));

(async () => {
  await worker.listen(server);
  await worker.ready('serving express');
})();
