'use strict';

// What every example answers, so one test drives them all:
//   GET /          {"framework": ..., "pid": ..., "generation": ..., "worker": ...}
//   GET /slow?ms=N the same after N ms (a request in flight during a rollover)

const MAX_SLOW_MS = 60000;

function identity(framework) {
  return {
    framework,
    pid: process.pid,
    generation: process.env.HANDOFF_GENERATION || null,
    worker: process.env.HANDOFF_WORKER || null,
  };
}

function slowMs(query) {
  const ms = Number(query.get ? query.get('ms') : query.ms);
  return Number.isFinite(ms) && ms >= 0 ? Math.min(ms, MAX_SLOW_MS) : 2000;
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/** A plain (req, res) handler for the http, https and http2 examples. */
function plainHandler(framework) {
  return async (req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/slow') await sleep(slowMs(url.searchParams));
    else if (url.pathname !== '/') {
      res.statusCode = 404;
      return res.end();
    }
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(identity(framework)));
  };
}

module.exports = { identity, slowMs, sleep, plainHandler };
