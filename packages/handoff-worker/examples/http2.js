#!/usr/bin/env node
'use strict';

// node:http2 over TLS (HTTP/1.1 clients too, allowHTTP1). Draining sends each session a GOAWAY
// and lets its open streams finish.
//   handoff run --listen 127.0.0.1:8443 -- node examples/http2.js

const fs = require('node:fs');
const http2 = require('node:http2');
const path = require('node:path');
const worker = require('@handoff/worker');
const { plainHandler } = require('./common');

const server = http2.createSecureServer({
  key: fs.readFileSync(process.env.TLS_KEY || path.join(__dirname, 'certs', 'key.pem')),
  cert: fs.readFileSync(process.env.TLS_CERT || path.join(__dirname, 'certs', 'cert.pem')),
  allowHTTP1: true,
}, plainHandler('http2'));
worker.onShutdown(() => worker.drain(server));

(async () => {
  await worker.listen(server);
  await worker.ready('serving h2');
})();
