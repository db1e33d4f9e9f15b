'use strict';

// Each example (http, https, http2, Express, Koa, Fastify) behind the real handoff binary: three
// rollovers under continuous load with no failed request, and a slow request that a rollover
// lets finish.

const assert = require('node:assert/strict');
const path = require('node:path');
const { test } = require('node:test');
const h = require('./support/handoff');

const EXAMPLES = path.join(__dirname, '..', 'examples');

const cases = [
  { name: 'http', proto: 'http' },
  { name: 'https', proto: 'https' },
  { name: 'http2', proto: 'h2' },
  { name: 'express', proto: 'http' },
  { name: 'koa', proto: 'http' },
  { name: 'fastify', proto: 'http' },
];

const nodeMajor = Number(process.versions.node.split('.')[0]);

for (const { name, proto } of cases) {
  // Fastify 5 (the devDependency) needs Node 20; the package itself needs 18.
  const skip = name === 'fastify' && nodeMajor < 20 ? `fastify 5 needs Node >= 20, this is ${process.version}` : false;
  test(`${name}: 3 rollovers under load (${proto}), 0 failed requests; a slow request finishes`, { timeout: 120000, skip }, async t => {
    const hf = await h.startHandoff({ command: [ process.execPath, path.join(EXAMPLES, `${name}.js`) ], label: name });
    let load;
    try {
      const first = await h.get(hf.port, '/', { proto });
      assert.equal(first.status, 200, JSON.stringify(first.body));
      assert.equal(first.body.framework, name);
      let generation = Number(first.body.generation);
      assert.equal(generation, 1);

      load = h.startLoad(hf.port, { proto, keepAlive: 3, fresh: 2 });
      await h.sleep(500);
      const slowMs = 2500;
      const slow = h.get(hf.port, `/slow?ms=${slowMs}`, { proto, timeoutMs: 30000 });
      await h.sleep(300); // it has reached a worker of generation 1
      const times = [];
      for (let i = 1; i <= 3; i++) {
        const r = await hf.reload();
        assert.equal(r.code, 0, `rollover ${i}: reload exited ${r.code}\n${r.stderr}\n${hf.tail()}`);
        times.push(r.ms);
        await h.waitUntil(`generation ${generation + 1} to answer`, async () => {
          const res = await h.get(hf.port, '/', { proto });
          return Number(res.body.generation) === generation + 1;
        }, 10000);
        generation++;
        await h.sleep(400);
      }
      const s = await slow;
      assert.equal(s.status, 200, 'the slow request in flight during the rollover was answered');
      assert.equal(s.body.generation, '1', 'by the old generation that took it');
      await h.sleep(500);
      const stats = await load.stop();
      load = null;
      t.diagnostic(`${name}: sent ${stats.sent}, ok ${stats.ok}, failed ${stats.failed}, h2 retried ${stats.retried}, ` +
        `keep-alive reuses ${stats.reused}; per generation ${JSON.stringify(stats.byGeneration)}; reloads ${times.join(' ')} ms`);
      assert.equal(stats.failed, 0, `failed requests:\n${stats.errors.join('\n')}\n${hf.tail()}`);
      assert.ok(stats.ok > 100, `too little load to mean anything: ${stats.ok}`);
      if (proto !== 'h2') assert.ok(stats.reused > 30, `keep-alive connections were hardly reused (${stats.reused})`);
      for (let g = 1; g <= 4; g++) assert.ok(stats.byGeneration[g] > 0, `generation ${g} never answered the load`);
      assert.deepEqual([ ...new Set(stats.lastGeneration) ], [ '4' ], 'every client ends on the last generation');
    } finally {
      if (load) await load.stop();
      const exit = await hf.stop();
      assert.deepEqual(exit, { code: 0, signal: null }, 'handoff drained every worker and exited 0');
    }
  });
}
