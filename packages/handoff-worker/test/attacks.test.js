'use strict';

// Trying to break a @handoff/worker worker behind the real handoff: a wrapper that forks (wrong
// LISTEN_PID), no systemd-notify, SIGTERM before ready, clients that hold connections open past
// the drain, a second SIGTERM while draining. Figures go to docs/reliability.md.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { test } = require('node:test');
const h = require('./support/handoff');

const EXAMPLE = path.join(__dirname, '..', 'examples', 'http.js');

/** `handoff run` that is expected to fail its first generation: resolves { code, output, ms }. */
function runToExit(command, { env = {}, timeoutMs = 60000 } = {}) {
  return new Promise(resolve => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-attack-'));
    const t0 = Date.now();
    const childEnv = { ...process.env, ...env };
    for (const k of [ 'HANDOFF_CONTROL', 'NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES' ]) delete childEnv[k];
    const p = spawn(h.HANDOFF, [ 'run', '--listen', '127.0.0.1:0', '--workers', '1', '--ready-timeout', '20s',
      '--control', path.join(dir, 'c.sock'), '--runtime-dir', path.join(dir, 'rt'), '--', ...command ],
    { env: childEnv, stdio: [ 'ignore', 'pipe', 'pipe' ] });
    let output = '';
    p.stdout.on('data', d => { output += d; });
    p.stderr.on('data', d => { output += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', code => {
      clearTimeout(timer);
      fs.rmSync(dir, { recursive: true, force: true });
      resolve({ code, output, ms: Date.now() - t0 });
    });
  });
}

test('a wrapper that forks node (LISTEN_PID is the shell\'s): the worker refuses the sockets, says why, handoff fails the generation', { timeout: 60000 }, async t => {
  // `; exit $?` keeps sh from exec'ing node: node is sh's child and LISTEN_PID names sh.
  const r = await runToExit([ '/bin/sh', '-c', `"${process.execPath}" "${EXAMPLE}"; exit $?` ]);
  t.diagnostic(`handoff exit ${r.code} after ${r.ms} ms`);
  assert.equal(r.code, 1, r.output);
  assert.match(r.output, /LISTEN_PID=\d+ but this process is \d+: the sockets were meant for another process/);
  assert.match(r.output, /exec node/);
});

test('NOTIFY_SOCKET set but no systemd-notify on PATH: the worker exits with the reason, not a silent ready timeout', { timeout: 60000 }, async t => {
  const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-nopath-'));
  try {
    const r = await runToExit([ process.execPath, EXAMPLE ], { env: { PATH: empty } });
    t.diagnostic(`handoff exit ${r.code} after ${r.ms} ms (ready timeout 20 s)`);
    assert.equal(r.code, 1, r.output);
    assert.match(r.output, /systemd-notify not found/);
    assert.ok(r.ms < 15000, `took ${r.ms} ms: it waited for the ready timeout instead of failing at once`);
  } finally {
    fs.rmSync(empty, { recursive: true, force: true });
  }
});

test('SIGTERM before ready: the booting workers exit 0 without finishing their 10 s boot, never report READY=1', { timeout: 60000 }, async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-early-'));
  const events = path.join(dir, 'events');
  fs.writeFileSync(events, '');
  const control = path.join(dir, 'c.sock');
  const env = { ...process.env, EVENTS_FILE: events, BOOT_MS: '10000' };
  delete env.NOTIFY_SOCKET;
  const p = spawn(h.HANDOFF, [ 'run', '--listen', '127.0.0.1:0', '--workers', '2', '--control', control,
    '--runtime-dir', path.join(dir, 'rt'), '--', process.execPath, path.join(__dirname, 'fixtures', 'slow-boot.js') ],
  { env, stdio: [ 'ignore', 'pipe', 'pipe' ] });
  let output = '';
  p.stdout.on('data', d => { output += d; });
  p.stderr.on('data', d => { output += d; });
  const exited = new Promise(resolve => p.on('close', (code, signal) => resolve({ code, signal })));
  try {
    await h.waitUntil('both workers booting', () => fs.readFileSync(events, 'utf8').split('\n').filter(l => l.startsWith('booting')).length === 2, 20000);
    const t0 = Date.now();
    p.kill('SIGTERM');
    const res = await exited;
    const ms = Date.now() - t0;
    const lines = fs.readFileSync(events, 'utf8').trim().split('\n');
    t.diagnostic(`handoff exit ${JSON.stringify(res)} ${ms} ms after SIGTERM; worker events: ${lines.join(', ')}`);
    assert.deepEqual(res, { code: 0, signal: null }, output);
    assert.ok(ms < 8000, `${ms} ms: the workers waited for their boot (10 s) instead of exiting`);
    assert.equal(lines.filter(l => l.startsWith('sigterm-listening=false')).length, 2, lines.join('\n'));
    assert.equal(lines.filter(l => l.startsWith('ready')).length, 0, 'no READY=1 after SIGTERM');
  } finally {
    p.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('clients holding connections open past the drain (idle keep-alive, silent, half-sent request): the old worker still exits within the idle grace', { timeout: 60000 }, async t => {
  const hf = await h.startHandoff({ command: [ process.execPath, EXAMPLE ], label: 'holders', workers: 1, drainTimeout: '20s' });
  const socks = [];
  try {
    const oldPid = (await h.get(hf.port, '/')).body.pid;
    const open = () => {
      const s = net.connect(hf.port, '127.0.0.1');
      s.on('error', () => {});
      s.resume(); // read what comes, so the end of the stream (and 'close') is seen
      s.closedAt = null;
      s.on('close', () => { s.closedAt = Date.now(); });
      socks.push(s);
      return s;
    };
    // 1: a keep-alive client that got its answer and then just sits there, forever.
    const ka = open();
    ka.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    // 2: connects and never sends a byte.
    open();
    // 3: sends half a request line and stops.
    open().write('GET /sl');
    await h.sleep(300);
    const t0 = Date.now();
    const r = await hf.reload();
    assert.equal(r.code, 0, r.stderr);
    await h.waitUntil(`old worker ${oldPid} to exit`, () => !h.pidAlive(oldPid), 15000);
    const exitMs = Date.now() - t0;
    t.diagnostic(`old worker exited ${exitMs} ms after the reload began (idle grace 1000 ms, drain timeout 20 s); ` +
      `held connections closed after ${socks.map(s => s.closedAt ? s.closedAt - t0 : 'never').join(', ')} ms`);
    assert.ok(socks.every(s => s.closedAt !== null), 'every held connection was closed');
    assert.ok(exitMs < 8000, `${exitMs} ms`);
    assert.doesNotMatch(hf.output(), /ALERT|killed/i, 'no drain timeout kill');
  } finally {
    socks.forEach(s => s.destroy());
    await hf.stop();
  }
});

test('a second SIGTERM while draining changes nothing: the request in flight completes, the worker exits 0 once', { timeout: 60000 }, async t => {
  const hf = await h.startHandoff({ command: [ process.execPath, EXAMPLE ], label: 'double', workers: 1 });
  try {
    const pid = (await h.get(hf.port, '/')).body.pid;
    const slow = h.get(hf.port, '/slow?ms=1500');
    await h.sleep(300);
    process.kill(pid, 'SIGTERM');
    await h.sleep(100);
    process.kill(pid, 'SIGTERM');
    process.kill(pid, 'SIGINT');
    const res = await slow;
    assert.equal(res.status, 200);
    assert.equal(res.headers.connection, 'close');
    await h.waitUntil('the worker to exit', () => !h.pidAlive(pid), 10000);
    // handoff restarts a worker that exited outside a rollover; look at what the first one said.
    const out = hf.output();
    const mine = out.split('\n').filter(l => l.includes(`pid=${pid}`));
    t.diagnostic(mine.filter(l => /draining|exit/.test(l)).join(' | '));
    assert.equal(mine.filter(l => /SIGTERM: draining$/.test(l)).length, 1, mine.join('\n'));
    assert.equal(mine.filter(l => /already draining/.test(l)).length, 2, mine.join('\n'));
    assert.match(out, new RegExp(`pid=${pid}.*exited with status 0|exited with status 0.*pid=${pid}`));
  } finally {
    await hf.stop();
  }
});
