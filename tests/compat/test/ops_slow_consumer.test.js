'use strict';
// A client that stops reading is a slow consumer: its outbox is bounded, it is sent
// `pusher:error` 4100 and closed with 4100 (pusher-js backs off and reconnects), the close is
// counted, and clients that keep reading lose nothing. Also WS-CONNECT-8 (TLS-only apps over
// plain ws).

const test = require('node:test');
const assert = require('node:assert/strict');
const WebSocket = require('ws');
const Pusher = require('pusher');
const ops = require('../lib/ops');
const { withTimeout, waitFor } = require('../lib/wait');

const SLOW = { code: 4100, message: 'Over capacity: client is not reading its messages fast enough' };

test('OPS-SLOW-1 a client that stops reading gets pusher:error 4100 and close 4100 on the wire, is counted, and readers lose nothing', { timeout: 120000 }, async (t) => {
  const server = await ops.startOps({});
  t.after(() => server.stop());
  const channel = `slow-${process.pid}-${Date.now()}`;
  const reader = ops.bulkSubscriber(server.wsBase, channel);
  const stalled = ops.bulkSubscriber(server.wsBase, channel);
  await Promise.all([reader.subscribed, stalled.subscribed]);
  const stall = ops.stallUntilSlowConsumer(server, stalled.ws._socket);

  const api = new Pusher({ appId: 'app-id', key: 'app-key', secret: 'app-secret', host: '127.0.0.1', port: String(server.port), useTLS: false });
  const pad = 'x'.repeat(10000);
  const EVENTS = 2500; // 25 MB: more than loopback socket buffers plus the 4 MiB outbox
  let sent = 0;
  for (let i = 0; i < EVENTS && !stall.decided(); i += 10) {
    const batch = [];
    for (let j = i; j < Math.min(i + 10, EVENTS); j++) batch.push({ channel, name: 'bulk', data: `${j}:${pad}` });
    const res = await api.triggerBatch(batch);
    assert.equal(res.status, 200);
    sent += batch.length;
  }
  await withTimeout(stall.done, 15000, `one slow-consumer disconnect after ${sent} events`);

  // On the wire: the events it was sent, in order and whole, then pusher:error 4100, then the
  // close frame 4100 (a malformed frame or a close without these would fail here).
  const closed = await withTimeout(stalled.closedP, 10000, 'the stalled client to be closed');
  const tail = stalled.frames.slice(-2).map((f) => (f.event === 'bulk' ? `bulk ${f.data.slice(0, f.data.indexOf(':'))}` : f));
  assert.deepEqual(
    { errors: stalled.errors, last: tail[tail.length - 1], closed },
    { errors: [], last: { event: 'pusher:error', data: SLOW }, closed: { code: SLOW.code, reason: SLOW.message } },
    `the end of the stalled connection (after ${stalled.events.length} events; last frames ${JSON.stringify(tail)})`,
  );
  assert.deepEqual(
    stalled.events,
    Array.from({ length: stalled.events.length }, (_, i) => i),
    'the events before the close arrive in order, none missing or cut',
  );
  assert.ok(stalled.events.length < sent, `the stalled client got ${stalled.events.length} of ${sent} before the close`);

  const s = await ops.scrape(server);
  assert.equal(s.get('herald_slow_consumer_disconnects_total', { app: 'app-id' }), 1);
  assert.equal(s.get('herald_connections', { app: 'app-id' }), 1, 'only the reader stays connected');
  // The reader kept reading: it gets every accepted event.
  await waitFor(() => reader.events.length >= sent, 20000, `reader receiving all ${sent} events`);
  assert.deepEqual(reader.events, Array.from({ length: sent }, (_, i) => i));
  assert.equal(reader.closed, null, 'the reader stays connected');
});

test('WS-CONNECT-8 a TLS-only app over plain ws gets pusher:error 4000 and close 4000', { timeout: 30000 }, async (t) => {
  const server = await ops.startOps({
    config: { apps: [{ id: 'tls-app', key: 'tls-key', secret: 'tls-secret', tls_only: true }] },
  });
  t.after(() => server.stop());
  const ws = new WebSocket(`${server.wsBase}/app/tls-key?protocol=7`);
  const frames = [];
  ws.on('message', (d) => frames.push(JSON.parse(String(d))));
  const closed = await withTimeout(new Promise((r) => ws.on('close', (code, reason) => r({ code, reason: String(reason) }))), 5000, 'close');
  assert.deepEqual(frames, [{ event: 'pusher:error', data: { code: 4000, message: 'Application only accepts SSL connections, reconnect using wss://' } }]);
  assert.equal(closed.code, 4000);
});
