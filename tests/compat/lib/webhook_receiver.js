'use strict';
// Webhook test support (hooks spec, HOOK-*):
//
//  * WebhookReceiver — a real node:http server that validates EVERY request it
//    gets with the official `pusher` SDK (`pusher.webhook({headers, rawBody})`),
//    records raw header names, raw bodies and the answer it gave, and can be
//    told to fail requests (500 or any status, or hang until the sender times
//    out) or to be down (listening socket closed, connections refused).
//  * startHerald — spawns the Herald binary with extra HERALD_* environment
//    variables (lib/server.js only takes a TOML config, and the webhook targets
//    of the embedded default app are set by HERALD_DEFAULT_APP_WEBHOOKS), and
//    can stop it gracefully with SIGTERM.
//  * setupHooks — one receiver + one Herald + a pusher-js client pool for a
//    test, torn down by the test's `after` hook.

const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const PusherServer = require('pusher');
const { DEFAULT_APP, TMP_DIR, heraldBin, watchExit } = require('./server');
const { Pool } = require('./clients');
const { DEFAULT_TIMEOUT, withTimeout } = require('./wait');

let seqCounter = 0;

class WebhookReceiver {
  /**
   * opts.app      credentials used to validate (default app)
   * opts.respond  function(rec) => status | 'hang' | undefined (default 200);
   *               consulted after the failNext queue.
   */
  constructor(opts = {}) {
    this.app = opts.app || DEFAULT_APP;
    this.validator = new PusherServer({ appId: this.app.id, key: this.app.key, secret: this.app.secret });
    this.respond = opts.respond || null;
    this.failQueue = [];
    this.defaultStatus = 200;
    /** Every request received, in arrival order. */
    this.requests = [];
    this.waiters = [];
    this.sockets = new Set();
    this.hanging = new Set();
    this.port = 0;
    this.server = null;
  }

  async start(port = 0) {
    const server = http.createServer((req, res) => this._onRequest(req, res));
    server.keepAliveTimeout = 30000;
    server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.removeListener('error', reject);
        resolve();
      });
    });
    this.server = server;
    this.port = server.address().port;
    return this;
  }

  /** Target URL on this receiver. */
  url(p = '/hook') {
    return `http://127.0.0.1:${this.port}${p}`;
  }

  /** The next `n` requests are answered with `status` (default 500). */
  failNext(n, status = 500) {
    for (let i = 0; i < n; i++) this.failQueue.push(status);
  }

  /** Answer every later request with `status` (200 restores normal service). */
  setStatus(status) {
    this.defaultStatus = status;
  }

  /** Closes the listening socket and every open connection: the port refuses connections. */
  async down() {
    if (!this.server) return;
    const s = this.server;
    this.server = null;
    const closed = new Promise((resolve) => s.close(() => resolve()));
    for (const sock of this.sockets) sock.destroy();
    await closed;
  }

  /** Listens again on the same port. */
  async up() {
    if (this.server) return;
    await this.start(this.port);
  }

  async close() {
    for (const res of this.hanging) {
      try {
        res.destroy();
      } catch (_) {}
    }
    this.hanging.clear();
    await this.down();
    for (const w of this.waiters.splice(0)) w.reject(new Error('receiver closed'));
  }

  _onRequest(req, res) {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const text = raw.toString('utf8');
      const rec = {
        seq: ++seqCounter,
        at: Date.now(),
        method: req.method,
        url: req.url,
        httpVersion: req.httpVersion,
        rawHeaders: req.rawHeaders.slice(),
        headers: { ...req.headers },
        raw,
        text,
        signature: req.headers['x-pusher-signature'],
        valid: false,
        validationError: null,
        data: null,
        events: [],
        time: null,
        status: null,
      };
      try {
        const hook = this.validator.webhook({ headers: req.headers, rawBody: text });
        rec.valid = hook.isValid();
        if (rec.valid) {
          rec.data = hook.getData();
          rec.events = hook.getEvents();
          rec.time = hook.getTime();
        } else {
          rec.validationError = `pusher SDK isValid() = false (content-type ${JSON.stringify(req.headers['content-type'])}, key ${JSON.stringify(req.headers['x-pusher-key'])})`;
        }
      } catch (e) {
        rec.validationError = `pusher SDK threw: ${e && e.message}`;
      }
      let status;
      if (!rec.valid) status = 401; // what a real receiver does with a bad webhook
      else if (this.failQueue.length) status = this.failQueue.shift();
      else if (this.respond) status = this.respond(rec);
      if (status === undefined || status === null) status = this.defaultStatus;
      rec.status = status;
      this.requests.push(rec);
      if (status === 'hang') {
        this.hanging.add(res);
        res.on('close', () => this.hanging.delete(res));
      } else {
        res.writeHead(status, { 'Content-Type': 'text/plain' });
        res.end(status >= 200 && status < 300 ? 'ok' : 'nope');
      }
      this._check();
    });
  }

  /** Requests answered with a 2xx (the deliveries that count). */
  accepted(p) {
    return this.requests.filter((r) => typeof r.status === 'number' && r.status >= 200 && r.status < 300 && (p === undefined || r.url === p));
  }

  /** Events of accepted requests, flattened, each with a non-enumerable `_req`. */
  events(p) {
    const out = [];
    for (const r of this.accepted(p)) {
      for (const ev of r.events) {
        const e = { ...ev };
        Object.defineProperty(e, '_req', { value: r, enumerable: false });
        out.push(e);
      }
    }
    return out;
  }

  invalid() {
    return this.requests.filter((r) => !r.valid);
  }

  /** Asserts that every request so far passed the SDK validator. */
  assertAllValid(assert) {
    const bad = this.invalid();
    assert.deepEqual(
      bad.map((r) => ({ url: r.url, error: r.validationError, rawHeaders: r.rawHeaders, body: r.text })),
      [],
      'every webhook request must pass pusher.webhook().isValid()',
    );
  }

  describe(p) {
    return JSON.stringify(
      this.requests.filter((r) => p === undefined || r.url === p).map((r) => ({ url: r.url, status: r.status, at: r.at, body: r.text })),
    );
  }

  _check() {
    for (const w of this.waiters.slice()) {
      let v;
      try {
        v = w.test();
      } catch (e) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.reject(e);
        continue;
      }
      if (v) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(v);
      }
    }
  }

  /** Resolves with test()'s value as soon as it is truthy (checked after each request). */
  until(test, ms = DEFAULT_TIMEOUT, what = 'webhook condition') {
    const v = test();
    if (v) return Promise.resolve(v);
    let waiter;
    const p = new Promise((resolve, reject) => {
      waiter = { test, resolve, reject };
      this.waiters.push(waiter);
    });
    return withTimeout(p, ms, `${what}; requests so far: ${this.describe()}`).finally(() => {
      const i = this.waiters.indexOf(waiter);
      if (i >= 0) this.waiters.splice(i, 1);
    });
  }

  /**
   * Waits until `count` accepted events match `pred` (on path `p` if given) and
   * resolves with them.
   */
  waitEvents(pred, { count = 1, ms = DEFAULT_TIMEOUT, path: p, what } = {}) {
    return this.until(
      () => {
        const hits = this.events(p).filter(pred);
        return hits.length >= count ? hits : null;
      },
      ms,
      what || `${count} webhook event(s) matching ${pred.toString()}`,
    );
  }

  /** Waits for one accepted event matching `pred` and resolves with it. */
  async waitEvent(pred, opts = {}) {
    const [e] = await this.waitEvents(pred, { ...opts, count: 1 });
    return e;
  }

  /** Waits until `count` requests (any answer) satisfy `pred`. */
  waitRequests(pred, { count = 1, ms = DEFAULT_TIMEOUT, what } = {}) {
    return this.until(
      () => {
        const hits = this.requests.filter(pred);
        return hits.length >= count ? hits : null;
      },
      ms,
      what || `${count} webhook request(s) matching ${pred.toString()}`,
    );
  }
}

/** Event matcher: every given member equal. */
function ev(fields) {
  return (e) => Object.entries(fields).every(([k, v]) => e[k] === v);
}

let spoolCounter = 0;
/** A fresh spool file path under tests/compat/.tmp (not created). */
function tmpSpoolPath(tag = 'spool') {
  fs.mkdirSync(TMP_DIR, { recursive: true });
  return path.join(TMP_DIR, `webhooks-${tag}-${process.pid}-${Date.now().toString(36)}-${++spoolCounter}.spool`);
}

/**
 * Spawns Herald with HERALD_HOST=127.0.0.1, HERALD_PORT=0 and the given extra
 * HERALD_* variables (values that are not strings are JSON-encoded).
 * HERALD_WEBHOOKS_SPOOL_FILE defaults to a fresh temp path.
 * Resolves to a server object usable by lib/clients.js (port, pathPrefix…)
 * plus stop() (SIGKILL), terminate(ms) (SIGTERM and wait for exit), exited.
 */
async function startHerald(extraEnv = {}) {
  const bin = heraldBin();
  if (!fs.existsSync(bin)) throw new Error(`Herald binary not found at ${bin}`);
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('HERALD_')) env[k] = v;
  env.HERALD_HOST = '127.0.0.1';
  env.HERALD_PORT = '0';
  env.HERALD_METRICS_PORT = env.HERALD_METRICS_PORT || '0';
  env.HERALD_WEBHOOKS_SPOOL_FILE = tmpSpoolPath();
  for (const [k, v] of Object.entries(extraEnv)) {
    if (v === undefined || v === null) delete env[k];
    else env[k] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  const proc = spawn(bin, [], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.setEncoding('utf8');
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (d) => {
    stderr += d;
    if (stderr.length > 1 << 20) stderr = stderr.slice(-(1 << 19));
  });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error('timed out after 10 s waiting for "Herald listening on"')), 10000);
    function fail(err) {
      clearTimeout(timer);
      try {
        proc.kill('SIGKILL');
      } catch (_) {}
      reject(new Error(`${err.message}\n--- env: ${JSON.stringify(extraEnv)}\n--- stdout:\n${stdout}\n--- stderr:\n${stderr}`));
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
    exited.then(({ code, signal }) => fail(new Error(`herald exited early (code ${code}, signal ${signal})`)));
  });
  // label: set by lib/cluster.js on its nodes (n1, n2…)
  const s = {
    port,
    host: '127.0.0.1',
    httpBase: `http://127.0.0.1:${port}`,
    wsBase: `ws://127.0.0.1:${port}`,
    apps: [DEFAULT_APP],
    pathPrefix: '',
    spoolFile: env.HERALD_WEBHOOKS_SPOOL_FILE,
    proc,
    exited,
    output: () => stdout + stderr,
    running: () => proc.exitCode === null && proc.signalCode === null,
    stop() {
      watch.stop();
    },
    /** Allows an exit with this code (for a test that makes the server exit on purpose). */
    expectExit: (code) => watch.expectExit(code),
    /** SIGTERM, then resolves with {code, signal, ms} once the process has exited. */
    async terminate(ms = 30000) {
      const t0 = Date.now();
      watch.kill('SIGTERM');
      const r = await withTimeout(exited, ms, `herald exit after SIGTERM\n--- stderr:\n${stderr}`);
      return { ...r, ms: Date.now() - t0 };
    },
  };
  const watch = watchExit(proc, () => `${s.label ? `node ${s.label} ` : ''}env ${JSON.stringify(extraEnv)}`, () => stdout + stderr);
  return s;
}

/** The HERALD_* variables for the default app's webhook targets and settings. */
function hookEnv({ targets, batch, vacateDelayMs, env = {} } = {}) {
  const out = { HERALD_DEFAULT_APP_WEBHOOKS: JSON.stringify(targets || []) };
  if (batch !== undefined) out.HERALD_DEFAULT_APP_BATCH_WEBHOOKS = String(batch);
  if (vacateDelayMs !== undefined && vacateDelayMs !== null) out.HERALD_WEBHOOKS_VACATE_DELAY_MS = String(vacateDelayMs);
  return { ...out, ...env };
}

/**
 * Starts a receiver and a Herald whose default app sends webhooks to it, and a
 * pusher-js pool; all torn down after the test.
 *
 *   const { recv, server, pool, sdk } = await setupHooks(t, {
 *     targets: [{ path: '/hook', event_types: [...], filter: {...}, headers: {...} }],
 *     batch: false, vacateDelayMs: 300, env: { HERALD_WEBHOOKS_...: '...' },
 *   });
 *
 * A target without `path` gets '/hook'; `targets` defaults to one target with
 * every event type. `vacateDelayMs` defaults to 300; null leaves the server default.
 */
async function setupHooks(t, opts = {}) {
  const recv = new WebhookReceiver(opts.receiver || {});
  await recv.start();
  const targets = (opts.targets || [{}]).map((tg) => {
    const { path: p = '/hook', ...rest } = tg;
    return { url: recv.url(p), ...rest };
  });
  let server;
  try {
    server = await startHerald(
      hookEnv({ targets, batch: opts.batch, vacateDelayMs: opts.vacateDelayMs === undefined ? 300 : opts.vacateDelayMs, env: opts.env }),
    );
  } catch (e) {
    await recv.close();
    throw e;
  }
  const pool = new Pool(server);
  t.after(async () => {
    pool.closeAll();
    server.stop();
    await recv.close();
    try {
      fs.rmSync(server.spoolFile, { force: true });
    } catch (_) {}
  });
  return { recv, server, pool };
}

/** Resolves once the wall clock has reached `ts` (ms): for letting a timer window pass, never to "settle". */
function untilTime(ts) {
  const d = ts - Date.now();
  return d > 0 ? new Promise((r) => setTimeout(r, d)) : Promise.resolve();
}

module.exports = { WebhookReceiver, startHerald, setupHooks, hookEnv, tmpSpoolPath, ev, untilTime };
