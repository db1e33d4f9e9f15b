'use strict';

// Shared pieces of the Egg-behind-handoff tests: a private copy of the example app (or any app
// dir with egg-handoff installed), the real handoff binary on a free loopback port, plain HTTP
// clients, and a load generator.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const REPO = path.resolve(__dirname, '..', '..');
const EXAMPLE = path.join(REPO, 'examples', 'egg-app');
const HANDOFF = process.env.HANDOFF_BIN || path.join(REPO, 'target', 'debug', 'handoff');

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

function checkPrerequisites(app = EXAMPLE) {
  assert.ok(fs.existsSync(HANDOFF),
    `handoff binary not found at ${HANDOFF}: run \`cargo build\` first, or point HANDOFF_BIN at it`);
  assert.ok(fs.existsSync(path.join(app, 'node_modules', 'egg')),
    `Egg is not installed: run \`npm ci --prefix ${path.relative(process.cwd(), app) || app}\``);
}

/**
 * A temp dir holding a copy of an app (default the example; node_modules symlinked) and handoff's
 * files.
 */
function makeSandbox(label, { from = EXAMPLE } = {}) {
  checkPrerequisites(from);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `egg-${label}-`));
  const app = path.join(dir, 'app');
  fs.cpSync(from, app, {
    recursive: true,
    filter: src => {
      const rel = path.relative(from, src);
      return !/^(node_modules|logs|run)(\/|$)/.test(rel);
    },
  });
  fs.symlinkSync(path.join(from, 'node_modules'), path.join(app, 'node_modules'), 'dir');
  return {
    dir,
    app,
    pkgFile: path.join(app, 'package.json'),
    setVersion(version) {
      const pkg = JSON.parse(fs.readFileSync(this.pkgFile, 'utf8'));
      pkg.version = version;
      // Replace by rename, as a package manager or deploy tool would.
      const tmp = `${this.pkgFile}.tmp`;
      fs.writeFileSync(tmp, JSON.stringify(pkg, null, 2) + '\n');
      fs.renameSync(tmp, this.pkgFile);
    },
    cleanup() {
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts `handoff run` on the sandbox's app (its node_modules/.bin/egg-handoff-start, the command
 * an app's handoff config names) and waits until handoff status shows the whole first generation
 * ready: the first 200 on the port only proves that one worker listens, and a rollover asked for
 * while the others still boot would race them. Returns { port, control, proc, logFile, output(),
 * stop() }.
 */
async function startHandoff(sandbox, { workers = 2, env = {}, args = [], drainTimeout = '30s' } = {}) {
  const port = await freePort();
  const runtimeDir = path.join(sandbox.dir, 'rt');
  const control = path.join(sandbox.dir, 'control.sock');
  const logFile = path.join(sandbox.dir, 'handoff.log');
  const out = fs.openSync(logFile, 'a');
  const childEnv = {
    ...process.env,
    EGG_RUN_DIR: path.join(sandbox.dir, 'egg-run'),
    EGG_LOG_DIR: path.join(sandbox.dir, 'egg-logs'),
    EGG_SCHEDULE_INTERVAL: 'off',
    ...env,
  };
  for (const k of [ 'HANDOFF_CONTROL', 'NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES' ]) delete childEnv[k];
  const argv = [
    'run',
    '--listen', `127.0.0.1:${port}`,
    '--workers', String(workers),
    '--ready', 'notify',
    '--ready-timeout', '60s',
    '--drain-timeout', drainTimeout,
    '--control', control,
    '--runtime-dir', runtimeDir,
    '--version-file', sandbox.pkgFile,
    ...args,
    '--', path.join(sandbox.app, 'node_modules', '.bin', 'egg-handoff-start'), sandbox.app,
  ];
  const proc = spawn(HANDOFF, argv, { env: childEnv, stdio: [ 'ignore', out, out ] });
  fs.closeSync(out);
  let exited = null;
  const exitPromise = new Promise(resolve => proc.once('exit', (code, signal) => {
    exited = { code, signal };
    resolve(exited);
  }));

  const h = {
    port,
    control,
    proc,
    logFile,
    output() {
      try {
        return fs.readFileSync(logFile, 'utf8');
      } catch (_) {
        return '';
      }
    },
    /** The last lines of handoff's output (without Egg's INFO chatter), for assertion messages. */
    tail(lines = 40) {
      const noise = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO /;
      return this.output().split('\n').filter(l => !noise.test(l)).slice(-lines).join('\n');
    },
    async stop() {
      if (exited) return exited;
      proc.kill('SIGTERM');
      let timer;
      const res = await Promise.race([
        exitPromise,
        new Promise(resolve => { timer = setTimeout(resolve, 45000, null); }),
      ]);
      clearTimeout(timer);
      if (res) return res;
      proc.kill('SIGKILL');
      await exitPromise;
      throw new Error(`handoff did not exit within 45 s of SIGTERM\n${this.tail()}`);
    },
    get exited() {
      return exited;
    },
  };

  const deadline = Date.now() + 60000;
  for (;;) {
    if (exited) {
      throw new Error(`handoff exited early (${JSON.stringify(exited)}):\n${h.tail()}`);
    }
    const st = await status(h);
    let json = null;
    try {
      json = st.code === 0 ? JSON.parse(st.stdout) : null;
    } catch (_) {
      // not answering yet
    }
    if (generationReady(json)) {
      const r = await get(port, '/').catch(err => ({ status: err.message }));
      if (r.status === 200) break;
      throw new Error(`generation ready, but GET / answered ${r.status}:\n${h.tail()}`);
    }
    if (Date.now() > deadline) {
      await h.stop().catch(() => {});
      throw new Error(`generation 1 not ready within 60 s (status: ${st.stdout || st.stderr}):\n${h.tail()}`);
    }
    await sleep(100);
  }
  return h;
}

/**
 * The whole current generation is ready (`handoff status --json`): every wanted worker of it
 * reports `ready` and no rollover is in progress.
 */
function generationReady(st) {
  if (!st || !st.current_generation || st.rolling_over_to !== null) return false;
  const cur = st.workers.filter(w => w.generation === st.current_generation);
  return st.ready === st.workers_wanted && cur.length === st.workers_wanted && cur.every(w => w.state === 'ready');
}

/** Runs `handoff reload`; resolves to { code, signal, stdout, stderr, ms }. */
function reload(h, extra = []) {
  return runCli([ 'reload', '--control', h.control, ...extra ]);
}

function status(h) {
  return runCli([ 'status', '--control', h.control, '--json' ]);
}

function runCli(argv, timeoutMs = 120000) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const env = { ...process.env };
    delete env.HANDOFF_CONTROL;
    const p = spawn(HANDOFF, argv, { env, stdio: [ 'ignore', 'pipe', 'pipe' ] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', d => { stdout += d; });
    p.stderr.on('data', d => { stderr += d; });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.once('error', reject);
    p.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

/** One GET; resolves to { status, headers, body (parsed JSON or text) }. */
function get(port, urlPath, { agent = false, timeoutMs = 15000 } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent }, res => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', d => { data += d; });
      res.on('end', () => {
        let body = data;
        try {
          body = JSON.parse(data);
        } catch (_) {
          // not JSON
        }
        resolve({ status: res.statusCode, headers: res.headers, body });
      });
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`GET ${urlPath}: no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/** Polls GET / on fresh connections until it answers `version`; returns that answer. */
async function waitForVersion(port, version, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await get(port, '/');
      if (last.status === 200 && last.body.version === version) return last.body;
    } catch (err) {
      last = err.message;
    }
    if (Date.now() > deadline) {
      throw new Error(`still no answer with version ${version} after ${timeoutMs} ms; last: ${JSON.stringify(last && last.body || last)}`);
    }
    await sleep(50);
  }
}

/**
 * Continuous load on GET /: `keepAlive` clients each reuse one connection, `fresh` clients open a
 * new connection per request. Each client pauses `pauseMs` between requests. stop() resolves to
 * { sent, ok, failed, errors, byVersion, lastVersions, keepAliveReused }.
 */
function startLoad(port, { keepAlive = 3, fresh = 2, pauseMs = 5 } = {}) {
  const stats = { sent: 0, ok: 0, failed: 0, errors: [], byVersion: {}, lastVersions: [], reusedSockets: 0 };
  let running = true;
  const clients = [];
  const agents = [];

  const one = (agent, index) => new Promise(resolve => {
    stats.sent++;
    const req = http.get({ host: '127.0.0.1', port, path: '/', agent }, res => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', d => { data += d; });
      res.on('end', () => {
        let body = null;
        try {
          body = JSON.parse(data);
        } catch (_) {
          // counted below
        }
        if (res.statusCode === 200 && body && body.version) {
          stats.ok++;
          stats.byVersion[body.version] = (stats.byVersion[body.version] || 0) + 1;
          stats.lastVersions[index] = body.version;
        } else {
          fail(`HTTP ${res.statusCode}: ${data.slice(0, 200)}`);
        }
        resolve();
      });
      res.on('error', err => {
        fail(`response error: ${err.code || ''} ${err.message}`);
        resolve();
      });
    });
    req.on('socket', () => { if (req.reusedSocket) stats.reusedSockets++; });
    req.setTimeout(15000, () => req.destroy(new Error('no answer in 15 s')));
    req.on('error', err => {
      fail(`${agent ? 'keep-alive' : 'fresh'} client ${index}: ${err.code || ''} ${err.message}`);
      resolve();
    });
  });

  function fail(msg) {
    stats.failed++;
    if (stats.errors.length < 20) stats.errors.push(`${new Date().toISOString()} ${msg}`);
  }

  for (let i = 0; i < keepAlive + fresh; i++) {
    const agent = i < keepAlive ? new http.Agent({ keepAlive: true, maxSockets: 1 }) : false;
    if (agent) agents.push(agent);
    clients.push((async () => {
      while (running) {
        await one(agent, i);
        await sleep(pauseMs);
      }
    })());
  }
  return {
    stats,
    async stop() {
      running = false;
      await Promise.all(clients);
      agents.forEach(a => a.destroy());
      return stats;
    },
  };
}

/** Parses the app's EGG_SCHEDULE_LOG lines. */
function readScheduleLog(file) {
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (_) {
    return [];
  }
  return text.split('\n').filter(Boolean).map(line => {
    const m = /^schedule (start|end) (\S+) (.*)$/.exec(line);
    assert.ok(m, `unexpected schedule log line: ${line}`);
    const fields = Object.fromEntries(m[3].split(' ').map(kv => kv.split('=')));
    return { event: m[1], id: m[2], pid: Number(fields.pid), generation: fields.generation, worker: fields.worker, version: fields.version, at: Number(fields.at) };
  });
}

function pidAlive(pid) {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return err.code === 'EPERM';
  }
  // A zombie still "exists" for kill(0): look at its state too.
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch (_) {
    return false;
  }
}

async function waitUntil(what, fn, timeoutMs, stepMs = 50) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(stepMs);
  }
}

module.exports = {
  HANDOFF,
  EXAMPLE,
  sleep,
  makeSandbox,
  startHandoff,
  reload,
  status,
  generationReady,
  get,
  waitForVersion,
  startLoad,
  readScheduleLog,
  pidAlive,
  waitUntil,
};
