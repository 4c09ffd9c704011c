'use strict';
// WS-CONNECT-*, WS-ERR-*: connection handshake, refusals and close codes.

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

const ctx = h.harness({
  multi: {
    apps: [
      { id: 'app-id', key: 'app-key', secret: 'app-secret' },
      { id: 'off-id', key: 'off-key', secret: 'off-secret', enabled: false },
    ],
  },
  quota: {
    apps: [{ id: 'app-id', key: 'app-key', secret: 'app-secret', limits: { max_connections: 2 } }],
  },
});

const T = { timeout: 20000 };

/**
 * One connection attempt: the client if established, null if it was refused over the quota
 * (pusher:error 4004 then close 4004, while the server still counts a closed connection).
 */
async function tryConnect(server) {
  const c = ctx.pool.rawOpen({ server });
  await c._until(() => c.frames.length > 0 || c.closed, 3000, 'first frame or close');
  const first = c.frames[0];
  if (first && first.json && first.json.event === 'pusher:connection_established') {
    c.socketId = JSON.parse(first.json.data).socket_id;
    return c;
  }
  await h.expectErrorThenClose(c, 4004, 'Application is over connection quota', 3000);
  return null;
}

/** Connects, retrying while the server still counts recently closed connections. */
function admitted(server) {
  return h.waitFor(() => tryConnect(server), 5000, 'a connection within the quota');
}

/** Opens a raw connection with the given query/key/path and returns it after it closed. */
async function refused(opts, server = ctx.server) {
  const c = ctx.pool.rawOpen({ server, ...opts });
  await c.waitClose(5000);
  return c;
}

test('WS-CONNECT-1 upgrade on /app/{key} with protocol, client, version, flash and unknown params', T, async () => {
  const c = await ctx.pool.raw({ query: 'protocol=7&client=js&version=8.6.0&flash=false&foo=bar&x=&utm=%20y' });
  assert.equal(c.upgradeStatus, 101);
  assert.match(c.socketId, /^\d+\.\d+$/);
  // the connection is usable: a public subscription works
  const ok = await c.subscribeOk('connect-one');
  assert.equal(ok.data, '{}');
  // params in another order and client ids of other SDKs
  const j = await ctx.pool.raw({ query: 'client=java-client&version=2.4.0&protocol=5' });
  assert.match(j.socketId, /^\d+\.\d+$/);
  // the real client: pusher-js 8 connects
  const p = await ctx.pool.pusher();
  assert.equal(p.connection.state, 'connected');
  assert.match(p.connection.socket_id, /^\d+\.\d+$/);
});

test('WS-CONNECT-2 problems are reported after a completed upgrade (101), never as HTTP 4xx', T, async () => {
  const cases = [
    { key: 'no-such-key' },
    { query: 'client=js&version=8.6.0&flash=false' },
    { query: 'protocol=abc' },
    { query: 'protocol=99' },
    { path: '/not-an-app/app-key' },
  ];
  for (const opts of cases) {
    const c = await refused(opts);
    assert.equal(c.unexpectedResponse, null, `upgrade refused with HTTP for ${JSON.stringify(opts)}: ${JSON.stringify(c.unexpectedResponse)}`);
    assert.equal(c.upgradeStatus, 101, `upgrade status for ${JSON.stringify(opts)}`);
    assert.ok(c.closed.code >= 4000 && c.closed.code < 4100, `Pusher close code for ${JSON.stringify(opts)}: ${JSON.stringify(c.closed)}`);
  }
  // disabled app too
  const d = await refused({ key: 'off-key' }, ctx.servers.multi);
  assert.equal(d.upgradeStatus, 101);
  assert.equal(d.closed.code, 4003);
});

test('WS-CONNECT-3 first frame is pusher:connection_established with string data {socket_id, activity_timeout}', T, async () => {
  const c = h.rawOpen(ctx.server);
  ctx.pool.items.push(c);
  const first = await c.nextFrame(3000, 'first frame');
  assert.equal(first.binary, false);
  const m = first.json;
  assert.deepEqual(Object.keys(m).sort(), ['data', 'event'], `members of ${first.text}`);
  assert.equal(m.event, 'pusher:connection_established');
  const data = h.stringData(m);
  assert.deepEqual(Object.keys(data).sort(), ['activity_timeout', 'socket_id']);
  assert.equal(typeof data.socket_id, 'string');
  assert.equal(typeof data.activity_timeout, 'number');
});

test('WS-CONNECT-4 socket_id matches ^\\d+\\.\\d+$ and is unique among live connections', T, async () => {
  const clients = await Promise.all(Array.from({ length: 30 }, () => ctx.pool.raw()));
  const ids = clients.map((c) => c.socketId);
  for (const id of ids) assert.match(id, /^\d+\.\d+$/);
  assert.equal(new Set(ids).size, ids.length, `duplicate socket ids: ${ids.join(',')}`);
  // the SDKs accept it: signing a private channel for it works and the server agrees
  const c = clients[0];
  const ok = await c.subscribeOk('private-unique', { app: h.DEFAULT_APP });
  assert.equal(ok.data, '{}');
});

test('WS-CONNECT-5 activity_timeout is a positive integer, 120 by default; pusher-js accepts it', T, async () => {
  const c = await ctx.pool.raw();
  const data = JSON.parse(c.frames[0].json.data);
  assert.ok(Number.isInteger(data.activity_timeout), 'integer');
  assert.equal(data.activity_timeout, 120);
  const p = await ctx.pool.pusher();
  assert.equal(p.connection.state, 'connected');
  // pusher-js derives its own activity timer from it (min(120 s, server value))
  assert.equal(p.connection.activityTimeout, 120000);
});

test('WS-CONNECT-6 unknown app key -> pusher:error 4001 then close 4001; pusher-js stops', T, async () => {
  const c = await refused({ key: 'unknown-key' });
  await h.expectErrorThenClose(c, 4001, 'Application does not exist');
  assert.equal(c.frames.filter((f) => f.json).length, 1, `only the error frame: ${c.describeFrames()}`);

  const p = ctx.pool.pusherLazy({ app: { id: 'x', key: 'unknown-key', secret: 'y' } });
  // pusher-js wraps the close in {type: 'WebSocketError', error: {type: 'PusherError', data}}
  const code = (e) => (e && e.data && e.data.code) || (e && e.error && e.error.data && e.error.data.code);
  await h.waitFor(() => p.__errors.some((e) => code(e) === 4001), 5000, 'pusher-js error 4001');
  await h.waitState(p, 'disconnected', 5000);
});

test('WS-CONNECT-7 disabled app -> pusher:error 4003 then close 4003', T, async () => {
  const c = await refused({ key: 'off-key' }, ctx.servers.multi);
  await h.expectErrorThenClose(c, 4003, 'Application disabled');
  // the enabled app of the same server works
  const ok = await ctx.pool.raw({ server: ctx.servers.multi });
  assert.match(ok.socketId, /^\d+\.\d+$/);
});

test('WS-CONNECT-9 missing protocol -> 4008, non-integer -> 4006, unsupported -> 4007', T, async () => {
  const missing = await refused({ query: 'client=js&version=8.6.0&flash=false' });
  await h.expectErrorThenClose(missing, 4008, 'No protocol version supplied');
  const noQuery = await refused({ query: null });
  await h.expectErrorThenClose(noQuery, 4008, 'No protocol version supplied');
  for (const bad of ['abc', '7.0', '7a', '']) {
    const c = await refused({ query: `protocol=${bad}&client=js` });
    if (bad === '') {
      // an empty value is not a base-10 integer either
      assert.ok([4006, 4008].includes(c.closed.code), `protocol= -> ${JSON.stringify(c.closed)}`);
      continue;
    }
    await h.expectErrorThenClose(c, 4006, 'Invalid version string format');
  }
  for (const unsupported of ['3', '8', '99']) {
    const c = await refused({ query: `protocol=${unsupported}&client=js` });
    await h.expectErrorThenClose(c, 4007, 'Unsupported protocol version');
  }
});

test('WS-CONNECT-10 protocol versions 5, 6 and 7 accepted and treated alike', T, async () => {
  for (const v of ['5', '6', '7']) {
    const c = await ctx.pool.raw({ query: `protocol=${v}&client=java-client&version=2.4.0` });
    const data = JSON.parse(c.frames[0].json.data);
    assert.match(data.socket_id, /^\d+\.\d+$/);
    assert.equal(data.activity_timeout, 120, `activity_timeout in the v${v} handshake`);
    const ok = await c.subscribeOk(`proto-${v}`);
    assert.equal(ok.data, '{}');
    const { pong } = await c.sync();
    assert.deepEqual(pong, { event: 'pusher:pong', data: '{}' });
    const ok2 = await c.subscribeOk(`private-proto-${v}`, { app: h.DEFAULT_APP });
    assert.equal(ok2.data, '{}');
  }
});

test('WS-CONNECT-11 app connection quota exceeded -> 4004; a freed slot can be reused', T, async () => {
  const s = ctx.servers.quota;
  const a = await admitted(s);
  await admitted(s);
  const third = await refused({}, s);
  await h.expectErrorThenClose(third, 4004, 'Application is over connection quota');
  // closing one connection frees its slot (the server may need a moment to notice)
  a.close();
  const again = await admitted(s);
  assert.match(again.socketId, /^\d+\.\d+$/);
});

test('WS-CONNECT-13 upgrade on an unknown path -> 101 then pusher:error 4005 and close 4005', T, async () => {
  for (const path of ['/not-an-app/app-key', '/apps/app-key', '/app', '/']) {
    const c = await refused({ path });
    assert.equal(c.upgradeStatus, 101, `upgrade status for ${path}`);
    await h.expectErrorThenClose(c, 4005, 'Path not found');
  }
});

test('WS-CONNECT-14 every server-initiated close is preceded by pusher:error with the same code and message', T, async () => {
  const cases = [
    [{ key: 'nope' }, 4001],
    [{ query: 'client=js' }, 4008],
    [{ query: 'protocol=x' }, 4006],
    [{ query: 'protocol=1' }, 4007],
    [{ path: '/nothing-here' }, 4005],
  ];
  for (const [opts, code] of cases) {
    const c = await refused(opts);
    const { closed, error } = await h.expectErrorThenClose(c, code);
    assert.equal(error.data.message, closed.reason);
    assert.ok(closed.reason.length > 0, 'non-empty close reason');
  }
  const d = await refused({ key: 'off-key' }, ctx.servers.multi);
  await h.expectErrorThenClose(d, 4003);
});

test('WS-CONNECT-15 closing a connection implicitly unsubscribes it from all channels with side effects', T, async () => {
  const app = h.DEFAULT_APP;
  const api = h.sdk(ctx.server);
  const pres = h.uid('presence-cx');
  const pub = h.uid('cx-pub');
  const watcher = await ctx.pool.raw();
  await watcher.subscribeOk(pres, { app, channelData: JSON.stringify({ user_id: 'watcher' }) });
  await watcher.subscribeOk(pub);
  await watcher.nextEvent('pusher_internal:subscription_count', pub);

  const leaver = await ctx.pool.raw();
  await leaver.subscribeOk(pres, { app, channelData: JSON.stringify({ user_id: 'leaver' }) });
  await leaver.subscribeOk(pub);
  const added = await watcher.nextEvent('pusher_internal:member_added', pres);
  assert.equal(h.stringData(added).user_id, 'leaver');
  const two = await watcher.nextEvent('pusher_internal:subscription_count', pub);
  assert.deepEqual(h.stringData(two), { subscription_count: 2 });

  leaver.close(); // abrupt TCP close, no unsubscribe sent
  const removed = await watcher.nextEvent('pusher_internal:member_removed', pres);
  assert.deepEqual(h.stringData(removed), { user_id: 'leaver' });
  const one = await watcher.nextEvent('pusher_internal:subscription_count', pub);
  assert.deepEqual(h.stringData(one), { subscription_count: 1 });

  const res = await h.sdkCall(api.get({ path: `/channels/${pres}/users` }));
  assert.equal(res.status, 200);
  assert.deepEqual(res.json(), { users: [{ id: 'watcher' }] });

  watcher.close();
  await h.waitFor(
    async () => {
      const r = await h.sdkCall(api.get({ path: `/channels/${pub}` }));
      return r.status === 200 && r.json().occupied === false;
    },
    5000,
    `${pub} unoccupied after the last connection closed`,
  );
});

test('WS-CONNECT-16 43xx codes are error events only: rate limit does not close the connection', T, async () => {
  const app = h.DEFAULT_APP;
  const ch = h.uid('private-rl');
  const a = await ctx.pool.raw();
  await a.subscribeOk(ch, { app });
  for (let i = 0; i < 25; i++) a.send({ event: 'client-burst', channel: ch, data: { i } });
  await h.expectError(a, { code: 4301, message: 'Client event rejected due to rate limit' });
  // still open and usable afterwards
  const { pong } = await a.sync();
  assert.equal(pong.event, 'pusher:pong');
  assert.equal(a.closed, null, 'connection must stay open after a 43xx error');
  // and a pusher-js client seeing the same keeps its connection
  const p = await ctx.pool.pusher();
  const pc = await h.subscribeOk(p, ch);
  for (let i = 0; i < 25; i++) pc.trigger('client-burst', { i });
  await h.waitFor(() => p.__errors.some((e) => e.data && e.data.code === 4301), 3000, 'pusher-js 4301 error');
  await a.sync(); // give the server a round trip
  assert.equal(p.connection.state, 'connected');
});

test('WS-ERR-1 pusher:error data is an object {code: int|null, message}', T, async () => {
  const c = await ctx.pool.raw();
  c.sendRaw('this is not json');
  const e1 = await h.expectError(c, { code: null });
  assert.equal(typeof e1.data, 'object');
  c.send({ event: 'nonsense-event', data: {} });
  await h.expectError(c, { code: null });
  const bad = await refused({ key: 'zzz' });
  const first = bad.frames[0].json;
  h.assertErrorFrame(first, { code: 4001 });
  assert.ok(Number.isInteger(first.data.code));
});

test('WS-ERR-2 close codes and reasons as specified (4001, 4003, 4004, 4005, 4006, 4007, 4008); 4301 does not close', T, async () => {
  const table = [
    [{ key: 'nope' }, ctx.server, 4001, 'Application does not exist'],
    [{ key: 'off-key' }, ctx.servers.multi, 4003, 'Application disabled'],
    [{ path: '/x/y' }, ctx.server, 4005, 'Path not found'],
    [{ query: 'protocol=seven' }, ctx.server, 4006, 'Invalid version string format'],
    [{ query: 'protocol=2' }, ctx.server, 4007, 'Unsupported protocol version'],
    [{ query: 'version=8.6.0' }, ctx.server, 4008, 'No protocol version supplied'],
  ];
  for (const [opts, server, code, reason] of table) {
    const c = await refused(opts, server);
    await h.expectErrorThenClose(c, code, reason);
  }
  const s = ctx.servers.quota;
  const keep = [await admitted(s), await admitted(s)];
  const over = await refused({}, s);
  await h.expectErrorThenClose(over, 4004, 'Application is over connection quota');
  // validation order (ws §1.3): the first failing step wins
  await h.expectErrorThenClose(await refused({ query: 'client=js' }, s), 4008, 'No protocol version supplied');
  keep.forEach((k) => k.close());
  await h.expectErrorThenClose(await refused({ key: 'nope', query: 'client=js' }), 4001, 'Application does not exist');
  await h.expectErrorThenClose(await refused({ key: 'off-key', query: 'protocol=abc' }, ctx.servers.multi), 4003, 'Application disabled');
  await h.expectErrorThenClose(await refused({ path: '/apps/nope', query: 'client=js' }), 4005, 'Path not found');
});
