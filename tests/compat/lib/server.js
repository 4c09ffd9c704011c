'use strict';
// Starts and stops Herald server processes for the tests.
//
// Binary: $HERALD_BIN, else <repo>/target/release/herald (repo = two levels up
// from tests/compat). The server is started with HERALD_HOST=127.0.0.1,
// HERALD_PORT=0 and optionally `--config <file.toml>`; it prints
// `Herald listening on 127.0.0.1:<port>` on stdout, from which the port is read.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const COMPAT_DIR = path.resolve(__dirname, '..');
const REPO_DIR = path.resolve(COMPAT_DIR, '..', '..');
const TMP_DIR = path.join(COMPAT_DIR, '.tmp');

const DEFAULT_APP = Object.freeze({ id: 'app-id', key: 'app-key', secret: 'app-secret' });

const DEFAULT_LIMITS = Object.freeze({
  max_connections: 0,
  max_channel_name_length: 200,
  max_event_name_length: 200,
  max_event_data_bytes: 10240,
  max_event_channels: 100,
  max_batch_size: 10,
  client_event_rate: 10,
  max_presence_members: 100,
  max_presence_user_info_bytes: 1024,
  max_presence_user_id_length: 128,
  max_watchlist_size: 100,
  cache_ttl: 1800,
});

// Settings of the embedded default app, written out in full for configured apps
// so that a configured app behaves like the default one unless a test says otherwise.
const DEFAULT_APP_SETTINGS = Object.freeze({
  enabled: true,
  enable_client_messages: true,
  enable_subscription_count: true,
  enable_watchlist_events: true,
  enable_user_authentication: false,
  user_authentication_timeout: 30,
  emit_subscription_error: false,
});

function heraldBin() {
  if (process.env.HERALD_BIN) return process.env.HERALD_BIN;
  try {
    const ready = fs.readFileSync('/tmp/herald-ready', 'utf8').trim();
    if (ready && fs.existsSync(ready) && fs.statSync(ready).isFile()) return ready;
  } catch (_) {
    /* no marker file: use the default path */
  }
  return path.join(REPO_DIR, 'target', 'release', 'herald');
}

function tomlValue(v) {
  if (typeof v === 'string') return JSON.stringify(v); // TOML basic strings accept JSON escapes
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  throw new Error(`unsupported TOML value ${JSON.stringify(v)}`);
}

/**
 * Renders a config object to TOML.
 * { server: {...}, apps: [{ id, key, secret, ...settings, limits: {...} }] }
 * Apps get DEFAULT_APP_SETTINGS and DEFAULT_LIMITS unless overridden.
 */
function renderToml(config) {
  const lines = [];
  const server = { host: '127.0.0.1', port: 0, ...(config.server || {}) };
  // config.env (extra environment for the process) is not part of the file
  lines.push('[server]');
  for (const [k, v] of Object.entries(server)) lines.push(`${k} = ${tomlValue(v)}`);
  for (const app of config.apps || [DEFAULT_APP]) {
    const { limits = {}, ...rest } = app;
    const full = { ...DEFAULT_APP_SETTINGS, ...rest };
    lines.push('', '[[apps]]');
    for (const [k, v] of Object.entries(full)) lines.push(`${k} = ${tomlValue(v)}`);
    lines.push('[apps.limits]');
    for (const [k, v] of Object.entries({ ...DEFAULT_LIMITS, ...limits })) {
      lines.push(`${k} = ${tomlValue(v)}`);
    }
  }
  return lines.join('\n') + '\n';
}

let configCounter = 0;

/**
 * Starts a server. `config` (optional) is an object for renderToml; its `env`
 * member adds environment variables for the process (e.g. HERALD_LOG).
 * Resolves to { port, host, httpBase, wsBase, apps, output(), stop() }.
 */
async function startServer(config) {
  const bin = heraldBin();
  if (!fs.existsSync(bin)) {
    throw new Error(`Herald binary not found at ${bin} (set HERALD_BIN or build target/release/herald)`);
  }
  const args = [];
  let configFile = null;
  if (config) {
    fs.mkdirSync(TMP_DIR, { recursive: true });
    const file = path.join(TMP_DIR, `config-${process.pid}-${++configCounter}.toml`);
    fs.writeFileSync(file, renderToml(config));
    args.push('--config', file);
    configFile = file;
  }
  // Pass a clean environment: Herald refuses unknown HERALD_* variables.
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('HERALD_')) env[k] = v;
  env.HERALD_HOST = '127.0.0.1';
  env.HERALD_PORT = '0';
  env.HERALD_METRICS_PORT = env.HERALD_METRICS_PORT || '0';

  const proc = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 1 << 20) stderr = stderr.slice(-(1 << 19));
  });

  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      fail(new Error('timed out after 10 s waiting for "Herald listening on" line'));
    }, 10000);
    function fail(err) {
      clearTimeout(timer);
      try {
        proc.kill('SIGKILL');
      } catch (_) {}
      reject(new Error(`${err.message}\n--- herald ${bin} ${args.join(' ')}\n--- stdout:\n${stdout}\n--- stderr:\n${stderr}`));
    }
    proc.stdout.on('data', (d) => {
      stdout += d;
      if (stdout.length > 1 << 20) stdout = stdout.slice(-(1 << 19));
      const m = /Herald listening on ([0-9.]+):(\d+)/.exec(stdout);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[2]));
      }
    });
    proc.on('error', (e) => fail(e));
    proc.on('exit', (code, sig) => fail(new Error(`herald exited early (code ${code}, signal ${sig})`)));
  });
  proc.removeAllListeners('exit');
  proc.on('exit', () => {});

  const apps = config && config.apps ? config.apps : [DEFAULT_APP];
  return {
    port,
    host: '127.0.0.1',
    httpBase: `http://127.0.0.1:${port}`,
    wsBase: `ws://127.0.0.1:${port}`,
    apps,
    pathPrefix: (config && config.server && config.server.path_prefix) || '',
    /** Everything the process printed so far (stdout + stderr). */
    output: () => stdout + stderr,
    proc,
    configFile,
    stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      if (configFile) fs.rmSync(configFile, { force: true });
    },
  };
}

module.exports = {
  startServer,
  renderToml,
  heraldBin,
  DEFAULT_APP,
  DEFAULT_LIMITS,
  DEFAULT_APP_SETTINGS,
  REPO_DIR,
  TMP_DIR,
};
