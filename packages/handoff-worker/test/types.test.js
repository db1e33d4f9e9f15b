'use strict';

// index.d.ts against a TypeScript program that uses the API the way the examples do (and two
// misuses that must not compile). Resolves '@handoff/worker' by the package's own name and
// "exports", as a user's project would.

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');
const { test } = require('node:test');

test('index.d.ts: strict tsc accepts the usage sample and rejects the misuses', () => {
  const tsc = require.resolve('typescript/bin/tsc');
  const r = spawnSync(process.execPath, [ tsc, '-p', path.join(__dirname, 'types', 'tsconfig.json') ], {
    cwd: path.join(__dirname, '..'), encoding: 'utf8',
  });
  assert.equal(r.status, 0, `tsc:\n${r.stdout}${r.stderr}`);
});
