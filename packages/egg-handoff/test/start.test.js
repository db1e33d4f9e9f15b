'use strict';

// egg-handoff-start on its own: usage, a wrong app dir, and SIGTERM while Egg still boots (behind
// the real handoff, with the example app).

const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test } = require('node:test');
const h = require('../../../tests/egg/helpers');

// The installed copy (the example's node_modules, as npm put it there), which finds its
// @handoff/worker dependency as an app's would.
const BIN = path.join(h.EXAMPLE, 'node_modules', 'egg-handoff', 'bin', 'egg-handoff-start.js');

test('egg-handoff-start --help, and usage errors exit 64', () => {
  const help = spawnSync(process.execPath, [ BIN, '--help' ], { encoding: 'utf8' });
  assert.equal(help.status, 0);
  assert.match(help.stdout, /usage: egg-handoff-start \[APP_DIR\]/);
  const bad = spawnSync(process.execPath, [ BIN, 'a', 'b' ], { encoding: 'utf8' });
  assert.equal(bad.status, 64);
  assert.match(bad.stderr, /usage/);
});

test('egg-handoff-start on a directory that is no app: exit 1, saying what to pass', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'egg-noapp-'));
  try {
    const r = spawnSync(process.execPath, [ BIN, dir ], { encoding: 'utf8', env: { ...process.env, PORT: '0' } });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /no package\.json in .*: pass the app directory/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('SIGTERM while Egg boots: the workers end at once, handoff exits 0, no READY=1', { timeout: 60000 }, async t => {
  const sb = h.makeSandbox('early-term');
  const dir = sb.dir;
  const control = path.join(dir, 'c.sock');
  const env = { ...process.env, EGG_RUN_DIR: path.join(dir, 'run'), EGG_LOG_DIR: path.join(dir, 'logs'), EGG_SCHEDULE_INTERVAL: 'off' };
  delete env.NOTIFY_SOCKET;
  const p = spawn(h.HANDOFF, [ 'run', '--listen', '127.0.0.1:0', '--workers', '2', '--control', control,
    '--runtime-dir', path.join(dir, 'rt'), '--', path.join(sb.app, 'node_modules', '.bin', 'egg-handoff-start'), sb.app ],
  { env, stdio: [ 'ignore', 'pipe', 'pipe' ] });
  let out = '';
  p.stdout.on('data', d => { out += d; });
  p.stderr.on('data', d => { out += d; });
  const exited = new Promise(resolve => p.on('close', (code, signal) => resolve({ code, signal })));
  try {
    // Both workers are in Egg's boot ("booting" is logged just before egg.start()), which takes
    // 0.5-2 s here, longer on a loaded machine.
    await h.waitUntil('2 workers booting', () => (out.match(/\] booting /g) || []).length === 2, 20000, 5);
    const t0 = Date.now();
    p.kill('SIGTERM');
    const res = await exited;
    const ms = Date.now() - t0;
    const ended = (out.match(/worker drained and (was killed by SIGTERM|exited with status 0)/g) || []).length;
    t.diagnostic(`handoff ${JSON.stringify(res)} ${ms} ms after SIGTERM; ${ended} of 2 workers ended by the signal`);
    assert.deepEqual(res, { code: 0, signal: null }, out);
    assert.equal(ended, 2, `both workers ended by the drain signal:\n${out}`);
    // Not Egg's boot time, nor handoff's 10 s drain timeout (which would SIGKILL, with an ALERT).
    assert.doesNotMatch(out, /ALERT|SIGKILL/, 'no drain-timeout kill');
    assert.ok(ms < 5000, `${ms} ms`);
    assert.doesNotMatch(out, /worker ready/, 'no worker reported READY=1');
  } finally {
    p.kill('SIGKILL');
    sb.cleanup();
  }
});
