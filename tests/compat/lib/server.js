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
const { after } = require('node:test');

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
  const watch = watchExit(proc, () => `${bin} ${args.join(' ')}`.trim(), () => stdout + stderr);

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
    /** Allows an exit with this code (for a test that makes the server exit on purpose). */
    expectExit: watch.expectExit,
    stop() {
      watch.stop();
      if (configFile) fs.rmSync(configFile, { force: true });
    },
  };
}

// ------------------------------------------------------------ unexpected exits
//
// A Herald process that ends without a test asking for it (a crash, a panic, killed by a
// signal nobody sent, an exit on its own) fails the test file that started it, also when
// it happens after the file's last assertion. Asked for are: stop() (SIGKILL), a signal
// sent through a helper's kill()/terminate() (SIGTERM and SIGINT must end in exit code 0;
// SIGHUP must not end the process at all), and expectExit(code). Exits during start-up
// are not watched: the start itself fails then.
//
// Reported by checkExits(): in a root `after` hook registered below, in harness()'s after
// hook (lib/index.js), and, for exits seen only later, by a process 'exit' fallback that
// prints them and sets process.exitCode = 1 (node --test then fails the file).

const GRACEFUL = new Set(['SIGTERM', 'SIGINT']);
const watched = new Set();
const unexpectedExits = [];

/**
 * Watches a started Herald process. label() and output() describe it in the report.
 * Returns { stop() (SIGKILL), kill(sig), expectExit(code), exited (promise) }.
 */
function watchExit(proc, label, output) {
  const asked = { signals: new Set(), codes: new Set() };
  const w = { proc, asked, exited: null };
  w.exited = new Promise((resolve) => {
    const onExit = (code, signal) => {
      watched.delete(w);
      const why = exitProblem(asked, code, signal);
      if (why) {
        const tail = String(output()).replace(/\x1b\[[0-9;]*m/g, '').slice(-4000);
        unexpectedExits.push({ text: `herald ${label()} (pid ${proc.pid}) ${why}\n--- its last output:\n${tail}`, reported: false });
      }
      resolve({ code, signal });
    };
    if (proc.exitCode !== null || proc.signalCode !== null) onExit(proc.exitCode, proc.signalCode);
    else {
      watched.add(w);
      proc.on('exit', onExit);
    }
  });
  const running = () => proc.exitCode === null && proc.signalCode === null;
  return {
    exited: w.exited,
    kill(sig = 'SIGTERM') {
      asked.signals.add(sig);
      proc.kill(sig);
    },
    stop() {
      if (!running()) return;
      asked.signals.add('SIGKILL');
      killWhenNoSignalPending(proc, running);
    },
    expectExit(code) {
      asked.codes.add(code);
    },
  };
}

/**
 * SIGKILL, but not over a crash in progress: a SIGKILL would replace a pending crash
 * signal (SIGABRT, SIGSEGV) or cut a core dump short, and the process would seem to have
 * died of our SIGKILL. Waits (up to 2 s) until /proc shows neither, then kills.
 */
function killWhenNoSignalPending(proc, running, deadline = Date.now() + 2000) {
  if (!running()) return;
  if (Date.now() < deadline && dyingOfSignal(proc.pid)) {
    setTimeout(() => killWhenNoSignalPending(proc, running, deadline), 10);
    return;
  }
  proc.kill('SIGKILL');
}

/** Whether /proc shows a signal not yet handled or a core dump under way (false when unknown). */
function dyingOfSignal(pid) {
  let status;
  try {
    status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch (_) {
    return false; // no /proc (not Linux) or already reaped: kill at once
  }
  const pending = /^ShdPnd:\s*([0-9a-f]+)$/m.exec(status);
  return (!!pending && /[1-9a-f]/.test(pending[1])) || /^CoreDumping:\s*1$/m.test(status);
}

/** Why an exit was not asked for, or null when it was. */
function exitProblem(asked, code, signal) {
  const sent = [...asked.signals].join(', ') || 'none';
  if (signal !== null) {
    // A graceful signal is handled by Herald: dying of it is a failure too.
    if (asked.signals.has(signal) && !GRACEFUL.has(signal) && signal !== 'SIGHUP') return null;
    return `was killed by ${signal} (signals sent by the tests: ${sent})`;
  }
  if (asked.codes.has(code)) return null;
  if (code === 0 && [...asked.signals].some((s) => GRACEFUL.has(s))) return null;
  if (code === 0) return `exited with code 0 although no test asked it to stop (signals sent by the tests: ${sent})`;
  return `exited with code ${code} (signals sent by the tests: ${sent})`;
}

/**
 * Waits (up to `ms`) for the processes already asked to stop, then throws if any watched
 * Herald process exited unexpectedly since the last report.
 */
async function checkExits(ms = 10000) {
  const dying = [...watched].filter((w) => [...w.asked.signals].some((sig) => sig !== 'SIGHUP'));
  if (dying.length > 0) {
    let timer;
    await Promise.race([
      Promise.all(dying.map((w) => w.exited)),
      new Promise((resolve) => {
        timer = setTimeout(resolve, ms);
      }),
    ]);
    clearTimeout(timer);
  }
  const fresh = unexpectedExits.filter((e) => !e.reported);
  for (const e of fresh) e.reported = true;
  if (fresh.length > 0) {
    throw new Error(`${fresh.length} Herald process(es) exited unexpectedly:\n${fresh.map((e) => e.text).join('\n\n')}`);
  }
}

// Registered while the test file loads this module, so on the file's root test: runs
// after every test of the file.
after(() => checkExits());

process.on('exit', () => {
  const fresh = unexpectedExits.filter((e) => !e.reported);
  if (fresh.length === 0) return;
  for (const e of fresh) {
    e.reported = true;
    process.stderr.write(`\nFAIL: Herald process exited unexpectedly (after the file's checks ran):\n${e.text}\n`);
  }
  process.exitCode = 1;
});

module.exports = {
  startServer,
  watchExit,
  checkExits,
  renderToml,
  heraldBin,
  DEFAULT_APP,
  DEFAULT_LIMITS,
  DEFAULT_APP_SETTINGS,
  REPO_DIR,
  TMP_DIR,
};
