'use strict';
// Webhook delivery hardening (README "Operations → Webhook delivery" and the `webhooks.*`
// settings):
//  HOOK-ORDER-1   a receiver that fails one channel holds up that channel only: the other
//                 channels' webhooks arrive within the batch window + 1 s while it retries, and
//                 the failing channel's later webhooks arrive after its first, in order.
//  HOOK-REDIRECT-1 redirects are not followed: a 307 is a failed attempt (retried, logged with
//                 its status); the redirect's destination gets nothing.
//  HOOK-DEST-1    webhooks.deny_private_networks / webhooks.allowed_hosts refuse target URLs with
//                 a private IP host, or a host not listed, when the configuration is loaded.
//  HOOK-DEST-2    at run time (apps from a SQLite store, not checked at load) destinations at
//                 127.0.0.1, at 169.254.169.254 and at a name resolving to loopback are refused
//                 before any connection: counted as failed, logged, not retried.
//  HOOK-REDACT-1  a failing target URL with a password: the server output shows it redacted and
//                 never the password; the spool file written at shutdown is mode 0600.
// ORDER-1, REDIRECT-1 and DEST-2 also check, once their clients and receivers are gone, that the
// server's open descriptors are back to where they were after its start (retries and refused
// destinations keep no socket) and that its RSS grew by at most ops.RSS_NOISE_KB.

const { test } = require('node:test');
const fs = require('node:fs');
const http = require('node:http');
const { execFile } = require('node:child_process');
const h = require('../lib');
const ops = require('../lib/ops');
const { WebhookReceiver, tmpSpoolPath } = require('../lib/webhook_receiver');
const { assert } = h;

/** README: `webhooks.batch_window_ms` default. */
const BATCH_WINDOW_MS = 50;
/** The bound's margin (README: other channels go within the batch window + 1 s). */
const MARGIN_MS = 1000;

function escapeRe(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Server output without colours. */
function plain(server) {
  return server.output().replace(/\x1b\[[0-9;]*m/g, '');
}

/** herald_webhooks_total{app, outcome} now. */
async function hookCount(server, outcome, app = 'app-id') {
  const s = await ops.scrape(server);
  return s.get('herald_webhooks_total', { app, outcome }) || 0;
}

/** A server, a client pool closed after the test, and the server's resources once started. */
async function withServer(t, env) {
  const server = await ops.startOps({ env });
  const pool = new h.Pool(server);
  t.after(() => {
    pool.closeAll();
    server.stop();
  });
  return { server, pool, before: ops.resources(server.pid) };
}

for (const batch of [false, true]) {
  test(`HOOK-ORDER-1 (batching ${batch ? 'on' : 'off'}) one failing channel holds up only itself; its later webhooks follow its first, in order`, { timeout: 60000 }, async (t) => {
    let failing = null;
    const recv = new WebhookReceiver({ respond: (r) => (failing && r.text.includes(failing) ? 500 : undefined) });
    await recv.start();
    t.after(() => recv.close());
    const { server, pool, before } = await withServer(t, {
      HERALD_DEFAULT_APP_WEBHOOKS: JSON.stringify([{ url: recv.url('/hook'), event_types: ['channel_occupied', 'client_event'] }]),
      HERALD_DEFAULT_APP_BATCH_WEBHOOKS: String(batch),
      HERALD_WEBHOOKS_BATCH_WINDOW_MS: String(BATCH_WINDOW_MS),
    });
    const c = await pool.pusher({});
    const A = h.uid('private-ordA');
    failing = A;
    await h.subscribeOk(c, A);
    const [first] = await recv.waitRequests((r) => r.text.includes(A), { count: 1, ms: 5000, what: `A's first attempt` });
    assert.equal(first.status, 500);

    // A's client events interleaved with ten other channels' webhooks (with batching on, they
    // are created inside the same batch windows).
    const others = Array.from({ length: 10 }, (_, i) => h.uid(`pub-ord${i}-`));
    const startedAt = {};
    for (let i = 0; i < others.length; i++) {
      if (i % 3 === 0) assert.equal(c.channel(A).trigger('client-step', { n: i / 3 }), true);
      startedAt[others[i]] = Date.now();
      await h.subscribeOk(c, others[i]);
    }
    const steps = 4; // n = 0..3
    const got = await recv.waitEvents((e) => others.includes(e.channel), { count: others.length, ms: 10000, what: 'the ten other channels' });
    for (const e of got) {
      const late = e._req.at - startedAt[e.channel];
      assert.ok(late <= BATCH_WINDOW_MS + MARGIN_MS, `${e.channel} arrived ${late} ms after its subscribe, over the batch window + ${MARGIN_MS} ms: ${recv.describe()}`);
    }
    assert.deepEqual(recv.accepted().filter((r) => r.text.includes(A)), [], 'A is still failing');
    // A keeps retrying meanwhile (back-off 1 s): a second attempt, still only its first webhook
    await recv.waitRequests((r) => r.text.includes(A), { count: 2, ms: 5000, what: `A's retry` });
    assert.ok(
      recv.requests.filter((r) => r.text.includes(A)).every((r) => !r.text.includes('client-step')),
      `A's later webhooks are not attempted while its first retries: ${recv.describe()}`,
    );

    failing = null;
    const aEvents = await recv.waitEvents((e) => e.channel === A, { count: 1 + steps, ms: 15000, what: `A's ${1 + steps} events once accepted` });
    assert.deepEqual(
      aEvents.map((e) => (e.name === 'client_event' ? `step ${JSON.parse(e.data).n}` : e.name)),
      ['channel_occupied', 'step 0', 'step 1', 'step 2', 'step 3'],
      'A in order: its first webhook, then the later ones as created',
    );
    const occupiedAt = aEvents[0]._req.at;
    for (const r of recv.requests.filter((x) => x.text.includes('client-step'))) {
      assert.ok(r.at >= occupiedAt && r.status === 200, `A's later webhook sent after its first was accepted, once: ${recv.describe()}`);
    }
    recv.assertAllValid(assert);
    // Everything delivered: with the client and the receiver's connections gone, nothing of the
    // failed attempts and retries stays (a few dozen small webhooks: the noise bound).
    pool.closeAll();
    await recv.down();
    await ops.resourcesBack(server.pid, before, { rssGrowthKb: ops.RSS_NOISE_KB, what: 'a failing channel retried among ten others' });
  });
}

test('HOOK-REDIRECT-1 a 307 is a failed attempt: retried and logged with its status, never followed', { timeout: 30000 }, async (t) => {
  const second = new WebhookReceiver();
  await second.start();
  const hits = [];
  const redirector = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      hits.push(Date.now());
      res.writeHead(307, { Location: second.url('/stolen') });
      res.end();
    });
  });
  await new Promise((r) => redirector.listen(0, '127.0.0.1', r));
  t.after(async () => {
    await second.close();
    if (redirector.listening) await new Promise((r) => redirector.close(r));
  });
  const url = `http://127.0.0.1:${redirector.address().port}/hook`;
  const { server, pool, before } = await withServer(t, {
    HERALD_DEFAULT_APP_WEBHOOKS: JSON.stringify([{ url, event_types: ['channel_occupied'], headers: { 'X-Api-Key': 'hook-secret' } }]),
  });
  const c = await pool.raw({ server });
  await c.subscribeOk(h.uid('pub-redir'));
  // the first attempt and its retry 1 s later both end at the 307
  await h.waitFor(() => hits.length >= 2, 8000, 'two attempts at the redirecting target');
  assert.ok((await hookCount(server, 'retried')) >= 1, 'the 307 counted as a failed, retried attempt');
  assert.equal(await hookCount(server, 'delivered'), 0);
  await server.waitOutput(/webhook attempt\(s\) failed[^\n]*307/, 3000);
  assert.deepEqual(second.requests, [], 'the redirect target got nothing: no body, no signature, no secret header');
  // The redirecting target goes away (retries go on, refused at connect from now on): no
  // socket of an attempt stays; one webhook: the noise bound.
  pool.closeAll();
  const closed = new Promise((r) => redirector.close(r));
  redirector.closeAllConnections();
  await closed;
  await ops.resourcesBack(server.pid, before, { rssGrowthKb: ops.RSS_NOISE_KB, what: 'a redirecting target retried' });
});

test('HOOK-DEST-1 deny_private_networks and allowed_hosts refuse target URLs when the configuration is loaded', { timeout: 30000 }, async () => {
  const check = (url, env) => ops.cli(['check-config'], { env: { HERALD_DEFAULT_APP_WEBHOOKS: JSON.stringify([{ url }]), ...env } });
  const deny = { HERALD_WEBHOOKS_DENY_PRIVATE_NETWORKS: 'true' };
  const ok = await check('http://127.0.0.1:9/hook', {});
  assert.equal(ok.status, 0, `off by default: loopback receivers keep working\n${ok.out}`);
  for (const url of ['http://127.0.0.1:9/hook', 'http://169.254.169.254/latest/meta-data/', 'http://[::1]:9/', 'http://10.0.0.7/']) {
    const r = await check(url, deny);
    assert.notEqual(r.status, 0, `${url} refused\n${r.out}`);
    assert.match(r.out, /apps\[0\]\.webhooks\[0\]\.url[^\n]*deny_private_networks/, r.out);
  }
  const listed = { HERALD_WEBHOOKS_ALLOWED_HOSTS: JSON.stringify(['hooks.example.com']) };
  assert.equal((await check('https://hooks.example.com/in', listed)).status, 0);
  const r = await check('https://elsewhere.example/in', listed);
  assert.notEqual(r.status, 0, r.out);
  assert.match(r.out, /allowed_hosts/, r.out);
});

test('HOOK-DEST-2 at run time, private destinations (127.0.0.1, 169.254.169.254, a name resolving to loopback) are refused before any connection', { timeout: 40000 }, async (t) => {
  const recv = new WebhookReceiver();
  await recv.start();
  let connections = 0;
  recv.server.on('connection', () => connections++);
  t.after(() => recv.close());
  const db = ops.tmpPath('hook-dest', '.db');
  const storeEnv = { HERALD_STORE_KIND: 'sqlite', HERALD_STORE_URL: `sqlite://${db}` };
  const { server, pool, before } = await withServer(t, {
    ...storeEnv,
    HERALD_STORE_REFRESH_INTERVAL_MS: '200',
    HERALD_WEBHOOKS_DENY_PRIVATE_NETWORKS: 'true',
    // an attempt that did connect to the unreachable address would hang well past the test
    HERALD_WEBHOOKS_REQUEST_TIMEOUT_MS: '60000',
  });
  t.after(() => {
    for (const f of [db, `${db}-wal`, `${db}-shm`, `${db}-journal`]) fs.rmSync(f, { force: true });
  });
  const targets = [recv.url('/literal'), 'http://169.254.169.254/latest/meta-data/', `http://localhost:${recv.port}/by-name`];
  const app = { id: 'dest-app', key: 'dest-key', secret: 'dest-secret' };
  const bin = await ops.binReady();
  const add = await new Promise((resolve) => {
    const args = ['apps', 'add', '--id', app.id, '--key', app.key, '--secret', app.secret, ...targets.flatMap((u) => ['--webhook', u])];
    execFile(bin, args, { env: ops.cleanEnv({ HERALD_METRICS_PORT: '0', ...storeEnv }), timeout: 20000 }, (err, stdout, stderr) => resolve({ status: err ? err.code : 0, out: `${stdout}${stderr}` }));
  });
  assert.equal(add.status, 0, add.out);
  const c = await h.waitFor(
    async () => {
      const r = pool.rawOpen({ server, key: app.key });
      const f = await r.next(() => true, 3000, 'first frame');
      if (f.event === 'pusher:connection_established') return r;
      r.close();
      return false;
    },
    10000,
    'a connection of the store app',
  );
  await c.subscribeOk(h.uid('pub-dest'));
  // each refusal is logged at once (the 60 s request timeout would outlast these waits)
  for (const u of targets) {
    await server.waitOutput(new RegExp(`webhook\\(s\\) given up[^\\n]*${escapeRe(u)}[^\\n]*destination refused`), 10000);
  }
  const failed = await hookCount(server, 'failed', app.id);
  assert.ok(failed >= targets.length, `each target's webhooks counted as failed (${failed})`);
  assert.equal(await hookCount(server, 'retried', app.id), 0, 'a refusal is final');
  assert.equal(await hookCount(server, 'delivered', app.id), 0);
  assert.deepEqual(recv.requests, []);
  assert.equal(connections, 0, 'no connection reached the loopback receiver');
  // Refused destinations leave no socket (one name was resolved first); sockets only: the
  // SQLite store's pool opens its database files as it grows. Three webhooks: the noise bound.
  pool.closeAll();
  await ops.resourcesBack(server.pid, before, { rssGrowthKb: ops.RSS_NOISE_KB, count: 'sockets', what: 'three refused destinations' });
});

test('HOOK-REDACT-1 a failing target URL with a password is logged redacted, never with the password; the spool file is 0600', { timeout: 30000 }, async (t) => {
  const closed = new WebhookReceiver();
  await closed.start();
  const port = closed.port;
  await closed.down(); // connections refused
  const spool = tmpSpoolPath('redact');
  t.after(() => fs.rmSync(spool, { force: true }));
  const url = `http://user:secretpw@127.0.0.1:${port}/hook?token=tok-secret`;
  const { server, pool } = await withServer(t, {
    HERALD_DEFAULT_APP_WEBHOOKS: JSON.stringify([{ url, event_types: ['channel_occupied'] }]),
    HERALD_WEBHOOKS_SPOOL_FILE: spool,
    HERALD_SERVER_SHUTDOWN_TIMEOUT_MS: '1000',
    HERALD_SERVER_DRAIN_WINDOW_MS: '50',
  });
  const c = await pool.raw({ server });
  await c.subscribeOk(h.uid('pub-redact'));
  await server.waitOutput(new RegExp(`webhook attempt\\(s\\) failed[^\\n]*user:\\*\\*\\*@127\\.0\\.0\\.1:${port}/hook\\?token=\\*\\*\\*`), 8000);
  pool.closeAll();
  const exit = await server.terminate(10000);
  assert.equal(exit.code, 0, JSON.stringify(exit));
  const out = plain(server);
  assert.ok(!out.includes('secretpw') && !out.includes('tok-secret'), `no secret in the output:\n${out.slice(-3000)}`);
  assert.ok(fs.existsSync(spool), `the undelivered webhook was spooled\n${out.slice(-2000)}`);
  assert.equal(fs.statSync(spool).mode & 0o777, 0o600, 'the spool (URLs, headers, signed bodies) is private to its owner');
});
