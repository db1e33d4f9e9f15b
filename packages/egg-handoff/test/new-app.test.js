'use strict';

// Done means: an Egg app written from scratch (here, by hand: `npm init egg` needs the network
// and a template download) is put behind handoff by `npm install` of the two packed tarballs and
// configuration only, no copied files, and passes what the example passes: rollovers under load
// with no failed request, a slow request that a rollover lets finish, and a broken release that
// is rolled back.

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test, before, after } = require('node:test');
const h = require('../../../tests/egg/helpers');

const PACKAGES = path.resolve(__dirname, '..', '..');
const EGG_VERSION = '3.34.0';
let root;
let appDir;

const files = {
  'package.json': JSON.stringify({
    name: 'fresh-egg-app',
    version: '1.0.0',
    private: true,
    egg: { framework: 'egg' },
  }, null, 2),
  // Config only: the plugin (two lines), where Egg may write, the cookie keys.
  'config/plugin.js': `
exports.handoff = { enable: true, package: 'egg-handoff' };
exports.static = false;
`,
  'config/config.default.js': `
module.exports = appInfo => ({
  keys: appInfo.name + '_test_key',
  rundir: process.env.EGG_RUN_DIR,
  logger: { dir: process.env.EGG_LOG_DIR + '/worker-' + (process.env.HANDOFF_WORKER || 'x') },
});
`,
  'app/router.js': `
module.exports = app => {
  const who = () => ({ version: app.config.pkg.version, pid: process.pid,
    generation: process.env.HANDOFF_GENERATION, worker: process.env.HANDOFF_WORKER });
  app.router.get('/', async ctx => { ctx.body = who(); });
  app.router.get('/slow', async ctx => {
    const ms = Number(ctx.query.ms || 2000);
    await new Promise(resolve => setTimeout(resolve, ms));
    ctx.body = { ...who(), sleptMs: ms };
  });
};
`,
};

before(async () => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'egg-fresh-'));
  const tarballs = path.join(root, 'tarballs');
  fs.mkdirSync(tarballs);
  const packed = [ 'handoff-worker', 'egg-handoff' ].map(dir => {
    const out = execFileSync('npm', [ 'pack', '--pack-destination', tarballs, '--json' ],
      { cwd: path.join(PACKAGES, dir), encoding: 'utf8' });
    return path.join(tarballs, JSON.parse(out)[0].filename);
  });
  appDir = path.join(root, 'app');
  for (const [ file, text ] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(appDir, file)), { recursive: true });
    fs.writeFileSync(path.join(appDir, file), text.trimStart());
  }
  const t0 = Date.now();
  execFileSync('npm', [ 'install', '--no-audit', '--no-fund', '--prefer-offline', `egg@${EGG_VERSION}`, ...packed ],
    { cwd: appDir, stdio: [ 'ignore', 'ignore', 'inherit' ], timeout: 300000 });
  process.stderr.write(`# npm install egg@${EGG_VERSION} + 2 tarballs: ${Date.now() - t0} ms\n`);
});

after(() => {
  if (root) fs.rmSync(root, { recursive: true, force: true });
});

test('the fresh app depends on the tarballs and holds no handoff code of its own', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(appDir, 'package.json'), 'utf8'));
  assert.match(pkg.dependencies['egg-handoff'], /egg-handoff-0\.1\.0\.tgz$/);
  assert.match(pkg.dependencies['@handoff/worker'], /handoff-worker-0\.1\.0\.tgz$/);
  const own = execFileSync('find', [ '.', '-path', './node_modules', '-prune', '-o', '-type', 'f', '-print' ],
    { cwd: appDir, encoding: 'utf8' }).split('\n').filter(Boolean).sort();
  assert.deepEqual(own, [ './app/router.js', './config/config.default.js', './config/plugin.js',
    './package-lock.json', './package.json' ]);
});

test('fresh app: 5 rollovers under load, 0 failed requests', { timeout: 400000 }, async t => {
  const sb = h.makeSandbox('fresh-rollover', { from: appDir });
  sb.setVersion('1.0.0');
  const hf = await h.startHandoff(sb, { workers: 2 });
  let load;
  try {
    load = h.startLoad(hf.port, { keepAlive: 3, fresh: 2 });
    await h.sleep(800);
    const times = [];
    for (let i = 1; i <= 5; i++) {
      sb.setVersion(`1.0.${i}`);
      const r = await h.reload(hf);
      assert.equal(r.code, 0, `rollover ${i}: reload exited ${r.code}\n${r.stderr}\n${hf.tail()}`);
      times.push(r.ms);
      await h.waitForVersion(hf.port, `1.0.${i}`, 10000);
      await h.sleep(400);
    }
    await h.sleep(1000);
    const stats = await load.stop();
    load = null;
    t.diagnostic(`fresh app, 5 rollovers: sent ${stats.sent}, ok ${stats.ok}, failed ${stats.failed}, ` +
      `keep-alive reuses ${stats.reusedSockets}; per version ${JSON.stringify(stats.byVersion)}; reloads ${times.join(' ')} ms`);
    assert.equal(stats.failed, 0, `failed requests:\n${stats.errors.join('\n')}\n${hf.tail()}`);
    assert.ok(stats.ok > 250, `too little load: ${stats.ok}`);
    assert.ok(stats.reusedSockets > 50, `keep-alive hardly reused: ${stats.reusedSockets}`);
    for (let i = 0; i <= 5; i++) assert.ok(stats.byVersion[`1.0.${i}`] > 0, `1.0.${i} never answered`);
  } finally {
    if (load) await load.stop();
    await hf.stop();
    sb.cleanup();
  }
});

test('fresh app: a slow request in flight during a rollover completes with 200 from the old version', { timeout: 200000 }, async () => {
  const sb = h.makeSandbox('fresh-slow', { from: appDir });
  sb.setVersion('2.0.0');
  const hf = await h.startHandoff(sb, { workers: 2 });
  try {
    const slow = h.get(hf.port, '/slow?ms=3000', { timeoutMs: 30000 });
    await h.sleep(400);
    sb.setVersion('2.0.1');
    const r = await h.reload(hf);
    assert.equal(r.code, 0, `${r.stderr}\n${hf.tail()}`);
    await h.waitForVersion(hf.port, '2.0.1');
    const res = await slow;
    assert.equal(res.status, 200);
    assert.equal(res.body.version, '2.0.0', 'the old generation answered the request it took');
    // Only a draining worker sets it: the request was still in flight when the drain began.
    assert.equal(res.headers.connection, 'close');
  } finally {
    await hf.stop();
    sb.cleanup();
  }
});

test('fresh app: a release that fails to boot is rolled back, the old one keeps serving', { timeout: 200000 }, async t => {
  const sb = h.makeSandbox('fresh-rollback', { from: appDir });
  sb.setVersion('3.0.0');
  const hf = await h.startHandoff(sb, { workers: 2 });
  try {
    const router = path.join(sb.app, 'app', 'router.js');
    const good = fs.readFileSync(router, 'utf8');
    fs.writeFileSync(router, `${good}\nthis is not javascript(\n`);
    sb.setVersion('3.0.1');
    const r = await h.reload(hf);
    t.diagnostic(`broken release: reload exit ${r.code} after ${r.ms} ms: ${r.stderr.trim()}`);
    assert.equal(r.code, 1, `${r.stderr}\n${hf.tail()}`);
    for (let i = 0; i < 10; i++) assert.equal((await h.get(hf.port, '/')).body.version, '3.0.0');
    assert.match(hf.output(), /SyntaxError/);
    fs.writeFileSync(router, good);
    sb.setVersion('3.0.2');
    assert.equal((await h.reload(hf)).code, 0);
    await h.waitForVersion(hf.port, '3.0.2');
  } finally {
    await hf.stop();
    sb.cleanup();
  }
});
