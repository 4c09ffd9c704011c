'use strict';
// Headless Chromium (Debian's package) driven by playwright-core, with a fresh profile.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');

const EXECUTABLE = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** A browser context with its own profile directory; `close()` removes it. */
async function launch({ viewport = { width: 1400, height: 860 } } = {}) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'herald-console-chromium-'));
  // launchPersistentContext passes --user-data-dir=<profile> to Chromium.
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: EXECUTABLE,
    headless: true,
    args: ARGS,
    viewport,
    deviceScaleFactor: 1,
  });
  const errors = [];
  context.on('weberror', (e) => errors.push(String(e.error())));
  return {
    context,
    errors,
    async page() {
      const p = await context.newPage();
      p.on('console', (m) => {
        if (m.type() === 'error') errors.push(m.text());
      });
      return p;
    },
    async close() {
      await context.close();
      fs.rmSync(profile, { recursive: true, force: true });
    },
  };
}

module.exports = { launch };
