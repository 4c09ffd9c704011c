'use strict';
// A client that stops reading is a slow consumer: its outbox is bounded, it is closed with the
// documented code (4100, pusher-js backs off and reconnects), the close is counted, and clients
// that keep reading lose nothing. Also WS-CONNECT-8 (TLS-only apps over plain ws).

const test = require('node:test');
const assert = require('node:assert/strict');
const WebSocket = require('ws');
const Pusher = require('pusher');
const ops = require('../lib/ops');
const { withTimeout } = require('../lib/wait');

/** A raw subscriber; `pause()` stops reading from the socket (the kernel buffers then fill). */
function subscriber(server, channel) {
  const ws = new WebSocket(`${server.wsBase}/app/app-key?protocol=7`);
  const state = { ws, frames: [], events: 0, closed: null };
  const subscribed = new Promise((resolve, reject) => {
    ws.on('message', (data) => {
      const f = JSON.parse(String(data));
      state.frames.push(f);
      if (f.event === 'pusher:connection_established') {
        ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel } }));
      } else if (f.event === 'pusher_internal:subscription_succeeded') {
        resolve();
      } else if (f.event === 'bulk') {
        state.events += 1;
      }
    });
    ws.on('error', reject);
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

test('OPS-SLOW-1 a client that stops reading is closed as a slow consumer (4100), counted, and readers lose nothing', { timeout: 120000 }, async (t) => {
  const server = await ops.startOps({});
  t.after(() => server.stop());
  const channel = `slow-${process.pid}-${Date.now()}`;
  const reader = subscriber(server, channel);
  const stalled = subscriber(server, channel);
  await Promise.all([reader.subscribed, stalled.subscribed]);
  // Stop reading: frames pile up in the kernel buffers, then in the server's outbox.
  stalled.ws._socket.pause();

  const api = new Pusher({ appId: 'app-id', key: 'app-key', secret: 'app-secret', host: '127.0.0.1', port: String(server.port), useTLS: false });
  const data = 'x'.repeat(10000);
  const EVENTS = 2500; // 25 MB: more than loopback socket buffers plus the 4 MiB outbox
  let sent = 0;
  let slow = null;
  for (let i = 0; i < EVENTS; i += 10) {
    const batch = [];
    for (let j = i; j < Math.min(i + 10, EVENTS); j++) batch.push({ channel, name: 'bulk', data });
    const res = await api.triggerBatch(batch);
    assert.equal(res.status, 200);
    sent += batch.length;
    if (i % 200 === 0) {
      const s = await ops.scrape(server);
      slow = s.get('herald_slow_consumer_disconnects_total', { app: 'app-id' });
      if (slow === 1) break;
    }
  }
  const s = await ops.waitMetrics(server, (x) => x.get('herald_slow_consumer_disconnects_total', { app: 'app-id' }) === 1, 15000, 'one slow-consumer disconnect');
  assert.equal(s.get('herald_connections', { app: 'app-id' }), 1, 'only the reader stays connected');

  // The reader kept reading: it gets every accepted event.
  await withTimeout(
    (async () => {
      while (reader.events < sent) await new Promise((r) => setTimeout(r, 20));
    })(),
    20000,
    `reader receiving all ${sent} events (has ${reader.events})`,
  );
  assert.equal(reader.events, sent);
  assert.equal(reader.closed, null, 'the reader stays connected');

  // The stalled client, reading again, finds its connection closed by the server.
  stalled.ws._socket.resume();
  const closed = await withTimeout(stalled.closedP, 20000, 'the stalled client to be closed');
  assert.ok(stalled.events < sent, `the stalled client got ${stalled.events} of ${sent} before the close`);
  const err = stalled.frames.find((f) => f.event === 'pusher:error');
  if (err) assert.equal(err.data.code, 4100, JSON.stringify(err));
  if (closed.code !== 1006) assert.equal(closed.code, 4100, JSON.stringify(closed));
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
