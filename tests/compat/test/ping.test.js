'use strict';
// WS-PING-*: pusher:ping / pusher:pong, WebSocket ping frames, inactivity probe and 4201.

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

const ctx = h.harness({
  fast: {
    server: { activity_timeout: 1, pong_timeout: 1 },
    apps: [{ id: 'app-id', key: 'app-key', secret: 'app-secret' }],
  },
});
const T = { timeout: 30000 };

/** Number of server probes (WS ping frames or pusher:ping events) a raw client saw. */
function probes(c) {
  return c.pings.length + c.frames.filter((f) => f.json && f.json.event === 'pusher:ping').length;
}

test('WS-PING-1 pusher:ping -> {"event":"pusher:pong","data":"{}"} immediately (raw and pusher-js)', T, async () => {
  const c = await ctx.pool.raw();
  c.sendRaw('{"event":"pusher:ping","data":{}}');
  const pong = await c.nextJson(1000, 'pong');
  assert.deepEqual(pong, { event: 'pusher:pong', data: '{}' });
  // pusher-js, with activity_timeout 1 s, pings on its own after 1 s of silence and
  // gets its pong (otherwise it would drop the connection after its pong timeout)
  const p = await ctx.pool.pusher({ server: ctx.servers.fast, options: { pongTimeout: 1500 } });
  assert.equal(p.connection.activityTimeout, 1000);
  await h.waitFor(() => p.__messages.some((m) => m.event === 'pusher:pong'), 5000, 'pusher-js to receive a pusher:pong');
  assert.equal(p.connection.state, 'connected');
});

test('WS-PING-2 pusher:pong from the client is accepted silently', T, async () => {
  const c = await ctx.pool.raw();
  c.send({ event: 'pusher:pong', data: {} });
  c.send({ event: 'pusher:pong', data: '{}' });
  await h.expectNothingMore(c, 'no reply to pusher:pong');
  assert.equal(c.closed, null);
});

test('WS-PING-3 WebSocket ping frames answered with pong frames; any inbound frame counts as activity', T, async () => {
  const c = await ctx.pool.raw();
  c.ws.ping('payload-123');
  await c._until(() => c.pongs.length > 0, 2000, 'pong frame');
  assert.deepEqual(c.pongs, ['payload-123']);

  // Against activity_timeout 1 s / pong_timeout 1 s: a client that never answers probes
  // but keeps sending frames (WS pings) is not closed, while a silent one is.
  const s = ctx.servers.fast;
  const active = await ctx.pool.raw({ server: s, wsOptions: { autoPong: false } });
  const silent = await ctx.pool.raw({ server: s, wsOptions: { autoPong: false } });
  const timer = setInterval(() => {
    if (active.ws.readyState === 1) active.ws.ping('keep');
  }, 250);
  try {
    const closed = await silent.waitClose(8000);
    assert.equal(closed.code, 4201, `silent client: ${JSON.stringify(closed)}`);
    // outlive the silent client by a further full activity + pong window
    const until = Date.now() + 2500;
    await h.waitFor(() => active.closed || Date.now() > until, 5000, 'time to pass');
    assert.equal(active.closed, null, `active client was closed: ${JSON.stringify(active.closed)}`);
  } finally {
    clearInterval(timer);
  }
  const { pong } = await active.sync();
  assert.equal(pong.event, 'pusher:pong');
});

test('WS-PING-4 silent client is probed after activity_timeout and closed with 4201 after pong_timeout', T, async (t) => {
  const s = ctx.servers.fast;
  const ACTIVITY_MS = 1000; // the fast server's activity_timeout
  const PONG_MS = 1000; // and pong_timeout
  // How early a bound may look met: the server stamps activity, probes and closes with a
  // whole-millisecond clock (up to 1 ms each side), and the client may take the probe off the
  // socket a little later than the close (a few ms on a loaded machine; 30 runs at load 7
  // measured at most 1.8 ms short of pong_timeout). A skipped or shortened pong wait is off by
  // hundreds of milliseconds.
  const EARLY_MS = 10;
  // The server checks its connections every 250 ms (a quarter of these timeouts): a probe or a
  // close may come that much after its due time, plus delivery on a loaded machine.
  const LATE_MS = 500;
  const silent = await ctx.pool.raw({ server: s, wsOptions: { autoPong: false } });
  // When the probe (a WS ping frame and a pusher:ping, written together) and the close's
  // pusher:error arrive, on the same monotonic clock as `lastSent`.
  const at = { wsPing: null, pusherPing: null, error: null };
  silent.ws.on('ping', () => {
    if (at.wsPing === null) at.wsPing = performance.now();
  });
  silent.ws.on('message', (d) => {
    const ev = JSON.parse(d.toString()).event;
    if (ev === 'pusher:ping' && at.pusherPing === null) at.pusherPing = performance.now();
    if (ev === 'pusher:error' && at.error === null) at.error = performance.now();
  });
  // a well-behaved client answering probes (WS pong frames automatically, pusher:ping by hand)
  const good = await ctx.pool.raw({ server: s });
  good.ws.on('message', (d) => {
    if (JSON.parse(d.toString()).event === 'pusher:ping') good.send({ event: 'pusher:pong', data: {} });
  });
  // The silent client's last frame: the server reads it after this instant, so its silence
  // is measured from no earlier than here.
  const lastSent = performance.now();
  await silent.sync();
  const { error } = await h.expectErrorThenClose(silent, 4201, 'Pong reply not received', 8000);
  assert.equal(error.data.code, 4201);
  assert.ok(at.wsPing !== null && at.pusherPing !== null, `probed both ways before the close: ${JSON.stringify(at)}; pings ${silent.pings.length}`);
  assert.equal(probes(silent), 2, 'one probe (a WS ping and a pusher:ping) per silence');
  for (const f of silent.frames) {
    if (f.json && f.json.event === 'pusher:ping') assert.deepEqual(f.json, { event: 'pusher:ping', data: '{}' });
  }
  const probedAt = Math.min(at.wsPing, at.pusherPing);
  const silence = probedAt - lastSent;
  const pongWait = at.error - probedAt;
  t.diagnostic(`probe ${silence.toFixed(1)} ms after the last frame sent, 4201 ${pongWait.toFixed(1)} ms after the probe`);
  assert.ok(silence >= ACTIVITY_MS - EARLY_MS, `probed ${silence.toFixed(1)} ms after the client's last frame, before activity_timeout (${ACTIVITY_MS} ms)`);
  assert.ok(silence <= ACTIVITY_MS + LATE_MS, `probed only ${silence.toFixed(1)} ms after the client's last frame`);
  assert.ok(pongWait >= PONG_MS - EARLY_MS, `closed ${pongWait.toFixed(1)} ms after the probe, before pong_timeout (${PONG_MS} ms)`);
  assert.ok(pongWait <= PONG_MS + LATE_MS, `closed only ${pongWait.toFixed(1)} ms after the probe`);
  // the answering client survives at least two probe rounds
  await h.waitFor(() => probes(good) >= 2 || good.closed, 8000, 'two probes of the answering client');
  assert.equal(good.closed, null, `answering client closed: ${JSON.stringify(good.closed)}`);
  const { pong } = await good.sync();
  assert.equal(pong.event, 'pusher:pong');
});
