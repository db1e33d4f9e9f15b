#!/usr/bin/env node
'use strict';

// node:https: the TLS handshake happens in the worker; handoff passes the plain TCP socket.
//   handoff run --listen 127.0.0.1:8443 -- node examples/https.js
// TLS_KEY / TLS_CERT: PEM files (default: the test certificate in examples/certs).

const fs = require('node:fs');
const https = require('node:https');
const path = require('node:path');
const worker = require('@handoff/worker');
const { plainHandler } = require('./common');

const server = https.createServer({
  key: fs.readFileSync(process.env.TLS_KEY || path.join(__dirname, 'certs', 'key.pem')),
  cert: fs.readFileSync(process.env.TLS_CERT || path.join(__dirname, 'certs', 'cert.pem')),
}, plainHandler('https'));
worker.onShutdown(() => worker.drain(server));

(async () => {
  await worker.listen(server);
  await worker.ready('serving https');
})();
