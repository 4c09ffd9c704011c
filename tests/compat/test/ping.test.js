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

test('WS-PING-4 silent client is probed after activity_timeout and closed with 4201 after pong_timeout', T, async () => {
  const s = ctx.servers.fast;
  const started = Date.now();
  const silent = await ctx.pool.raw({ server: s, wsOptions: { autoPong: false } });
  // a well-behaved client answering probes (WS pong frames automatically, pusher:ping by hand)
  const good = await ctx.pool.raw({ server: s });
  good.ws.on('message', (d) => {
    try {
      if (JSON.parse(d.toString()).event === 'pusher:ping') good.send({ event: 'pusher:pong', data: {} });
    } catch (_) {}
  });
  const { error } = await h.expectErrorThenClose(silent, 4201, 'Pong reply not received', 8000);
  const elapsed = silent.closed.at - started;
  assert.ok(probes(silent) >= 1, 'the server probed before closing');
  for (const f of silent.frames) {
    if (f.json && f.json.event === 'pusher:ping') assert.deepEqual(f.json, { event: 'pusher:ping', data: '{}' });
  }
  assert.ok(elapsed >= 1000, `closed after ${elapsed} ms, before activity_timeout (1 s) + pong_timeout could pass`);
  assert.ok(elapsed < 7000, `closed only after ${elapsed} ms`);
  assert.equal(error.data.code, 4201);
  // the answering client survives at least two probe rounds
  await h.waitFor(() => probes(good) >= 2 || good.closed, 8000, 'two probes of the answering client');
  assert.equal(good.closed, null, `answering client closed: ${JSON.stringify(good.closed)}`);
  const { pong } = await good.sync();
  assert.equal(pong.event, 'pusher:pong');
});
