#!/usr/bin/env node
// Fails when gen/ differs from what `npm run gen` (buf generate, then the descriptor set) produces now.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const out = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-gen-'));
try {
  execFileSync(path.join(root, 'node_modules/.bin/buf'), ['generate', '-o', out], { cwd: root, stdio: 'inherit' });
  execFileSync(process.execPath, [path.join(root, 'scripts/gen-descriptors.js'), path.join(out, 'gen')], { cwd: root, stdio: 'inherit' });
  execFileSync('diff', ['-r', path.join(out, 'gen'), path.join(root, 'gen')], { stdio: 'inherit' });
  console.log('gen/ matches proto/');
} catch (err) {
  console.error('gen/ is out of date with proto/: run `npm run gen` and commit the result');
  process.exit(1);
} finally {
  fs.rmSync(out, { recursive: true, force: true });
}
