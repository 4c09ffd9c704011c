'use strict';
// Starts and stops Herald for the console tests.
//
// Binary: $HERALD_BIN, else <repo>/target/release/herald. Started with HERALD_HOST=127.0.0.1,
// HERALD_PORT=0 (and HERALD_METRICS_PORT=0, so that several servers can run side by side) plus
// HERALD_CONSOLE_TOKEN when a token is given; the port comes from the line
// `Herald listening on 127.0.0.1:<port>` on stdout.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const { once } = require('node:events');

const REPO_DIR = path.resolve(__dirname, '..', '..', '..');
const DEFAULT_APP = Object.freeze({ id: 'app-id', key: 'app-key', secret: 'app-secret' });
const START_TIMEOUT_MS = 15000;

function heraldBin() {
  return process.env.HERALD_BIN || path.join(REPO_DIR, 'target', 'release', 'herald');
}

/**
 * Starts a server; `token` is the console token (none: the console is off); `env` adds
 * HERALD_* settings.
 */
async function startServer({ token, env: extra = {} } = {}) {
  const bin = heraldBin();
  if (!fs.existsSync(bin)) {
    throw new Error(`Herald binary not found at ${bin} (set HERALD_BIN or run cargo build --release -p herald)`);
  }
  // A clean environment: Herald refuses unknown HERALD_* variables.
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('HERALD_')) env[k] = v;
  env.HERALD_HOST = '127.0.0.1';
  env.HERALD_PORT = '0';
  env.HERALD_METRICS_PORT = '0';
  if (token) env.HERALD_CONSOLE_TOKEN = token;
  Object.assign(env, extra);

  const proc = spawn(bin, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    stderr = (stderr + d).slice(-65536);
  });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`Herald did not start in time:\n${stdout}\n${stderr}`)), START_TIMEOUT_MS);
    proc.stdout.on('data', (d) => {
      stdout += d;
      const m = /Herald listening on [^\s]*:(\d+)/.exec(stdout);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`Herald exited with ${code} before listening:\n${stdout}\n${stderr}`));
    });
  });
  const base = `http://127.0.0.1:${port}`;
  return {
    port,
    base,
    token,
    app: DEFAULT_APP,
    output: () => stdout + stderr,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = once(proc, 'exit');
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10000);
      await exited;
      clearTimeout(timer);
    },
  };
}

module.exports = { startServer, DEFAULT_APP, REPO_DIR };
