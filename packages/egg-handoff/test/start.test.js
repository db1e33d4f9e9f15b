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

test('SIGTERM while Egg boots: handoff and the workers exit 0 without finishing the boot, no READY=1', { timeout: 60000 }, async t => {
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
    // Both workers have their SIGTERM handler ("booting" is logged right after it is installed)
    // and boot Egg, which takes 0.5-2 s here. (Node's own SIGTERM handler, there from the start,
    // only resets the terminal and dies by the signal.)
    await h.waitUntil('2 workers booting', () => (out.match(/\] booting /g) || []).length === 2, 20000, 5);
    const t0 = Date.now();
    p.kill('SIGTERM');
    const res = await exited;
    const ms = Date.now() - t0;
    const early = (out.match(/SIGTERM while booting: exiting/g) || []).length;
    t.diagnostic(`handoff ${JSON.stringify(res)} ${ms} ms after SIGTERM; ${early} of 2 workers were still booting`);
    assert.deepEqual(res, { code: 0, signal: null }, out);
    // JavaScript sees the signal at the next turn of the event loop: Egg's loader runs synchronous
    // stretches (requiring every file), which take seconds on a loaded machine: bounded by those,
    // not by the ready timeout (60 s) or the drain timeout (10 s).
    assert.ok(ms < 30000, `${ms} ms`);
    assert.equal(early, 2, `both workers got SIGTERM while booting:\n${out}`);
    assert.doesNotMatch(out, /worker ready/, 'no worker reported READY=1');
  } finally {
    p.kill('SIGKILL');
    sb.cleanup();
  }
});
