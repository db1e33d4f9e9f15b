'use strict';

// The example app consumes the handoff packages through npm, not copies.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { test } = require('node:test');
const { EXAMPLE } = require('./helpers');

const REPO = path.resolve(__dirname, '..', '..');

test('examples/egg-app keeps only app code; @handoff/worker and egg-handoff are installed packages', () => {
  for (const gone of [ 'handoff-entry.js', 'lib' ]) {
    assert.equal(fs.existsSync(path.join(EXAMPLE, gone)), false, `${gone} is back in the example: use the packages`);
  }
  const pkg = JSON.parse(fs.readFileSync(path.join(EXAMPLE, 'package.json'), 'utf8'));
  assert.equal(pkg.dependencies['egg-handoff'], 'file:../../packages/egg-handoff');
  assert.equal(pkg.dependencies['@handoff/worker'], 'file:../../packages/handoff-worker');
  for (const [ name, dir ] of [ [ 'egg-handoff', 'egg-handoff' ], [ '@handoff/worker', 'handoff-worker' ] ]) {
    const installed = path.join(EXAMPLE, 'node_modules', name);
    // install-links (.npmrc): a copy of what `npm pack` publishes, as from a registry; not a symlink.
    assert.equal(fs.lstatSync(installed).isSymbolicLink(), false, `${name} is a symlink: install with install-links`);
    const src = JSON.parse(fs.readFileSync(path.join(REPO, 'packages', dir, 'package.json'), 'utf8'));
    const got = JSON.parse(fs.readFileSync(path.join(installed, 'package.json'), 'utf8'));
    assert.equal(got.version, src.version);
    assert.equal(fs.existsSync(path.join(installed, 'test')), false, `${name}: tests are not part of the package`);
  }
  const plugin = require(path.join(EXAMPLE, 'config', 'plugin.js'));
  assert.deepEqual(plugin.handoff, { enable: true, package: 'egg-handoff' });
  assert.ok(fs.existsSync(path.join(EXAMPLE, 'node_modules', '.bin', 'egg-handoff-start')));
});
