'use strict';
// FALLBACK-*: the HTTP fallback transports (xhr_streaming, xhr_polling) as pusher-js speaks them
// in Node (its bundled XMLHttpRequest), against WebSocket clients on the same server: sessions,
// subscriptions, events with socket_id exclusion, client events, presence, reconnects, abandoned
// sessions reaped, metrics by transport. The wire format is in docs/fallback-transports.md.

const { test, before, after, afterEach } = require('node:test');
const h = require('../lib');
const ops = require('../lib/ops');
const { assert } = h;

const T = { timeout: 30000 };
const TRANSPORTS = ['xhr_streaming', 'xhr_polling'];
// Short so that abandoned sessions are reaped within a test.
const SESSION_TIMEOUT_S = 2;
const app = h.DEFAULT_APP;

let server;
let pool;

before(async () => {
  server = await ops.startOps({ env: { HERALD_SERVER_FALLBACK_SESSION_TIMEOUT: String(SESSION_TIMEOUT_S), HERALD_SERVER_DRAIN_WINDOW_MS: '200' } });
  pool = new h.Pool(server);
});
afterEach(() => pool.closeAll());
after(async () => {
  if (server && server.running()) await server.terminate();
});

/** pusher-js limited to one HTTP transport, on `srv`'s port. */
function fallbackClient(transport, opts = {}, srv = server) {
  return pool.pusher({
    server: srv,
    ...opts,
    options: { enabledTransports: [transport], httpHost: '127.0.0.1', httpPort: srv.port, ...(opts.options || {}) },
  });
}

const transportOf = (c) => c.connection.connection && c.connection.connection.transport && c.connection.connection.transport.name;
const cd = (user_id, user_info) => ({ user_id, user_info });

/** Waits for `event` on `channel`, resolving with its data. */
function next(channel, event, what = event) {
  return h.withTimeout(new Promise((resolve) => channel.bind(event, (d) => resolve(d))), 10000, what);
}

for (const transport of TRANSPORTS) {
  test(`FALLBACK-1 ${transport}: connects with a socket_id, subscribes public and private channels, receives API events; socket_id excludes the sender`, T, async () => {
    const c = await fallbackClient(transport);
    assert.match(c.connection.socket_id, /^\d+\.\d+$/);
    assert.equal(transportOf(c), transport, 'connected over the fallback transport');
    const pub = await h.subscribeOk(c, h.uid('fb-pub'));
    const priv = await h.subscribeOk(c, h.uid('private-fb'));
    const ws = await pool.pusher();
    const wsPriv = await h.subscribeOk(ws, priv.name);
    const sdk = h.sdk(server);
    const gotPub = next(pub, 'ev', 'public event');
    await sdk.trigger(pub.name, 'ev', { n: 1 });
    assert.deepEqual(await gotPub, { n: 1 });
    // Excluding the fallback client's socket_id: the WebSocket client gets it, it does not.
    const seen = [];
    priv.bind('ex', (d) => seen.push(d));
    const wsGot = next(wsPriv, 'ex', 'event on the ws client');
    await sdk.trigger(priv.name, 'ex', { n: 2 }, { socket_id: c.connection.socket_id });
    assert.deepEqual(await wsGot, { n: 2 });
    // A later event arrives, so the excluded one would have arrived before it.
    const gotAfter = next(priv, 'after', 'event after the excluded one');
    await sdk.trigger(priv.name, 'after', { n: 3 });
    assert.deepEqual(await gotAfter, { n: 3 });
    assert.deepEqual(seen, [], 'the excluded socket got the event');
    // And the other way: excluding the ws client reaches the fallback client.
    const fbGot = next(priv, 'ex2', 'event on the fallback client');
    await sdk.trigger(priv.name, 'ex2', { n: 4 }, { socket_id: ws.connection.socket_id });
    assert.deepEqual(await fbGot, { n: 4 });
  });

  test(`FALLBACK-2 ${transport}: client events both ways with a WebSocket client`, T, async () => {
    const name = h.uid('private-fbce');
    const c = await fallbackClient(transport);
    const ws = await pool.pusher();
    const fb = await h.subscribeOk(c, name);
    const w = await h.subscribeOk(ws, name);
    const toWs = next(w, 'client-hi', 'client event on the ws client');
    assert.ok(fb.trigger('client-hi', { from: 'fallback' }));
    assert.deepEqual(await toWs, { from: 'fallback' });
    const toFb = next(fb, 'client-back', 'client event on the fallback client');
    assert.ok(w.trigger('client-back', { from: 'ws' }));
    assert.deepEqual(await toFb, { from: 'ws' });
  });

  test(`FALLBACK-3 ${transport}: presence members, member_added seen by a WebSocket client, member_removed once the session is abandoned and reaped`, T, async () => {
    const name = h.uid('presence-fb');
    const ws = await pool.pusher({ presenceDefault: cd('ws-user', { via: 'ws' }) });
    const w = await h.subscribeOk(ws, name);
    const c = await fallbackClient(transport, { presenceDefault: cd('fb-user', { via: transport }) });
    const added = next(w, 'pusher:member_added', 'member_added on the ws client');
    const p = await h.subscribeOk(c, name);
    assert.deepEqual(await added, { id: 'fb-user', info: { via: transport } });
    assert.equal(p.members.count, 2);
    assert.deepEqual(p.members.get('ws-user').info, { via: 'ws' });
    assert.equal(p.members.me.id, 'fb-user');
    const r = await h.sdkCall(h.sdk(server).get({ path: `/channels/${name}/users` }));
    assert.deepEqual(r.json().users.map((u) => u.id).sort(), ['fb-user', 'ws-user']);
    // pusher-js tells the server nothing when it disconnects an HTTP transport: the session
    // is abandoned and must be reaped after the timeout, as a client that went away.
    const removed = next(w, 'pusher:member_removed', 'member_removed after the session timeout');
    c.disconnect();
    assert.deepEqual(await removed, { id: 'fb-user', info: { via: transport } });
    await h.waitFor(async () => {
      const u = await h.sdkCall(h.sdk(server).get({ path: `/channels/${name}/users` }));
      return u.json().users.length === 1;
    }, 10000, 'the roster without the reaped member');
  });

  test(`FALLBACK-4 ${transport}: a session the server ends (message over the size limit, 1009) reconnects with a new socket_id and resubscribes`, T, async () => {
    const name = h.uid('private-fbre');
    const c = await fallbackClient(transport);
    const ch = await h.subscribeOk(c, name);
    const first = c.connection.socket_id;
    const errors = [];
    c.connection.bind('error', (e) => errors.push(e));
    const back = h.withTimeout(
      new Promise((resolve) => {
        c.connection.bind('state_change', ({ current }) => {
          if (current === 'connected' && c.connection.socket_id !== first) resolve();
        });
      }),
      15000,
      'reconnected after the server closed the session',
    );
    // 70,000 bytes of data: over server.max_ws_message_bytes (65,536).
    ch.trigger('client-big', { pad: 'x'.repeat(70000) });
    await back;
    assert.ok(
      errors.some((e) => e.data && e.data.code === 1009),
      `pusher:error 1009 before the close: ${JSON.stringify(errors)}`,
    );
    assert.equal(transportOf(c), transport);
    await h.waitFor(() => ch.subscribed, 10000, 'resubscribed after the reconnect');
    const got = next(ch, 'again', 'event after the reconnect');
    await h.sdk(server).trigger(name, 'again', { ok: true });
    assert.deepEqual(await got, { ok: true });
  });

  test(`FALLBACK-5 ${transport}: a server restart (SIGTERM: 4200) sends the client to the new server, where it resubscribes`, { timeout: 60000 }, async () => {
    const first = await ops.startOps({ env: { HERALD_SERVER_DRAIN_WINDOW_MS: '200' } });
    const port = first.port;
    let second = null;
    try {
      const name = h.uid('fb-restart');
      const c = await fallbackClient(transport, {}, first);
      const ch = await h.subscribeOk(c, name);
      const closed = h.withTimeout(
        new Promise((resolve) => c.connection.bind('state_change', ({ current }) => current !== 'connected' && resolve())),
        15000,
        'left the connected state on SIGTERM',
      );
      await first.terminate();
      await closed;
      second = await ops.startOps({ env: { HERALD_PORT: String(port), HERALD_SERVER_DRAIN_WINDOW_MS: '200' } });
      await h.waitState(c, 'connected', 30000);
      await h.waitFor(() => ch.subscribed, 10000, 'resubscribed on the new server');
      const got = next(ch, 'after-restart', 'event from the new server');
      await h.waitFor(async () => {
        const r = await h.sdkCall(h.sdk(second).get({ path: `/channels/${name}` }));
        return r.status === 200 && r.json().occupied;
      }, 10000, 'the subscription on the new server');
      await h.sdk(second).trigger(name, 'after-restart', { n: 1 });
      assert.deepEqual(await got, { n: 1 });
    } finally {
      pool.closeAll();
      if (second && second.running()) await second.terminate();
      if (first.running()) await first.terminate();
    }
  });
}

test('FALLBACK-6 metrics by transport: herald_fallback_sessions counts each transport and goes back to 0; herald_connections includes them', T, async () => {
  await h.waitFor(async () => (await ops.scrape(server)).get('herald_fallback_sessions') === 0, 10000, 'no fallback sessions left from earlier tests');
  const s = await fallbackClient('xhr_streaming');
  const p = await fallbackClient('xhr_polling');
  const ws = await pool.pusher();
  const m = await ops.scrape(server);
  assert.equal(m.get('herald_fallback_sessions', { app: app.id, transport: 'xhr_streaming' }), 1, m.lines('herald_fallback_sessions'));
  assert.equal(m.get('herald_fallback_sessions', { app: app.id, transport: 'xhr_polling' }), 1, m.lines('herald_fallback_sessions'));
  assert.equal(m.get('herald_connections', { app: app.id }), 3, m.lines('herald_connections'));
  s.disconnect();
  p.disconnect();
  ws.disconnect();
  await ops.waitMetrics(server, (x) => x.get('herald_fallback_sessions') === 0 && x.get('herald_connections', { app: app.id }) === 0, 10000, 'sessions reaped');
});

test('FALLBACK-7 raw requests: CORS preflight, bad xhr_send bodies, unknown sessions, the open chunk once per session', T, async () => {
  const base = `${server.httpBase}/pusher/app/${app.key}/7/abcdefgh`;
  const pre = await fetch(`${base}/xhr_send`, {
    method: 'OPTIONS',
    headers: { Origin: 'http://page.example', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type' },
  });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get('access-control-allow-origin'), 'http://page.example');
  assert.match(pre.headers.get('access-control-allow-methods'), /POST/);
  assert.match(pre.headers.get('access-control-allow-headers'), /content-type/i);
  // A send to a session nobody opened.
  const unknown = await fetch(`${base}/xhr_send`, { method: 'POST', body: '[]' });
  assert.equal(unknown.status, 404);
  // Open by polling: `o`, then the handshake in an `a` chunk.
  const open = await fetch(`${base}/xhr?protocol=7`, { method: 'POST', headers: { Origin: 'http://page.example' } });
  assert.equal(open.status, 200);
  assert.equal(open.headers.get('access-control-allow-origin'), 'http://page.example');
  const lines = (await open.text()).split('\n');
  assert.equal(lines[0], 'o');
  assert.equal(lines[1][0], 'a');
  const established = JSON.parse(JSON.parse(lines[1].slice(1))[0]);
  assert.equal(established.event, 'pusher:connection_established');
  for (const bad of ['{}', '[1]', 'nope']) {
    const r = await fetch(`${base}/xhr_send`, { method: 'POST', body: bad });
    assert.equal(r.status, 400, `body ${bad}`);
    assert.match(await r.text(), /JSON array of strings/);
  }
  const ping = await fetch(`${base}/xhr_send`, { method: 'POST', body: JSON.stringify([JSON.stringify({ event: 'pusher:ping', data: {} })]) });
  assert.equal(ping.status, 204);
  // The next poll carries the pong, without a second `o`.
  const polled = await fetch(`${base}/xhr`, { method: 'POST' });
  const body = await polled.text();
  assert.ok(!body.startsWith('o'), `opened twice: ${body}`);
  assert.equal(JSON.parse(JSON.parse(body.slice(1))[0]).event, 'pusher:pong');
  // An unknown app key is refused with a close chunk, as a WebSocket would be (4001).
  const refused = await fetch(`${server.httpBase}/pusher/app/no-such-key/1/zzzz/xhr_streaming?protocol=7`, { method: 'POST' });
  assert.match(await refused.text(), /^c\[4001,/);
});
