'use strict';

// Rollovers of an Egg app under continuous load, through the real handoff binary.

const assert = require('node:assert/strict');
const { test } = require('node:test');
const h = require('./helpers');

async function rolloversUnderLoad(t, { label, count, args = [] }) {
  const sb = h.makeSandbox(label);
  sb.setVersion('1.0.0');
  const hf = await h.startHandoff(sb, { workers: 2, args });
  let load;
  try {
    const first = await h.get(hf.port, '/');
    assert.equal(first.status, 200);
    assert.equal(first.body.version, '1.0.0');
    let generation = Number(first.body.generation);
    assert.ok(Number.isInteger(generation), `HANDOFF_GENERATION not passed: ${JSON.stringify(first.body)}`);

    load = h.startLoad(hf.port, { keepAlive: 3, fresh: 2 });
    await h.sleep(1000);
    const reloadTimes = [];
    for (let i = 1; i <= count; i++) {
      const version = `1.0.${i}`;
      sb.setVersion(version);
      const r = await h.reload(hf);
      assert.equal(r.code, 0,
        `rollover ${i}: handoff reload exited ${r.code} (${r.signal || ''})\nstderr: ${r.stderr}\n${hf.tail()}`);
      reloadTimes.push(r.ms);
      // The new generation serves; old workers may take a moment to stop accepting.
      const body = await h.waitForVersion(hf.port, version, 10000);
      assert.ok(Number(body.generation) > generation,
        `rollover ${i}: generation went from ${generation} to ${body.generation}`);
      generation = Number(body.generation);
      await h.sleep(500);
    }
    await h.sleep(1500);
    const stats = await load.stop();
    load = null;
    t.diagnostic(`${count} rollovers; requests: sent ${stats.sent}, ok ${stats.ok}, failed ${stats.failed}; ` +
      `keep-alive reuses ${stats.reusedSockets}; per version ${JSON.stringify(stats.byVersion)}`);
    t.diagnostic(`reload durations (ms): ${reloadTimes.join(' ')}`);
    assert.equal(stats.failed, 0, `failed requests:\n${stats.errors.join('\n')}\n${hf.tail()}`);
    assert.ok(stats.ok > 50 * count, `too little load to mean anything: ${stats.ok} requests`);
    assert.ok(stats.reusedSockets > 10 * count, `keep-alive connections were hardly reused (${stats.reusedSockets})`);
    const final = `1.0.${count}`;
    for (const [ i, v ] of stats.lastVersions.entries()) {
      assert.equal(v, final, `load client ${i} still saw ${v} at the end`);
    }
    // Every version answered the load while it was current.
    for (let i = 0; i <= count; i++) {
      assert.ok(stats.byVersion[`1.0.${i}`] > 0, `version 1.0.${i} never answered the load`);
    }
  } finally {
    if (load) await load.stop();
    const exit = await hf.stop();
    t.diagnostic(`handoff exit: ${JSON.stringify(exit)}`);
    sb.cleanup();
  }
}

// With the default stability window (min_uptime 5 s): each rollover takes the Egg boot plus 5 s.
test('10 rollovers under load: no failed request, answers switch to each new version', { timeout: 300000 },
  t => rolloversUnderLoad(t, { label: 'rollover', count: 10 }));

// --rolling applies the window per slot (2 per rollover here): 1 s keeps the test within its
// time on a busy host; the window's own behaviour is tested in tests/integration/stability.rs.
test('5 rolling rollovers (--rolling, one worker at a time) under load: no failed request', { timeout: 200000 },
  t => rolloversUnderLoad(t, { label: 'rolling', count: 5, args: [ '--rolling', '--min-uptime', '1s' ] }));
