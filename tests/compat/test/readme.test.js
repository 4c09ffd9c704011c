'use strict';
// DOC-1: README.md's file table lists every test file and helper, and names nothing that is gone.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const DIR = path.resolve(__dirname, '..');

/** The backquoted paths in the first column of the "## Files" table (globs allowed: `*`). */
function listed() {
  const text = fs.readFileSync(path.join(DIR, 'README.md'), 'utf8');
  const section = text.split(/^## Files$/m)[1];
  assert.ok(section, 'README.md has a "## Files" section');
  const entries = [];
  for (const line of section.split('\n')) {
    const m = /^\| ([^|]+) \|/.exec(line);
    if (!m) continue;
    for (const [, p] of m[1].matchAll(/`([^`]+)`/g)) entries.push(p);
  }
  return entries;
}

function matcher(entry) {
  const re = entry.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*');
  return new RegExp(`^${re}$`);
}

test('DOC-1 every test/*.test.js and lib/*.js is listed in README.md, and every listed file exists', () => {
  const entries = listed();
  assert.ok(entries.length > 10, `entries read from the table: ${JSON.stringify(entries)}`);
  const files = [
    ...fs.readdirSync(path.join(DIR, 'test')).filter((f) => f.endsWith('.test.js')).map((f) => `test/${f}`),
    ...fs.readdirSync(path.join(DIR, 'lib')).filter((f) => f.endsWith('.js')).map((f) => `lib/${f}`),
  ];
  const patterns = entries.map((e) => [e, matcher(e)]);
  const unlisted = files.filter((f) => !patterns.some(([, re]) => re.test(f)));
  assert.deepEqual(unlisted, [], 'files missing from the table in tests/compat/README.md');
  const stale = patterns.filter(([, re]) => !files.some((f) => re.test(f))).map(([e]) => e);
  assert.deepEqual(stale, [], 'table entries that name no file');
});
