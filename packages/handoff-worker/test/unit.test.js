'use strict';

// The package's parts without handoff: the environment it reads, the datagrams it sends (to a
// real unix datagram socket), and the drain against real HTTP clients on loopback.

const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { test } = require('node:test');
const hw = require('..');
const { sleep, waitUntil } = require('./support/handoff');

const PKG = path.join(__dirname, '..');

/** A unix datagram socket recording what arrives on it (python3: Node cannot bind one). */
async function notifyReceiver() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'hw-notify-'));
  const sock = path.join(dir, 'notify.sock');
  const script = `
import socket, sys, json
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("bound", flush=True)
while True:
    data = s.recv(65536)  # fds passed with BARRIER=1 are dropped (closed), releasing the sender
    print(json.dumps(data.decode(errors="replace")), flush=True)
`;
  const p = spawn('python3', [ '-c', script, sock ], { stdio: [ 'ignore', 'pipe', 'inherit' ] });
  const lines = [];
  let buf = '';
  p.stdout.on('data', d => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  await waitUntil('the receiver to bind', () => lines[0] === 'bound', 10000, 20);
  return {
    socket: sock,
    messages: () => lines.slice(1).map(l => JSON.parse(l)),
    close() {
      p.kill();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

test('LISTEN_*: read once, removed from the environment, checked against the pid', () => {
  const env = { LISTEN_FDS: '1', LISTEN_PID: '1', LISTEN_FDNAMES: 'http', KEEP: 'x' };
  const w = hw.createWorker({ env, pid: 4242 });
  assert.deepEqual(env, { KEEP: 'x' }, 'LISTEN_* removed even when they are wrong');
  assert.equal(w.inherited, false);
  return assert.rejects(w.listen(http.createServer()), e => e instanceof hw.ListenFdsError &&
    /LISTEN_PID=1 but this process is 4242/.test(e.message) && /exec node/.test(e.message));
});

test('LISTEN_*: malformed values are errors that say what is wrong', async () => {
  const cases = [
    [ { LISTEN_FDS: 'x', LISTEN_PID: '7' }, /LISTEN_FDS="x" is not a number/ ],
    [ { LISTEN_FDS: '1' }, /LISTEN_PID=undefined is not a pid/ ],
    [ { LISTEN_FDS: '1', LISTEN_PID: 'abc' }, /is not a pid/ ],
    [ { LISTEN_FDS: '2', LISTEN_PID: '7', LISTEN_FDNAMES: 'a' }, /1 names for LISTEN_FDS=2/ ],
  ];
  for (const [ env, re ] of cases) {
    const w = hw.createWorker({ env, pid: 7 });
    await assert.rejects(w.listen(http.createServer()), re, JSON.stringify(env));
  }
});

test('no LISTEN_FDS: listens on PORT/HOST (run by hand), or refuses with fallback: false', async () => {
  const w = hw.createWorker({ env: {} });
  const server = http.createServer((req, res) => res.end('by hand'));
  const r = await w.listen(server, { port: 0, host: '127.0.0.1' });
  assert.equal(r.inherited, false);
  assert.equal(r.address.address, '127.0.0.1');
  await assert.rejects(w.listen(http.createServer(), { fallback: false }), /LISTEN_FDS is not set/);
  await w.drain(server);
  assert.equal(server.listening, false);
});

/** Runs `code` in a child that gets `n` listening sockets at fds 3.. as handoff would pass them. */
async function withInheritedSockets(n, env, code) {
  const servers = [];
  for (let i = 0; i < n; i++) {
    const s = net.createServer();
    await new Promise(resolve => s.listen(0, '127.0.0.1', resolve));
    servers.push(s);
  }
  try {
    const child = `process.env.LISTEN_PID = String(process.pid); ${code}`;
    const r = spawnSync(process.execPath, [ '-e', child ], {
      cwd: PKG,
      env: { ...process.env, LISTEN_FDS: String(n), ...env },
      stdio: [ 'ignore', 'pipe', 'pipe', ...servers.map(s => s._handle) ],
      encoding: 'utf8',
      timeout: 20000,
    });
    return { ...r, ports: servers.map(s => s.address().port) };
  } finally {
    servers.forEach(s => s.close());
  }
}

test('listen(server) serves every inherited socket, by name on request; env cleared for children', async () => {
  // The child serves fds 3 and 4 with one server, answers one request on each, reports.
  const code = `
    const http = require('http');
    const w = require('@handoff/worker');
    const { execFileSync } = require('child_process');
    const server = http.createServer((req, res) => res.end(String(req.socket.localPort)));
    (async () => {
      const r = await w.listen(server);
      const other = http.createServer();
      let err = null;
      try { await w.listen(other); } catch (e) { err = e.message; }
      const childEnv = execFileSync(process.execPath, ['-p', 'Object.keys(process.env).filter(k => k.startsWith("LISTEN_")).join()'], { encoding: 'utf8' }).trim();
      const ports = process.argv.slice(1).map(Number);
      const got = [];
      for (const port of JSON.parse(process.env.PORTS)) {
        got.push(await new Promise((resolve, reject) => http.get({ host: '127.0.0.1', port, agent: false }, res => {
          let d = ''; res.on('data', c => { d += c; }); res.on('end', () => resolve(d));
        }).on('error', reject)));
      }
      await w.drain(server);
      console.log(JSON.stringify({ sockets: r.sockets, inherited: r.inherited, got, err, childEnv, listening: server.listening }));
    })().catch(e => { console.error(e); process.exit(1); });`;
  // Ports are only known once bound: pass them through PORTS after the fact.
  const servers = [];
  for (let i = 0; i < 2; i++) {
    const s = net.createServer();
    await new Promise(resolve => s.listen(0, '127.0.0.1', resolve));
    servers.push(s);
  }
  const ports = servers.map(s => s.address().port);
  try {
    const r = spawnSync(process.execPath, [ '-e', `process.env.LISTEN_PID = String(process.pid); ${code}` ], {
      cwd: PKG,
      env: { ...process.env, LISTEN_FDS: '2', LISTEN_FDNAMES: 'web:admin', PORTS: JSON.stringify(ports) },
      stdio: [ 'ignore', 'pipe', 'pipe', ...servers.map(s => s._handle) ],
      encoding: 'utf8',
      timeout: 20000,
    });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.deepEqual(out.sockets, [ { fd: 3, name: 'web' }, { fd: 4, name: 'admin' } ]);
    assert.equal(out.inherited, true);
    assert.deepEqual(out.got, ports.map(String), 'one server answered on both sockets');
    assert.match(out.err, /every inherited socket is taken already/);
    assert.equal(out.childEnv, '', 'a child process sees no LISTEN_* variables');
    assert.equal(out.listening, false);
  } finally {
    servers.forEach(s => s.close());
  }

  // By name: only the named socket; a missing name is an error that lists what there is.
  const byName = await withInheritedSockets(2, { LISTEN_FDNAMES: 'web:admin' }, `
    const w = require('@handoff/worker');
    const http = require('http');
    (async () => {
      const a = await w.listen(http.createServer(), { name: 'admin' });
      let err = null;
      try { await w.listen(http.createServer(), { name: 'metrics' }); } catch (e) { err = e.message; }
      console.log(JSON.stringify({ a: a.sockets, err }));
      process.exit(0);
    })();`);
  assert.equal(byName.status, 0, byName.stderr);
  const o = JSON.parse(byName.stdout);
  assert.deepEqual(o.a, [ { fd: 4, name: 'admin' } ]);
  assert.match(o.err, /no inherited socket named metrics: have fd 3=web, fd 4=admin \(taken\)/);

  // Without LISTEN_FDNAMES the sockets are "unknown" (systemd's default) and all are served.
  const unnamed = await withInheritedSockets(1, {}, `
    const w = require('@handoff/worker');
    w.listen(require('http').createServer()).then(r => { console.log(JSON.stringify(r.sockets)); process.exit(0); });`);
  assert.equal(unnamed.status, 0, unnamed.stderr);
  assert.deepEqual(JSON.parse(unnamed.stdout), [ { fd: 3, name: 'unknown' } ]);
});

test('LISTEN_FDS larger than what was passed: an error naming the fd', async () => {
  const r = await withInheritedSockets(1, { LISTEN_FDS: '3' }, `
    require('@handoff/worker').listen(require('http').createServer()).catch(e => { console.log(e.message); process.exit(3); });`);
  assert.equal(r.status, 3, r.stderr);
  assert.match(r.stdout, /LISTEN_FDS=3 but fd [45] is not (open|a socket)/);
});

test('ready(): READY=1 and a one-line STATUS= reach NOTIFY_SOCKET; removed from the env', async t => {
  const rx = await notifyReceiver();
  t.after(() => rx.close());
  const env = { NOTIFY_SOCKET: rx.socket };
  const w = hw.createWorker({ env });
  assert.equal(env.NOTIFY_SOCKET, undefined);
  assert.equal(await w.ready('serving\nREADY=0 \x1b[2J on fd 3'), true);
  await w.status('draining');
  await w.notify([ 'EXTEND_TIMEOUT_USEC=5000000' ]);
  await waitUntil('3 datagrams', () => rx.messages().filter(m => !m.startsWith('BARRIER')).length >= 3, 20000);
  const msgs = rx.messages().filter(m => !m.startsWith('BARRIER'));
  assert.deepEqual(msgs[0].split('\n').sort(), [ 'READY=1', 'STATUS=serving READY=0  [2J on fd 3' ].sort(),
    'a newline or ESC in the status cannot add an assignment or reach a terminal');
  assert.equal(msgs[1], 'STATUS=draining');
  assert.equal(msgs[2], 'EXTEND_TIMEOUT_USEC=5000000');
  await assert.rejects(w.notify([ 'A=1\nREADY=1' ]), /KEY=VALUE/);
  await assert.rejects(w.notify([ 'A=\x1b[2J' ]), /KEY=VALUE/, 'no ESC in an assignment');
  // Without NOTIFY_SOCKET: nothing to do.
  assert.equal(await hw.createWorker({ env: {} }).ready('x'), false);
});

test('ready() fails loudly when systemd-notify is missing', async () => {
  const w = hw.createWorker({ env: { NOTIFY_SOCKET: '/nonexistent/notify.sock' }, notifyCommand: 'no-such-systemd-notify' });
  await assert.rejects(w.ready('up'), e => e instanceof hw.SdNotifyError &&
    /no-such-systemd-notify not found/.test(e.message) && /--ready notify never sees this worker ready/.test(e.message));
});

test('watchdog: WATCHDOG=1 at half of WATCHDOG_USEC, only for the pid it names', async t => {
  const rx = await notifyReceiver();
  t.after(() => rx.close());
  // Not for us: another pid, or no WATCHDOG_USEC.
  assert.equal(hw.createWorker({ env: { WATCHDOG_USEC: '1000000', WATCHDOG_PID: '1' }, pid: 2 }).startWatchdog().enabled, false);
  assert.equal(hw.createWorker({ env: {} }).startWatchdog().enabled, false);
  assert.throws(() => hw.createWorker({ env: { WATCHDOG_USEC: 'soon' } }).startWatchdog(), hw.WatchdogError);
  const env = { NOTIFY_SOCKET: rx.socket, WATCHDOG_USEC: '600000', WATCHDOG_PID: String(process.pid) };
  const w = hw.createWorker({ env });
  assert.deepEqual(Object.keys(env), [], 'WATCHDOG_* and NOTIFY_SOCKET removed');
  const t0 = Date.now();
  await w.ready('up');
  const handle = w.startWatchdog(); // idempotent: ready() started it already
  assert.equal(handle.intervalMs, 300);
  await sleep(1000);
  w.stopWatchdog();
  const elapsed = Date.now() - t0;
  await sleep(500); // a ping started before stopWatchdog() may still be on its way
  const pings = rx.messages().filter(m => m === 'WATCHDOG=1').length;
  t.diagnostic(`${pings} WATCHDOG=1 pings in ${elapsed} ms at a 300 ms interval`);
  // One at once, then every 300 ms: 4 in the first second. On a loaded machine a tick is skipped
  // while the previous systemd-notify still runs, so 2 or 3; more than 5 would be a wrong interval.
  assert.ok(pings >= 2 && pings <= 5, `${pings} pings`);
  await sleep(700);
  assert.equal(rx.messages().filter(m => m === 'WATCHDOG=1').length, pings, 'no ping after stopWatchdog()');
});

/** An http server listening through a test worker, and a way to send raw requests. */
async function served(handler) {
  const w = hw.createWorker({ env: {}, log: () => {} });
  const server = http.createServer(handler);
  await w.listen(server, { port: 0, host: '127.0.0.1' });
  return { w, server, port: server.address().port };
}

function rawClient(port) {
  const sock = net.connect(port, '127.0.0.1');
  let data = '';
  sock.setEncoding('utf8');
  sock.on('data', d => { data += d; });
  const closed = new Promise(resolve => sock.on('close', resolve));
  sock.on('error', () => {});
  return {
    sock,
    closed,
    get data() {
      return data;
    },
    send: text => sock.write(text),
  };
}

test('drain: in-flight requests finish with Connection: close; idle keep-alive closed after the grace', async () => {
  const { w, server, port } = await served(async (req, res) => {
    if (req.url === '/slow') await sleep(500);
    res.end('done');
  });
  const idle = rawClient(port);
  idle.send('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await waitUntil('the first answer', () => /done$/.test(idle.data), 5000, 10);
  const busy = rawClient(port);
  busy.send('GET /slow HTTP/1.1\r\nHost: x\r\n\r\n');
  await sleep(100);
  const t0 = Date.now();
  const drained = w.drain(server, { idleGraceMs: 300 });
  assert.strictEqual(w.drain(server), drained, 'a second drain() is the same drain');
  assert.equal(server.listening, false, 'stopped accepting at once');
  await busy.closed;
  assert.match(busy.data, /HTTP\/1.1 200 OK/);
  assert.match(busy.data, /Connection: close/i, 'the in-flight answer closes its connection');
  await idle.closed;
  const idleMs = Date.now() - t0;
  assert.ok(idleMs >= 280, `idle keep-alive connection closed after ${idleMs} ms, before the grace`);
  assert.deepEqual(await drained, { forced: 0 });
});

test('drain: a request arriving on a kept-alive connection during drain is answered, with Connection: close', async () => {
  const { w, server, port } = await served((req, res) => res.end('ok'));
  const c = rawClient(port);
  c.send('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
  await waitUntil('the first answer', () => /ok$/.test(c.data), 5000, 10);
  const drained = w.drain(server, { idleGraceMs: 5000 });
  c.send('GET /again HTTP/1.1\r\nHost: x\r\n\r\n');
  await c.closed;
  assert.equal((c.data.match(/HTTP\/1.1 200 OK/g) || []).length, 2, c.data);
  assert.match(c.data.split('HTTP/1.1 200 OK')[2], /Connection: close/i);
  await drained;
});

test('drain: a client that holds a connection without sending is closed after the grace; timeoutMs forces a stuck one', async () => {
  const { w, server, port } = await served(() => { /* never answers */ });
  const silent = rawClient(port); // connects, sends nothing, ever
  const stuck = rawClient(port);
  stuck.send('GET /forever HTTP/1.1\r\nHost: x\r\n\r\n');
  await waitUntil('2 connections', () => w.stats(server).connections === 2, 5000, 10);
  assert.equal(w.stats(server).activeRequests, 1);
  const t0 = Date.now();
  const result = await w.drain(server, { idleGraceMs: 200, timeoutMs: 800 });
  const ms = Date.now() - t0;
  await silent.closed;
  await stuck.closed;
  assert.deepEqual(result, { forced: 1 }, 'only the stuck request had to be cut');
  assert.ok(ms >= 750 && ms < 3000, `drain took ${ms} ms`);
});

test('drain of a server that never listened resolves at once; listen() after drain does not listen', async () => {
  const w = hw.createWorker({ env: {}, log: () => {} });
  const server = http.createServer();
  assert.deepEqual(await w.drain(server), { forced: 0 });
  const r = await w.listen(server, { port: 0 });
  assert.equal(r.draining, true);
  assert.equal(server.listening, false);
  assert.equal(await w.ready('late'), false, 'no READY=1 once draining');
});

test('drain of a plain-text HTTP/2 server (h2c): open streams finish, the session gets GOAWAY, drain resolves', async t => {
  const http2 = require('node:http2');
  const w = hw.createWorker({ env: {}, log: () => {} });
  const server = http2.createServer(async (req, res) => {
    await sleep(Number(new URL(req.url, 'http://x').searchParams.get('ms') || 0));
    res.end('h2c');
  });
  await w.listen(server, { port: 0, host: '127.0.0.1' });
  const session = http2.connect(`http://127.0.0.1:${server.address().port}`);
  session.on('error', () => {});
  t.after(() => { session.destroy(); server.close(); });
  const goaway = new Promise(resolve => session.once('goaway', resolve));
  const request = path => new Promise((resolve, reject) => {
    const s = session.request({ ':path': path });
    let body = '';
    s.setEncoding('utf8');
    s.on('data', d => { body += d; });
    s.on('end', () => resolve(body));
    s.on('error', reject);
    s.end();
  });
  assert.equal(await request('/'), 'h2c');
  const order = [];
  const slow = request('/?ms=600').then(body => { order.push('stream done'); return body; });
  await waitUntil('the stream to reach the server', () => w.stats(server).activeRequests === 1, 10000, 5);
  const drained = w.drain(server, { idleGraceMs: 100 }).then(r => { order.push('drained'); return r; });
  await goaway;
  assert.equal(await slow, 'h2c', 'the stream open at the GOAWAY completes');
  assert.deepEqual(await drained, { forced: 0 });
  assert.deepEqual(order, [ 'stream done', 'drained' ], 'drain waited for the open stream');
  session.destroy();
});

test('ESM: every export can be imported by name', () => {
  const names = Object.keys(hw).sort();
  const r = spawnSync(process.execPath, [ '--input-type=module', '-e',
    `import * as m from '@handoff/worker'; import { ${names.join(', ')} } from '@handoff/worker';
     console.log(JSON.stringify(Object.keys(m).filter(k => k !== 'default' && k !== 'module.exports').sort()));` ],
  { cwd: PKG, encoding: 'utf8', env: { ...process.env, LISTEN_FDS: '' } });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), names);
});
