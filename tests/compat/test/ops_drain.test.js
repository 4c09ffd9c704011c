'use strict';
// OPS-DRAIN-*: graceful shutdown on SIGTERM/SIGINT with many connected clients:
// pusher:error 4200 + close 4200 for everyone, closes paced over the drain window,
// and no event accepted (HTTP 200) before the shutdown is lost.

const { test } = require('node:test');
const h = require('../lib');
const ops = require('../lib/ops');
const { assert } = h;

const RECONNECT = { code: 4200, message: 'Please reconnect immediately' };

/** Opens `count` raw clients in batches, each subscribed to `channel`. */
async function connectMany(pool, server, count, channel, batch = 250) {
  const out = [];
  for (let i = 0; i < count; i += batch) {
    const n = Math.min(batch, count - i);
    const got = await Promise.all(
      Array.from({ length: n }, async () => {
        const c = await pool.raw({ server, ms: 10000 });
        await c.subscribeOk(channel, { ms: 10000 });
        return c;
      }),
    );
    out.push(...got);
  }
  return out;
}

/** Checks one drained client: the accepted events, then pusher:error 4200, then close 4200. */
function checkDrained(c, channel, accepted) {
  const frames = c.frames.filter((f) => f.json);
  const errIdx = frames.findIndex((f) => f.json.event === 'pusher:error');
  const problems = [];
  if (errIdx < 0) problems.push('no pusher:error');
  else {
    const e = frames[errIdx].json;
    if (!e.data || e.data.code !== RECONNECT.code || e.data.message !== RECONNECT.message) problems.push(`error frame ${JSON.stringify(e)}`);
  }
  if (!c.closed || c.closed.code !== 4200) problems.push(`close ${JSON.stringify(c.closed)}`);
  else if (c.closed.reason !== RECONNECT.message) problems.push(`close reason ${JSON.stringify(c.closed.reason)}`);
  const before = errIdx < 0 ? frames : frames.slice(0, errIdx);
  const got = new Set(before.filter((f) => f.json.event === 'ops-drain' && f.json.channel === channel).map((f) => JSON.parse(f.json.data).n));
  const missing = accepted.filter((n) => !got.has(n));
  if (missing.length) problems.push(`accepted events missing before the 4200: ${JSON.stringify(missing)}`);
  return problems;
}

test('OPS-DRAIN-1 SIGTERM with 2,000 clients: 4200 for all, paced over the window, no accepted event lost', { timeout: 120000 }, async (t) => {
  const WINDOW = 2000;
  const server = await ops.startOps({
    env: { HERALD_SERVER_DRAIN_WINDOW_MS: String(WINDOW), HERALD_SERVER_SHUTDOWN_TIMEOUT_MS: '15000' },
  });
  const pool = new h.Pool(server);
  t.after(() => {
    pool.closeAll();
    server.stop();
  });
  const channel = h.uid('ops-drain-');
  const COUNT = 2000;
  const clients = await connectMany(pool, server, COUNT, channel);
  const s = await ops.waitMetrics(server, (x) => x.get('herald_connections', { app: 'app-id' }) === COUNT, 5000, `${COUNT} connections`);
  assert.equal(s.get('herald_subscriptions', { app: 'app-id' }), COUNT);

  // Events right before the signal: the first ones awaited, the last ones racing the SIGTERM.
  const api = h.sdk(server);
  const accepted = [];
  const trigger = async (n) => {
    try {
      const res = await api.trigger(channel, 'ops-drain', { n });
      if (res.status === 200) accepted.push(n);
      return res.status;
    } catch (e) {
      return e.status || String(e.code || e.message);
    }
  };
  for (let n = 0; n < 3; n++) assert.equal(await trigger(n), 200);
  // a burst: SIGTERM goes out as soon as the first of them is accepted, the rest race it
  const racing = [];
  for (let n = 3; n < 13; n++) racing.push(trigger(n));
  await Promise.race(racing);
  const t0 = Date.now();
  server.kill('SIGTERM');
  const outcomes = await Promise.all(racing);

  const exit = await server.waitExit(20000);
  exit.ms = exit.at - t0;
  assert.equal(exit.code, 0, `exit after SIGTERM: ${JSON.stringify(exit)}`);
  await Promise.all(clients.map((c) => c.waitClose(5000)));

  const bad = [];
  const badErrAt = [];
  clients.forEach((c, i) => {
    const p = checkDrained(c, channel, accepted);
    if (p.length) {
      bad.push(`client ${i} (${c.socketId}): ${p.join('; ')}`);
      const e = c.frames.find((f) => f.json && f.json.event === 'pusher:error');
      if (e) badErrAt.push(e.at - t0);
    }
  });

  // paced: the 4200 errors and the closes are spread over the window, not all at once
  const errAt = clients.map((c) => (c.frames.find((f) => f.json && f.json.event === 'pusher:error') || { at: NaN }).at).sort((a, b) => a - b);
  const closeAt = clients.map((c) => c.closed.at).sort((a, b) => a - b);
  const spreadErr = errAt[errAt.length - 1] - errAt[0];
  const spreadClose = closeAt[closeAt.length - 1] - closeAt[0];
  const firstHalf = errAt.filter((x) => x - errAt[0] < spreadErr / 2).length;
  const detail = `error spread ${spreadErr} ms, close spread ${spreadClose} ms, first error ${errAt[0] - t0} ms after SIGTERM, last close ${closeAt[closeAt.length - 1] - t0} ms; ${firstHalf} errors in the first half; exit after ${exit.ms} ms`;
  const problems = [];
  if (!(spreadErr >= 1000)) problems.push(`4200 errors must be spread over the ${WINDOW} ms window`);
  if (!(spreadClose >= 1000)) problems.push(`closes must be spread over the ${WINDOW} ms window`);
  if (!(spreadErr <= WINDOW + 1500)) problems.push('the drain must end close to the window');
  if (!(firstHalf >= COUNT * 0.25 && firstHalf <= COUNT * 0.75)) problems.push('batches must be paced evenly');
  if (bad.length) {
    problems.push(
      `${bad.length} of ${COUNT} clients not drained cleanly (accepted ${JSON.stringify(accepted)}, racing trigger outcomes ${JSON.stringify(outcomes)}; ` +
        `the failing clients got their 4200 ${Math.min(...badErrAt)}..${Math.max(...badErrAt)} ms after SIGTERM): ${bad.slice(0, 5).join(' | ')}`,
    );
  }
  assert.deepEqual(problems, [], detail);
  // The three awaited events were accepted; racing ones may be refused once the server stops
  // accepting requests (a refused event was never accepted, so it cannot be lost).
  assert.ok(accepted.length >= 3, `accepted ${JSON.stringify(accepted)}`);
});

test('OPS-DRAIN-2 SIGINT drains like SIGTERM and readiness answers 503 meanwhile', { timeout: 60000 }, async (t) => {
  const server = await ops.startOps({ env: { HERALD_SERVER_DRAIN_WINDOW_MS: '1500' } });
  const pool = new h.Pool(server);
  t.after(() => {
    pool.closeAll();
    server.stop();
  });
  const channel = h.uid('ops-int-');
  const clients = await connectMany(pool, server, 200, channel, 100);
  server.kill('SIGINT');
  const rz = await h.waitFor(
    async () => {
      const r = await ops.httpGet(`${server.metricsBase}/readyz`);
      return r.status === 503 ? r : false;
    },
    1500,
    '/readyz 503 after SIGINT',
  );
  assert.match(rz.text, /draining/);
  const exit = await server.waitExit(20000);
  assert.equal(exit.code, 0, JSON.stringify(exit));
  await Promise.all(clients.map((c) => c.waitClose(5000)));
  const bad = clients.map((c, i) => [i, checkDrained(c, channel, [])]).filter(([, p]) => p.length);
  assert.deepEqual(bad.slice(0, 5), [], `${bad.length} clients not drained with 4200`);
});

test('OPS-DRAIN-3 during the drain, signed API requests (pusher SDK) get 503 with a reason, /readyz 503 on both ports, upgrades are refused', { timeout: 60000 }, async (t) => {
  const WINDOW = 3000;
  const server = await ops.startOps({ env: { HERALD_SERVER_DRAIN_WINDOW_MS: String(WINDOW), HERALD_SERVER_SHUTDOWN_TIMEOUT_MS: '15000' } });
  const pool = new h.Pool(server);
  t.after(() => {
    pool.closeAll();
    server.stop();
  });
  const channel = h.uid('ops-503-');
  // enough connections that the paced drain takes the whole window
  const clients = await connectMany(pool, server, 200, channel, 100);
  const api = h.sdk(server);
  const ok = await h.sdkCall(() => api.trigger(channel, 'before', {}));
  assert.equal(ok.status, 200, ok.text);

  server.kill('SIGTERM');
  await h.waitFor(
    async () => (await ops.httpGet(`${server.metricsBase}/readyz`)).status === 503,
    2000,
    '/readyz 503 on the metrics port after SIGTERM',
  );
  const REFUSED = { status: 503, text: 'Server is shutting down: retry on another node\n' };
  /** An SDK call's {status, text}; a request that got no answer at all shows as status 0. */
  const call = async (fn) => {
    try {
      const r = await h.sdkCall(fn);
      return { status: r.status, text: r.text };
    } catch (e) {
      return { status: 0, text: `no answer: ${(e.error && (e.error.code || e.error.message)) || e.message}` };
    }
  };
  const calls = {
    trigger: await call(() => api.trigger(channel, 'during', { n: 1 })),
    triggerBatch: await call(() => api.triggerBatch([{ channel, name: 'during', data: '{}' }])),
    channels: await call(() => api.get({ path: '/channels' })),
  };
  const readyz = { server: await ops.httpGet(`${server.httpBase}/readyz`), metrics: await ops.httpGet(`${server.metricsBase}/readyz`) };
  const upgrade = pool.rawOpen({ server });
  await upgrade.waitClose(3000);
  const stillOpen = clients.filter((c) => !c.closed).length;

  assert.deepEqual(calls, { trigger: REFUSED, triggerBatch: REFUSED, channels: REFUSED });
  assert.deepEqual(readyz, { server: { status: 503, text: 'draining\n' }, metrics: { status: 503, text: 'draining\n' } });
  assert.deepEqual(upgrade.unexpectedResponse, { status: 503, body: 'Server is shutting down: retry on another node\n' }, 'a new WebSocket is refused, not opened');
  assert.equal(upgrade.frames.length, 0, 'no Pusher frame on a refused upgrade');
  assert.ok(stillOpen > 0, `the answers above came while the drain was still closing connections (${stillOpen} of 200 open)`);

  const exit = await server.waitExit(20000);
  assert.equal(exit.code, 0, JSON.stringify(exit));
  await Promise.all(clients.map((c) => c.waitClose(5000)));
  const bad = clients.map((c, i) => [i, checkDrained(c, channel, [])]).filter(([, p]) => p.length);
  assert.deepEqual(bad.slice(0, 5), [], `${bad.length} clients not drained with 4200`);
  // nothing published during the drain reached a client
  assert.deepEqual(clients.flatMap((c) => c.frames.filter((f) => f.json && f.json.event === 'during')), []);
});

test('OPS-DRAIN-4 the shutdown deadline bounds the whole shutdown: exit within shutdown_timeout_ms + 500 ms of SIGTERM, even with a longer drain window and a webhook receiver that hangs', { timeout: 60000 }, async (t) => {
  const DEADLINE = 2000;
  const { WebhookReceiver } = require('../lib/webhook_receiver');
  const recv = new WebhookReceiver({ respond: () => 'hang' });
  await recv.start();
  const server = await ops.startOps({
    env: {
      HERALD_SERVER_DRAIN_WINDOW_MS: '5000', // longer than the deadline
      HERALD_SERVER_SHUTDOWN_TIMEOUT_MS: String(DEADLINE),
      HERALD_WEBHOOKS_VACATE_DELAY_MS: '0',
      HERALD_DEFAULT_APP_WEBHOOKS: JSON.stringify([{ url: recv.url('/hook'), event_types: ['channel_occupied', 'channel_vacated'] }]),
    },
  });
  const pool = new h.Pool(server);
  t.after(async () => {
    pool.closeAll();
    server.stop();
    await recv.close();
  });
  const channel = h.uid('ops-deadline-');
  const clients = await connectMany(pool, server, 200, channel, 100);
  // the first webhook (channel_occupied) hangs at the receiver: pending at SIGTERM
  await recv.waitRequests(() => true, { count: 1, ms: 5000, what: 'the hanging channel_occupied webhook' });

  const t0 = Date.now();
  server.kill('SIGTERM');
  const exit = await server.waitExit(20000);
  const ms = exit.at - t0;
  assert.equal(exit.code, 0, JSON.stringify(exit));
  assert.ok(ms <= DEADLINE + 500, `exited ${ms} ms after SIGTERM; the shutdown deadline is ${DEADLINE} ms (+500 ms margin)`);
  // the drain was fitted into the deadline: every client still got its 4200 before the exit
  await Promise.all(clients.map((c) => c.waitClose(5000)));
  const bad = clients.map((c, i) => [i, checkDrained(c, channel, [])]).filter(([, p]) => p.length);
  assert.deepEqual(bad.slice(0, 5), [], `${bad.length} clients not drained with 4200`);
  assert.match(server.output(), /undelivered webhooks saved for the next start/, 'the hanging webhook was spooled at the deadline');
});
