'use strict';

// The example's small protocol modules on their own (no handoff needed).

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const net = require('node:net');
const path = require('node:path');
const { test } = require('node:test');
const { EXAMPLE } = require('./helpers');
const { listenFds, ListenFdsError } = require(path.join(EXAMPLE, 'lib', 'listen-fds'));
const { SdNotify, SdNotifyError } = require(path.join(EXAMPLE, 'lib', 'sd-notify'));

test('listenFds: nothing passed, nothing returned', () => {
  assert.deepEqual(listenFds({ env: {} }), []);
});

test('listenFds: rejects sockets meant for another pid and malformed variables, and unsets them', () => {
  const env = { LISTEN_FDS: '1', LISTEN_PID: '1', LISTEN_FDNAMES: 'http' };
  assert.throws(() => listenFds({ env, pid: 4242 }), e => e instanceof ListenFdsError && /LISTEN_PID=1 but this process is 4242/.test(e.message));
  assert.deepEqual(env, {}, 'LISTEN_* removed from the environment');
  assert.throws(() => listenFds({ env: { LISTEN_FDS: 'x', LISTEN_PID: '7' }, pid: 7 }), /not a number/);
  assert.throws(() => listenFds({ env: { LISTEN_FDS: '1' }, pid: 7 }), /LISTEN_PID/);
  assert.throws(() => listenFds({ env: { LISTEN_FDS: '2', LISTEN_PID: '7', LISTEN_FDNAMES: 'a' }, pid: 7 }), /2 sockets/);
});

test('listenFds: finds a listening socket at fd 3 with its name', async () => {
  const srv = net.createServer();
  await new Promise(resolve => srv.listen(0, '127.0.0.1', resolve));
  try {
    const child = `
      process.env.LISTEN_PID = String(process.pid);
      const { listenFds } = require(${JSON.stringify(path.join(EXAMPLE, 'lib', 'listen-fds'))});
      console.log(JSON.stringify({ fds: listenFds(), left: Object.keys(process.env).filter(k => k.startsWith('LISTEN_')) }));`;
    const r = spawnSync(process.execPath, [ '-e', child ], {
      env: { ...process.env, LISTEN_FDS: '1', LISTEN_FDNAMES: 'web' },
      // The listening socket's handle becomes the child's fd 3, as handoff would pass it.
      stdio: [ 'ignore', 'pipe', 'pipe', srv._handle ],
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { fds: [ { fd: 3, name: 'web' } ], left: [] });
  } finally {
    srv.close();
  }
});

test('SdNotify: a no-op without NOTIFY_SOCKET, a clear error without systemd-notify', async () => {
  const env = { NOTIFY_SOCKET: '@x' };
  const n = SdNotify.fromEnv(env);
  assert.equal(env.NOTIFY_SOCKET, undefined, 'NOTIFY_SOCKET removed from the environment');
  assert.equal(n.socket, '@x');
  assert.equal(await new SdNotify(undefined).ready('up'), false);
  await assert.rejects(new SdNotify('/nonexistent.sock', { command: 'no-such-systemd-notify' }).ready(),
    e => e instanceof SdNotifyError && /not found/.test(e.message));
  await assert.rejects(new SdNotify('/nonexistent.sock').send({ extra: [ 'bad line\nREADY=1' ] }), /KEY=VALUE/);
});
