'use strict';
// OPS-STORE-*: a SQLite app store driven by the `herald apps` CLI while Herald runs.
// README: "herald apps disable my-app  # its open connections are closed with 4003 within a
// second" (store.refresh_interval_ms defaults to 1000): every open connection of the app gets
// pusher:error 4003 and close 4003, measured from the moment the CLI command returns; the
// connections of other apps stay. A change is applied as soon as a refresh sees it, so with a
// shorter refresh interval the bound shrinks with it.

const fs = require('node:fs');
const { execFile } = require('node:child_process');
const { test } = require('node:test');
const h = require('../lib');
const ops = require('../lib/ops');
const { assert } = h;

const DISABLED = { code: 4003, message: 'Application disabled' };
const APP = { id: 'store-a', key: 'store-a-key', secret: 'store-a-secret' };
/** Margin over the documented bound, for a loaded machine. */
const MARGIN_MS = 500;

/** `herald apps …` against the store, without blocking the event loop; resolves when it has exited. */
async function apps(storeEnv, args) {
  const bin = await ops.binReady();
  return new Promise((resolve) => {
    execFile(bin, ['apps', ...args], { env: ops.cleanEnv({ HERALD_METRICS_PORT: '0', ...storeEnv }), timeout: 20000 }, (err, stdout, stderr) => {
      resolve({ status: err ? err.code : 0, out: `${stdout}${stderr}`, at: Date.now() });
    });
  });
}

/** Raw clients of `app`, connected (retrying while the store has not served the app yet). */
async function connectApp(pool, server, app, n) {
  const out = [];
  while (out.length < n) {
    const c = await h.waitFor(
      async () => {
        const r = pool.rawOpen({ server, key: app.key });
        const first = await r.next(() => true, 3000, 'first frame');
        if (first.event === 'pusher:connection_established') return r;
        r.close();
        return false;
      },
      5000,
      `a connection of ${app.id} accepted`,
    );
    out.push(c);
  }
  return out;
}

/**
 * Starts Herald on a fresh SQLite store holding APP (added with the CLI), with the given
 * refresh interval (undefined: the default).
 */
async function storeFixture(t, refreshMs) {
  const db = ops.tmpPath('store', '.db');
  const storeEnv = { HERALD_STORE_KIND: 'sqlite', HERALD_STORE_URL: `sqlite://${db}` };
  const env = { ...storeEnv };
  if (refreshMs !== undefined) env.HERALD_STORE_REFRESH_INTERVAL_MS = String(refreshMs);
  const server = await ops.startOps({ env });
  const pool = new h.Pool(server);
  t.after(() => {
    pool.closeAll();
    server.stop();
    for (const f of [db, `${db}-wal`, `${db}-shm`, `${db}-journal`]) fs.rmSync(f, { force: true });
  });
  const add = await apps(storeEnv, ['add', '--id', APP.id, '--key', APP.key, '--secret', APP.secret]);
  assert.equal(add.status, 0, add.out);
  return { server, pool, storeEnv };
}

/**
 * Disables APP with the CLI while `n` of its connections are open, `rounds` times (enabled
 * again in between), and checks each time that every one of them got pusher:error 4003 then
 * close 4003 within `boundMs` of the command's return, while a default-app connection stayed.
 */
async function disableRounds({ server, pool, storeEnv }, { rounds, n, boundMs }) {
  const other = await pool.raw({ server });
  const delays = [];
  for (let round = 0; round < rounds; round++) {
    const open = await connectApp(pool, server, APP, n);
    const r = await apps(storeEnv, ['disable', APP.id]);
    assert.equal(r.status, 0, r.out);
    const problems = [];
    for (const c of open) {
      const closed = await c.waitClose(boundMs + 5000);
      const last = c.frames[c.frames.length - 1];
      if (!last || !last.json || last.json.event !== 'pusher:error' || JSON.stringify(last.json.data) !== JSON.stringify(DISABLED)) {
        problems.push(`last frame ${last ? last.text : '(none)'}`);
      }
      if (closed.code !== DISABLED.code || closed.reason !== DISABLED.message) problems.push(`close ${JSON.stringify(closed)}`);
      const ms = closed.at - r.at;
      delays.push(ms);
      if (ms > boundMs) problems.push(`closed ${ms} ms after \`herald apps disable\` returned (bound ${boundMs} ms)`);
    }
    assert.deepEqual(problems, [], `round ${round + 1}: delays so far ${JSON.stringify(delays)}`);
    assert.equal(other.closed, null, "the default app's connection stays open");
    const e = await apps(storeEnv, ['enable', APP.id]);
    assert.equal(e.status, 0, e.out);
  }
  const s = await ops.scrape(server);
  assert.equal(s.get('herald_connections', { app: APP.id }), 0, s.lines('herald_connections'));
  return delays;
}

test('OPS-STORE-1 `herald apps disable` closes the open connections of the app with 4003 within a second (SQLite, default refresh)', { timeout: 90000 }, async (t) => {
  const fx = await storeFixture(t, undefined);
  const delays = await disableRounds(fx, { rounds: 3, n: 3, boundMs: 1000 + MARGIN_MS });
  t.diagnostic(`4003 closes after the command returned: ${delays.join(', ')} ms`);
});

test('OPS-STORE-2 a disable is applied as soon as a refresh sees it: within refresh_interval_ms (200) of the command', { timeout: 90000 }, async (t) => {
  const REFRESH = 200;
  const fx = await storeFixture(t, REFRESH);
  const delays = await disableRounds(fx, { rounds: 5, n: 2, boundMs: REFRESH + MARGIN_MS });
  t.diagnostic(`4003 closes after the command returned: ${delays.join(', ')} ms`);
});
