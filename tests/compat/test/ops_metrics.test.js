'use strict';
// OPS-METRICS-*, OPS-HEALTH-*: Prometheus metrics after a known workload, and the
// health/readiness endpoints (readiness off during a graceful drain).

const { test } = require('node:test');
const h = require('../lib');
const ops = require('../lib/ops');
const { assert } = h;

const T = { timeout: 60000 };
const APP = h.DEFAULT_APP;

test('OPS-METRICS-1 gauges and counters equal a known workload', T, async (t) => {
  const server = await ops.startOps({
    config: { apps: [{ ...APP, limits: { max_channels_per_connection: 3 } }] },
  });
  const pool = new h.Pool(server);
  t.after(() => {
    pool.closeAll();
    server.stop();
  });

  // Nothing yet: the adapter gauge is 1, the app has no connections.
  const s0 = await ops.scrape(server);
  assert.match(s0.contentType || '', /^text\/plain/, 'Prometheus text exposition content type');
  assert.equal(s0.get('herald_cluster_adapter_up'), 1, s0.lines('herald_cluster_adapter_up'));
  assert.equal(s0.get('herald_connections', { app: APP.id }), 0);

  const N = 6; // pusher-js connections
  const K = 3; // channels
  const chans = Array.from({ length: K }, (_, i) => h.uid(`ops-m${i}-`));
  const clients = [];
  for (let i = 0; i < N; i++) clients.push(await pool.pusher());
  // client i subscribes to chans[i % K] and chans[(i + 1) % K]: M = 2N subscriptions, each channel 2N/K subscribers
  const subscribed = [];
  clients.forEach((c, i) => {
    subscribed.push(h.subscribeOk(c, chans[i % K]), h.subscribeOk(c, chans[(i + 1) % K]));
  });
  await Promise.all(subscribed);
  const M = 2 * N;

  // E events through the SDK, one channel each
  const api = h.sdk(server);
  const E = 5;
  const received = new Map(); // client index -> count of ops events
  clients.forEach((c, i) => {
    received.set(i, 0);
    c.bind_global((name) => {
      if (name === 'ops-ev') received.set(i, received.get(i) + 1);
    });
  });
  let expectedDeliveries = 0;
  for (let j = 0; j < E; j++) {
    const r = await h.sdkCall(() => api.trigger(chans[j % K], 'ops-ev', { j }));
    assert.equal(r.status, 200, r.text);
    expectedDeliveries += clients.filter((_, i) => i % K === j % K || (i + 1) % K === j % K).length;
  }
  await h.waitFor(
    () => [...received.values()].reduce((a, b) => a + b, 0) === expectedDeliveries,
    5000,
    `${expectedDeliveries} deliveries (got ${JSON.stringify([...received])})`,
  );
  const delivered = [...received.values()].reduce((a, b) => a + b, 0);

  // one request with a bad signature, one channels query
  const bad = await h.signedFetch(server.httpBase, {
    app: APP,
    method: 'POST',
    path: `/apps/${APP.id}/events`,
    body: { name: 'x', channels: [chans[0]], data: '{}' },
    signSecret: 'not-the-secret',
  });
  assert.equal(bad.status, 401, bad.text);
  const list = await h.sdkCall(() => api.get({ path: '/channels' }));
  assert.equal(list.status, 200, list.text);

  const framesSeen = clients.reduce((a, c) => a + c.__messages.length, 0);
  const s = await ops.waitMetrics(
    server,
    (x) => x.get('herald_ws_messages_sent_total', { app: APP.id }) >= framesSeen,
    3000,
    'messages sent counter to cover every frame the clients saw',
  );
  const app = { app: APP.id };
  const report = s.text
    .split('\n')
    .filter((l) => l.startsWith('herald_'))
    .join('\n');
  assert.equal(s.get('herald_connections', app), N, `connections gauge\n${report}`);
  assert.equal(s.get('herald_connections_opened_total', app), N, `connections opened\n${report}`);
  assert.equal(s.get('herald_channels', app), K, `channels gauge\n${report}`);
  assert.equal(s.get('herald_subscriptions', app), M, `subscriptions gauge\n${report}`);
  assert.equal(s.get('herald_http_requests_total', { ...app, route: 'events', status: '200' }), E, `events 200\n${report}`);
  assert.equal(s.get('herald_http_requests_total', { ...app, route: 'events', status: '401' }), 1, `events 401\n${report}`);
  assert.equal(s.get('herald_http_requests_total', { ...app, route: 'channels', status: '200' }), 1, `channels 200\n${report}`);
  assert.equal(s.get('herald_http_requests_total'), E + 2, `no other HTTP requests counted\n${report}`);
  assert.ok(s.get('herald_ws_messages_received_total', app) >= M, `messages received >= ${M} subscribe frames\n${report}`);
  assert.ok(s.get('herald_ws_received_bytes_total', app) >= M * 40, `received bytes\n${report}`);
  assert.ok(s.get('herald_ws_messages_sent_total', app) >= framesSeen, `messages sent >= ${framesSeen} frames seen\n${report}`);
  assert.ok(framesSeen >= delivered + M, 'the clients saw at least the events and the subscription acks');
  assert.ok(s.get('herald_ws_sent_bytes_total', app) >= delivered * 40, `sent bytes\n${report}`);
  assert.equal(s.get('herald_limit_rejections_total', app), 0, `no rejection yet\n${report}`);
  assert.equal(s.get('herald_slow_consumer_disconnects_total', app), 0, report);
  assert.equal(s.get('herald_cluster_adapter_up'), 1);

  // hit max_channels_per_connection (3): a raw client subscribes to 3 channels, the 4th is refused
  const raw = await pool.raw({ server });
  for (const c of chans) await raw.subscribeOk(c);
  raw.subscribe(h.uid('ops-m-extra-'));
  await h.expectError(raw, { message: /at most 3 channels/ });
  const s2 = await ops.waitMetrics(
    server,
    (x) => x.get('herald_limit_rejections_total', { ...app, limit: 'max_channels_per_connection' }) === 1,
    3000,
    'one max_channels_per_connection rejection',
  );
  assert.equal(s2.get('herald_limit_rejections_total', app), 1, s2.lines('herald_limit_rejections_total'));
  assert.equal(s2.get('herald_connections', app), N + 1);
  assert.equal(s2.get('herald_connections_opened_total', app), N + 1);
  assert.equal(s2.get('herald_subscriptions', app), M + K);
  assert.equal(s2.get('herald_channels', app), K, 'the refused channel is not occupied');

  // gauges go down when clients leave
  clients[0].disconnect();
  clients[1].disconnect();
  const s3 = await ops.waitMetrics(
    server,
    (x) => x.get('herald_connections', app) === N - 1,
    5000,
    `connections gauge back to ${N - 1}`,
  );
  assert.equal(s3.get('herald_subscriptions', app), M + K - 4, s3.lines('herald_subscriptions'));
  assert.equal(s3.get('herald_connections_opened_total', app), N + 1, 'the opened counter never goes down');
});

test('OPS-HEALTH-1 /healthz and /readyz answer 200 on both listeners; /readyz 503 draining during a shutdown', T, async (t) => {
  const server = await ops.startOps({ env: { HERALD_SERVER_DRAIN_WINDOW_MS: '3000', HERALD_SERVER_SHUTDOWN_TIMEOUT_MS: '10000' } });
  const pool = new h.Pool(server);
  t.after(() => {
    pool.closeAll();
    server.stop();
  });
  for (const base of [server.metricsBase, server.httpBase]) {
    const hz = await ops.httpGet(`${base}/healthz`);
    assert.equal(hz.status, 200, `${base}/healthz: ${hz.text}`);
    const rz = await ops.httpGet(`${base}/readyz`);
    assert.equal(rz.status, 200, `${base}/readyz: ${rz.text}`);
  }
  // enough connections that the paced drain takes the whole window
  const conns = [];
  for (let i = 0; i < 100; i += 25) {
    conns.push(...(await Promise.all(Array.from({ length: 25 }, () => pool.raw({ server })))));
  }
  const t0 = Date.now();
  server.kill('SIGTERM');
  const draining = await h.waitFor(
    async () => {
      const r = await ops.httpGet(`${server.metricsBase}/readyz`);
      return r.status === 503 ? r : false;
    },
    2500,
    '/readyz 503 on the metrics listener after SIGTERM',
  );
  assert.match(draining.text, /draining/);
  const stillOpen = conns.filter((c) => !c.closed).length;
  assert.ok(stillOpen > 0, `readiness must go off before the drain ends (${Date.now() - t0} ms after SIGTERM, ${stillOpen} open)`);
  // liveness stays up while draining
  const hz = await ops.httpGet(`${server.metricsBase}/healthz`);
  assert.equal(hz.status, 200, `healthz during drain: ${hz.text}`);
  // the server port answers during the drain too: not ready
  const late = await ops.httpGet(`${server.httpBase}/readyz`);
  assert.deepEqual(late, { status: 503, text: 'draining\n' }, 'server port /readyz during the drain');
  const r = await server.terminate(15000);
  assert.equal(r.code, 0, `exit status after SIGTERM (${JSON.stringify(r)})`);
  for (const c of conns) {
    const closed = await c.waitClose(1000);
    assert.equal(closed.code, 4200);
  }
});
