'use strict';
// Operations test support (OPS-*): a Herald process started with a config file
// and/or HERALD_* variables whose metrics port is known, signals, Prometheus
// scraping, the CLI, self-signed certificates and a pusher-js client in a child
// process (for wss:// with a self-signed certificate).

const fs = require('node:fs');
const path = require('node:path');
const https = require('node:https');
const http = require('node:http');
const { spawn, spawnSync, execFileSync } = require('node:child_process');
const { renderToml, heraldBin, watchExit, DEFAULT_APP, TMP_DIR, COMPAT_DIR } = require('./server');
const { withTimeout, waitFor, pace, DEFAULT_TIMEOUT } = require('./wait');

const COMPAT = COMPAT_DIR || path.resolve(__dirname, '..');

let fileCounter = 0;
/** A fresh path under tests/compat/.tmp (not created). */
function tmpPath(tag, ext = '') {
  fs.mkdirSync(TMP_DIR, { recursive: true });
  return path.join(TMP_DIR, `ops-${tag}-${process.pid}-${Date.now().toString(36)}-${++fileCounter}${ext}`);
}

/** Writes `config` (an object for renderToml, or a TOML string) to `file`. */
function writeConfig(file, config) {
  fs.writeFileSync(file, typeof config === 'string' ? config : renderToml(config));
  return file;
}

/** The process environment without HERALD_* (Herald refuses unknown ones), plus `extra`. */
function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('HERALD_')) env[k] = v;
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined || v === null) delete env[k];
    else env[k] = String(v);
  }
  return env;
}

/** Waits until the Herald binary exists (others rebuild it in place from time to time). */
async function binReady(ms = 60000) {
  return waitFor(() => {
    const b = heraldBin();
    return fs.existsSync(b) && fs.statSync(b).size > 0 ? b : false;
  }, ms, `Herald binary at ${heraldBin()}`);
}

/**
 * Spawns Herald with HERALD_HOST=127.0.0.1, HERALD_PORT=0, HERALD_METRICS_PORT=0,
 * a spool file under .tmp, the given extra environment and optionally a config:
 *
 *   opts.config      object for renderToml or TOML text, written to opts.configFile
 *                    (or a fresh temp path) and passed with --config
 *   opts.configFile  path passed with --config (written first when opts.config is set)
 *   opts.env         extra environment variables (null removes one)
 *   opts.tls         true when the server port speaks TLS (httpBase/wsBase use https/wss)
 *   opts.metrics     false when metrics are disabled (no metrics line is awaited)
 *
 * Resolves once both "Herald metrics on" and "Herald listening on" were printed, to
 * { port, metricsPort, httpBase, metricsBase, wsBase, apps, pathPrefix, proc, pid, exited,
 *   output(), running(), kill(sig), stop(), terminate(ms), configFile }
 * (`pid` is the server's own: for resources(pid) and resourcesBack).
 */
async function startOps(opts = {}) {
  const bin = await binReady();
  const args = [];
  let configFile = opts.configFile || null;
  const ownFiles = [];
  if (opts.config !== undefined) {
    if (!configFile) ownFiles.push((configFile = tmpPath('config', '.toml')));
    writeConfig(configFile, opts.config);
  }
  if (configFile) args.push('--config', configFile);
  const spool = tmpPath('spool', '.spool');
  ownFiles.push(spool);
  const env = cleanEnv({
    HERALD_HOST: '127.0.0.1',
    HERALD_PORT: '0',
    HERALD_METRICS_PORT: '0',
    HERALD_WEBHOOKS_SPOOL_FILE: spool,
    ...(opts.env || {}),
  });
  const proc = spawn(bin, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  const watchers = new Set();
  const notify = () => {
    for (const w of [...watchers]) w();
  };
  proc.stdout.on('data', (d) => {
    stdout += d;
    notify();
  });
  proc.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 1 << 21) stderr = stderr.slice(-(1 << 20));
    notify();
  });
  let exitInfo = null;
  const exited = new Promise((resolve) =>
    proc.on('exit', (code, signal) => {
      exitInfo = { code, signal, at: Date.now() };
      for (const f of ownFiles) fs.rmSync(f, { force: true });
      notify();
      resolve(exitInfo);
    }),
  );
  const wantMetrics = opts.metrics !== false;
  const ports = await withTimeout(
    new Promise((resolve, reject) => {
      const check = () => {
        const l = /Herald listening on ([0-9.]+):(\d+)/.exec(stdout);
        const m = /Herald metrics on ([0-9.]+):(\d+)/.exec(stdout);
        if (l && (m || !wantMetrics)) {
          watchers.delete(check);
          resolve({ port: Number(l[2]), metricsPort: m ? Number(m[2]) : null });
        } else if (exitInfo) {
          watchers.delete(check);
          reject(new Error(`herald exited early ${JSON.stringify(exitInfo)}`));
        }
      };
      watchers.add(check);
      proc.on('error', reject);
      check();
    }),
    10000,
    'the "Herald metrics on" and "Herald listening on" lines',
  ).catch((e) => {
    if (!exitInfo) proc.kill('SIGKILL');
    throw new Error(`${e.message}\n--- herald ${args.join(' ')} env ${JSON.stringify(opts.env || {})}\n--- stdout:\n${stdout}\n--- stderr:\n${stderr}`);
  });
  const watch = watchExit(proc, () => `${args.join(' ')} env ${JSON.stringify(opts.env || {})}`, () => stdout + stderr);
  const scheme = opts.tls ? 'https' : 'http';
  const s = {
    ...ports,
    host: '127.0.0.1',
    httpBase: `${scheme}://127.0.0.1:${ports.port}`,
    wsBase: `${opts.tls ? 'wss' : 'ws'}://127.0.0.1:${ports.port}`,
    metricsBase: ports.metricsPort ? `http://127.0.0.1:${ports.metricsPort}` : null,
    apps: opts.apps || (opts.config && typeof opts.config === 'object' && opts.config.apps) || [DEFAULT_APP],
    pathPrefix: '',
    configFile,
    proc,
    pid: proc.pid,
    exited,
    exitInfo: () => exitInfo,
    output: () => stdout + stderr,
    stderr: () => stderr,
    running: () => proc.exitCode === null && proc.signalCode === null,
    /** Sends `sig`; SIGTERM/SIGINT must then end in exit code 0, SIGHUP must not end it. */
    kill(sig) {
      watch.kill(sig);
    },
    /** Allows an exit with this code (for a test that makes the server exit on purpose). */
    expectExit: watch.expectExit,
    stop() {
      watch.stop();
    },
    /** SIGTERM, then {code, signal, ms} once the process has exited. */
    async terminate(ms = 30000) {
      const t0 = Date.now();
      if (s.running()) watch.kill('SIGTERM');
      const r = await withTimeout(exited, ms, `herald exit after SIGTERM\n--- stderr:\n${stderr.slice(-4000)}`);
      return { ...r, ms: r.at - t0 };
    },
    /** Resolves with {code, signal, at} once the process has exited (sends nothing). */
    waitExit(ms = 30000) {
      return withTimeout(exited, ms, `herald exit\n--- stderr:\n${stderr.slice(-4000)}`);
    },
    /** Resolves when the process output (stdout+stderr, ANSI colours removed) matches `re`, counted from `from` chars. */
    waitOutput(re, ms = DEFAULT_TIMEOUT, from = 0) {
      return withTimeout(
        new Promise((resolve, reject) => {
          const check = () => {
            const text = (stdout + stderr).slice(from).replace(/\x1b\[[0-9;]*m/g, '');
            const m = re.exec(text);
            if (m) {
              watchers.delete(check);
              resolve(m);
            } else if (exitInfo) {
              watchers.delete(check);
              reject(new Error(`herald exited ${JSON.stringify(exitInfo)} while waiting for ${re}`));
            }
          };
          watchers.add(check);
          check();
        }),
        ms,
        `herald output matching ${re}; output so far:\n${(stdout + stderr).slice(-3000)}`,
      );
    },
  };
  return s;
}

// ------------------------------------------------------------------ metrics

/** Parses Prometheus text exposition into [{name, labels, value}]. */
function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$/.exec(line);
    if (!m) throw new Error(`unparsable metrics line: ${JSON.stringify(line)}`);
    const labels = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?/g;
      let lm;
      while ((lm = re.exec(m[3]))) labels[lm[1]] = lm[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

/** A parsed scrape: samples plus helpers. */
class Scrape {
  constructor(text) {
    this.text = text;
    this.samples = parseMetrics(text);
  }

  /** Samples of `name` whose labels include every given label. */
  find(name, labels = {}) {
    return this.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === String(v)));
  }

  /** Sum of the matching samples (0 when none). */
  get(name, labels = {}) {
    return this.find(name, labels).reduce((a, s) => a + s.value, 0);
  }

  /** Whether the metric family is declared (# TYPE line) or has a sample. */
  has(name) {
    return this.samples.some((s) => s.name === name) || new RegExp(`^# TYPE ${name} `, 'm').test(this.text);
  }

  /** The matching lines, for assertion messages. */
  lines(name) {
    return this.text
      .split('\n')
      .filter((l) => l.startsWith(name))
      .join('\n');
  }
}

/** GET /metrics on the metrics listener. */
async function scrape(server) {
  const res = await fetch(`${server.metricsBase}/metrics`);
  const text = await res.text();
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}: ${text}`);
  const s = new Scrape(text);
  s.contentType = res.headers.get('content-type');
  return s;
}

/** Scrapes until pred(scrape) is truthy; resolves with that scrape. */
async function waitMetrics(server, pred, ms = DEFAULT_TIMEOUT, what = 'metrics condition') {
  let last = null;
  try {
    return await waitFor(
      async () => {
        last = await scrape(server);
        return pred(last) ? last : false;
      },
      ms,
      what,
    );
  } catch (e) {
    e.message += `\n--- last scrape (herald_*):\n${last ? last.text.split('\n').filter((l) => l.startsWith('herald_')).join('\n') : '(none)'}`;
    throw e;
  }
}

/** GET `url`; resolves {status, text} (status 0 when the connection failed). */
async function httpGet(url, { insecure = false } = {}) {
  const mod = url.startsWith('https:') ? https : http;
  return withTimeout(
    new Promise((resolve) => {
      const req = mod.get(url, { rejectUnauthorized: !insecure, agent: false }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode, text }));
        res.on('error', (e) => resolve({ status: 0, text: String(e) }));
      });
      req.on('error', (e) => resolve({ status: 0, text: String(e && e.code ? e.code : e) }));
    }),
    5000,
    `GET ${url}`,
  );
}

// ---------------------------------------------------------------- resources

/**
 * A process's resident memory and open descriptors, read from /proc (Linux):
 * { rssKb: VmRSS in kB, fds: the entries of /proc/<pid>/fd, sockets: those that are sockets }.
 */
function resources(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (!m) throw new Error(`no VmRSS line in /proc/${pid}/status`);
  let fds = 0;
  let sockets = 0;
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    fds += 1;
    try {
      if (fs.readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith('socket:')) sockets += 1;
    } catch (_) {} // closed meanwhile
  }
  return { rssKb: Number(m[1]), fds, sockets };
}

/**
 * The RSS a server may gain over an abuse that by design leaves nothing behind: what the
 * allocator keeps of the memory the abuse used and freed, and what first use costs once
 * (code paths, stacks and per-thread heaps of runtime workers that had not run yet; one worker
 * per core). On 2 cores the HARD-* and HOOK-* tests measured +0.3 to +1.2 MB of it, and up to
 * +2.1 MB when the baseline was read while startup was still touching memory; 6 MiB leaves
 * room for more cores and a loaded machine. Memory kept per connection or per request shows
 * above it once there are enough of them: each test says what it would take.
 */
const RSS_NOISE_KB = 6144;

/** What each open descriptor of `pid` is (socket:[n], pipe:[n], a path), counted by kind. */
function describeFds(pid) {
  const kinds = {};
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    let target;
    try {
      target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`).replace(/:\[\d+\]$/, '');
    } catch (_) {
      continue; // closed meanwhile
    }
    kinds[target] = (kinds[target] || 0) + 1;
  }
  return JSON.stringify(kinds);
}

/**
 * After an abuse whose clients are all gone: waits until `pid` holds no more descriptors than
 * `before.fds + fdSlack` (the server closes its side as it notices, so this is polled), then
 * checks that its RSS grew by at most `rssGrowthKb` kB from `before.rssKb`. Each caller states
 * why its bound is what it is. `count: 'sockets'` compares sockets only, for a server whose
 * other descriptors vary by themselves (a SQLite store's pool opens its files as it grows).
 * Rejects naming `what`, the numbers and the open descriptors. Resolves with the resources at
 * the end.
 */
async function resourcesBack(pid, before, { rssGrowthKb, fdSlack = 0, count = 'fds', ms = 10000, what = 'the abuse' }) {
  if (!Number.isFinite(rssGrowthKb)) throw new Error('resourcesBack needs an RSS bound (rssGrowthKb)');
  if (count !== 'fds' && count !== 'sockets') throw new Error(`resourcesBack counts fds or sockets, not ${count}`);
  try {
    await waitFor(
      () => resources(pid)[count] <= before[count] + fdSlack,
      ms,
      `the server's ${count === 'fds' ? 'descriptors' : 'sockets'} back to ${before[count]} (+${fdSlack}) after ${what}`,
    );
  } catch (e) {
    e.message += `; open now: ${describeFds(pid)}`;
    throw e;
  }
  const now = resources(pid);
  if (now.rssKb - before.rssKb > rssGrowthKb) {
    throw new Error(`after ${what} the server's RSS grew from ${before.rssKb} to ${now.rssKb} kB (+${now.rssKb - before.rssKb}), over the bound of +${rssGrowthKb} kB`);
  }
  return now;
}

// ---------------------------------------------------------------------- CLI

/**
 * Runs the Herald binary synchronously with `args` and a clean environment plus
 * `env`. Resolves to {status, stdout, stderr, out (both), signal}.
 */
async function cli(args, { env = {}, timeout = 20000, cwd } = {}) {
  const bin = await binReady();
  fs.mkdirSync(TMP_DIR, { recursive: true });
  const r = spawnSync(bin, args, {
    env: cleanEnv({ HERALD_METRICS_PORT: '0', ...env }),
    encoding: 'utf8',
    timeout,
    cwd: cwd || TMP_DIR,
  });
  if (r.error) throw r.error;
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr, out: `${r.stdout}${r.stderr}` };
}

// ---------------------------------------------------------------------- TLS

/** A self-signed certificate for 127.0.0.1 under .tmp: {cert, key} paths. */
function selfSignedCert() {
  const key = tmpPath('tls-key', '.pem');
  const cert = tmpPath('tls-cert', '.pem');
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1'],
    { stdio: 'pipe' },
  );
  return { cert, key };
}

/**
 * A pusher-js client in a child node process (so NODE_TLS_REJECT_UNAUTHORIZED=0
 * stays out of the test process) that connects to `wss://127.0.0.1:port` (or over
 * `transports`, e.g. ['xhr_streaming'], to `https://` on the same port),
 * subscribes to `channel` and reports, one JSON line each on stdout:
 *   {type:'state', current}  {type:'subscribed'}  {type:'event', event, data}
 *   {type:'error', error}
 * Returns { lines, waitLine(pred, ms, what), kill(), exited }.
 */
function childPusher({ port, app = DEFAULT_APP, channel, forceTLS = true, transports = ['ws', 'wss'], env = {} }) {
  const code = `
    const Pusher = require('pusher-js');
    const out = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
    const p = new Pusher(${JSON.stringify(app.key)}, {
      cluster: 'mt1', wsHost: '127.0.0.1', wsPort: ${Number(port)}, wssPort: ${Number(port)},
      httpHost: '127.0.0.1', httpPort: ${Number(port)}, httpsPort: ${Number(port)},
      forceTLS: ${forceTLS ? 'true' : 'false'}, enabledTransports: ${JSON.stringify(transports)}, disableStats: true,
    });
    p.connection.bind('state_change', (s) => out({ type: 'state', current: s.current, socket_id: p.connection.socket_id }));
    p.connection.bind('error', (e) => out({ type: 'error', error: String(e && (e.error ? JSON.stringify(e.error) : e.type || e)) }));
    const ch = p.subscribe(${JSON.stringify(channel)});
    ch.bind('pusher:subscription_succeeded', () => out({ type: 'subscribed' }));
    ch.bind_global((event, data) => { if (!event.startsWith('pusher')) out({ type: 'event', event, data }); });
    process.stdin.on('end', () => { p.disconnect(); process.exit(0); });
    process.stdin.resume();
  `;
  const proc = spawn(process.execPath, ['-e', code], {
    cwd: COMPAT,
    env: { ...process.env, NODE_TLS_REJECT_UNAUTHORIZED: '0', NODE_NO_WARNINGS: '1', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const lines = [];
  let buf = '';
  let stderr = '';
  const watchers = new Set();
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stdout.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const l = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        lines.push(JSON.parse(l));
      } catch (_) {
        lines.push({ type: 'text', text: l });
      }
    }
    for (const w of [...watchers]) w();
  });
  proc.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise((resolve) => proc.on('exit', (code2, signal) => resolve({ code: code2, signal })));
  return {
    lines,
    proc,
    exited,
    stderr: () => stderr,
    waitLine(pred, ms = DEFAULT_TIMEOUT, what = 'child pusher-js line') {
      return withTimeout(
        new Promise((resolve) => {
          const check = () => {
            const l = lines.find(pred);
            if (l) {
              watchers.delete(check);
              resolve(l);
            }
          };
          watchers.add(check);
          check();
        }),
        ms,
        `${what}; child lines: ${JSON.stringify(lines)}; stderr: ${stderr.slice(-2000)}`,
      );
    },
    kill() {
      try {
        proc.stdin.end();
      } catch (_) {}
      setTimeout(() => {
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      }, 1000).unref();
    },
  };
}

/** The pusher SDK over https with a self-signed certificate. */
function tlsSdk(server, app = DEFAULT_APP) {
  const PusherServer = require('pusher');
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: '127.0.0.1',
    port: String(server.port),
    useTLS: true,
    agent: new https.Agent({ rejectUnauthorized: false }),
  });
}

/**
 * A raw WebSocket subscriber to `channel` at `base` (`ws://` or `wss://` and the port), with
 * `wsOptions` for the `ws` package. Events named `bulk` carry `N:` and 10,000 characters: their
 * numbers are collected in `events`, and one that arrives cut is an error. `ws._socket.pause()`
 * stops reading (the kernel buffers then fill).
 */
function bulkSubscriber(base, channel, wsOptions = {}) {
  const WebSocket = require('ws');
  const ws = new WebSocket(`${base}/app/app-key?protocol=7`, wsOptions);
  const state = { ws, frames: [], events: [], errors: [], closed: null };
  const subscribed = new Promise((resolve, reject) => {
    ws.on('message', (data) => {
      const f = JSON.parse(String(data));
      state.frames.push(f);
      if (f.event === 'pusher:connection_established') {
        ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel } }));
      } else if (f.event === 'pusher_internal:subscription_succeeded') {
        resolve();
      } else if (f.event === 'bulk') {
        const at = f.data.indexOf(':');
        state.events.push(Number(f.data.slice(0, at)));
        if (f.data.length !== at + 1 + 10000) state.errors.push(`event ${f.data.slice(0, at)} cut to ${f.data.length} chars`);
      }
    });
    ws.on('error', (e) => {
      // A malformed frame (e.g. a close written into the middle of a frame) lands here.
      state.errors.push(String(e && e.message));
      reject(e);
    });
  });
  state.closedP = new Promise((resolve) =>
    ws.on('close', (code, reason) => {
      state.closed = { code, reason: String(reason) };
      resolve(state.closed);
    }),
  );
  state.subscribed = withTimeout(subscribed, 5000, `subscription to ${channel}`);
  return state;
}

/**
 * Stops reading `socket` (a client's): frames pile up in the kernel buffers, then in the server's
 * outbox. The server closes a slow consumer right after counting it and gives it the closing flush
 * (2 s) to take what its socket holds and the 4100 frames after it, so the client reads again as
 * soon as the counter shows the decision, as a client that is merely slow would. Returns
 * { done (a promise that fails after 60 s without the decision), decided() }.
 */
function stallUntilSlowConsumer(server, socket, app = 'app-id') {
  socket.pause();
  let decided = false;
  const until = Date.now() + 60000; // ends by itself if the test fails first
  const done = (async () => {
    while (Date.now() < until) {
      const s = await scrape(server);
      if (s.get('herald_slow_consumer_disconnects_total', { app }) === 1) {
        socket.resume();
        decided = true;
        return;
      }
      await pace(10);
    }
    throw new Error('no slow-consumer disconnect counted within 60 s');
  })();
  return { done, decided: () => decided };
}

module.exports = {
  bulkSubscriber,
  stallUntilSlowConsumer,
  tmpPath,
  writeConfig,
  cleanEnv,
  binReady,
  startOps,
  parseMetrics,
  Scrape,
  scrape,
  waitMetrics,
  httpGet,
  cli,
  selfSignedCert,
  childPusher,
  tlsSdk,
  RSS_NOISE_KB,
  resources,
  describeFds,
  resourcesBack,
};
