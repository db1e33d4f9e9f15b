'use strict';

// A release whose Egg app cannot boot is rolled back; the running one keeps serving.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { test } = require('node:test');
const h = require('./helpers');

test('a release that fails to boot is rolled back: reload exits 1, the old version keeps answering', { timeout: 120000 }, async t => {
  const sb = h.makeSandbox('rollback');
  sb.setVersion('4.0.0');
  const hf = await h.startHandoff(sb, { workers: 2 });
  try {
    const before = await h.get(hf.port, '/');
    assert.equal(before.body.version, '4.0.0');

    const controller = path.join(sb.app, 'app', 'controller', 'home.js');
    const good = fs.readFileSync(controller, 'utf8');
    fs.writeFileSync(controller, good.replace('async index() {', 'async index() {{ syntax error here'));
    sb.setVersion('4.0.1');
    const r = await h.reload(hf);
    t.diagnostic(`failed reload: exit ${r.code} after ${r.ms} ms; stderr: ${r.stderr.trim()}`);
    assert.equal(r.code, 1, `reload of a broken release exited ${r.code}\nstderr: ${r.stderr}\n${hf.tail()}`);
    assert.ok(r.stderr.trim().length > 0, 'reload says why it rolled back');

    // The old generation still answers, on new connections too.
    for (let i = 0; i < 20; i++) {
      const res = await h.get(hf.port, '/');
      assert.equal(res.status, 200);
      assert.equal(res.body.version, '4.0.0');
      assert.equal(res.body.generation, before.body.generation);
    }
    assert.match(hf.output(), /SyntaxError/, 'the worker\'s boot error reached handoff\'s output');

    // Fixing the release makes the next rollover succeed.
    fs.writeFileSync(controller, good);
    sb.setVersion('4.0.2');
    const r2 = await h.reload(hf);
    assert.equal(r2.code, 0, `reload of the fixed release exited ${r2.code}\nstderr: ${r2.stderr}\n${hf.tail()}`);
    await h.waitForVersion(hf.port, '4.0.2');
  } finally {
    await hf.stop();
    sb.cleanup();
  }
});
