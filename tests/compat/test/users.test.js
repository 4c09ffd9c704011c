'use strict';
// WS-USER-*, WS-WATCH-*, HTTP-TERM-*: sign-in, server-to-user channel, termination, watchlist.

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

const ctx = h.harness({
  authconn: {
    apps: [{ id: 'app-id', key: 'app-key', secret: 'app-secret', enable_user_authentication: true, user_authentication_timeout: 1 }],
  },
  smallwatch: {
    apps: [{ id: 'app-id', key: 'app-key', secret: 'app-secret', limits: { max_watchlist_size: 3 } }],
  },
});
const T = { timeout: 20000 };
const app = h.DEFAULT_APP;

/** Parsed watchlist_events payload of a frame, checking its shape. */
function watchEvents(frame) {
  assert.deepEqual(Object.keys(frame).sort(), ['data', 'event'], `watchlist frame has no channel: ${JSON.stringify(frame)}`);
  const d = h.stringData(frame);
  assert.deepEqual(Object.keys(d), ['events']);
  const out = {};
  for (const e of d.events) {
    assert.deepEqual(Object.keys(e).sort(), ['name', 'user_ids']);
    assert.ok(e.name === 'online' || e.name === 'offline', e.name);
    assert.ok(e.user_ids.length > 0, 'empty lists are omitted');
    out[e.name] = [...e.user_ids].sort();
  }
  return out;
}

test('WS-USER-1 pusher:signin verified with HMAC(secret, socket_id::user::user_data)', T, async () => {
  const c = await ctx.pool.raw();
  const ud = JSON.stringify({ id: 'u1' });
  // wrong constructions are refused
  for (const str of [`${c.socketId}:user:${ud}`, `${c.socketId}::user::{"id":"other"}`, `1.1::user::${ud}`]) {
    c.send({ event: 'pusher:signin', data: { auth: `${app.key}:${h.hmacHex(app.secret, str)}`, user_data: ud } });
    await h.expectError(c, { code: null });
  }
  const ok = await c.signin(app, ud);
  assert.equal(ok.event, 'pusher:signin_success');
  // pusher-js with an SDK-signed userAuthentication handler
  const p = await ctx.pool.pusher({ user: { id: 'u1-js', user_info: { n: 1 } } });
  p.signin();
  await h.withTimeout(p.user.signinDonePromise, 3000, 'pusher-js signin');
  assert.deepEqual(p.user.user_data, { id: 'u1-js', user_info: { n: 1 } });
});

test('WS-USER-2 user_data must be a JSON object with a non-empty string id', T, async () => {
  const c = await ctx.pool.raw();
  for (const ud of ['{"id":5}', '{"id":""}', '{"name":"no id"}', '"a string"', 'not json', '{"id":null}', '{"id":["x"]}', '[]', '["id"]']) {
    const r = await c.signin(app, ud);
    assert.equal(r.event, 'pusher:error', `user_data ${ud} must be refused, got ${JSON.stringify(r)}`);
    h.assertErrorFrame(r, { code: null });
  }
  // the connection is not signed in
  c.subscribe('#server-to-user-5');
  await h.expectError(c, { code: null, prefix: 'Cannot subscribe to #server-to-user-5' });
  const ok = await c.signin(app, '{"id":"fine","extra":{"kept":true}}');
  assert.equal(ok.event, 'pusher:signin_success');
});

test('WS-USER-3 success -> {"event":"pusher:signin_success","data":{"user_data":"<verbatim>"}}', T, async () => {
  const c = await ctx.pool.raw();
  const ud = '{"id":"u3", "user_info":{"z":1,"a":2},"url":"http:\\/\\/e.x"}';
  c.send({ event: 'pusher:signin', data: { auth: h.userAuth(app, c.socketId, ud), user_data: ud } });
  const f = await c.nextMeaningful(3000, 'signin_success');
  assert.deepEqual(f, { event: 'pusher:signin_success', data: { user_data: ud } });
  assert.equal(typeof f.data, 'object', 'data is an object');
});

test('WS-USER-4 sign-in failure -> pusher:error, connection stays open', T, async () => {
  const c = await ctx.pool.raw();
  const ud = '{"id":"u4"}';
  c.send({ event: 'pusher:signin', data: { auth: `${app.key}:${'0'.repeat(64)}`, user_data: ud } });
  await h.expectError(c, { code: null, prefix: 'Invalid signature' });
  c.send({ event: 'pusher:signin', data: { auth: `nokey:${h.hmacHex(app.secret, `${c.socketId}::user::${ud}`)}`, user_data: ud } });
  await h.expectError(c, { code: null });
  c.send({ event: 'pusher:signin', data: { user_data: ud } });
  await h.expectError(c, { code: null });
  const { pong } = await c.sync();
  assert.equal(pong.event, 'pusher:pong');
  assert.equal(c.closed, null);
  c.subscribe('#server-to-user-u4');
  await h.expectError(c, { code: null, prefix: 'Cannot subscribe to #server-to-user-u4' });
});

test('WS-USER-5 re-signin with the same id accepted; a different id rejected', T, async () => {
  const c = await ctx.pool.raw();
  assert.equal((await c.signin(app, { id: 'same' })).event, 'pusher:signin_success');
  const again = await c.signin(app, { id: 'same', user_info: { v: 2 } });
  assert.deepEqual(again, { event: 'pusher:signin_success', data: { user_data: JSON.stringify({ id: 'same', user_info: { v: 2 } }) } });
  const other = await c.signin(app, { id: 'different' });
  h.assertErrorFrame(other, { code: null });
  // still signed in as the first id
  assert.equal((await c.subscribeOk('#server-to-user-same')).data, '{}');
  c.subscribe('#server-to-user-different');
  await h.expectError(c, { code: null, prefix: 'Cannot subscribe to #server-to-user-different' });
});

test('WS-USER-6 #server-to-user-<id> subscribable (auth ignored) only when signed in as <id>', T, async () => {
  const anon = await ctx.pool.raw();
  anon.subscribe('#server-to-user-u6');
  await h.expectError(anon, { code: null, prefix: 'Cannot subscribe to #server-to-user-u6' });
  const other = await ctx.pool.raw();
  await other.signin(app, { id: 'not-u6' });
  other.subscribe('#server-to-user-u6');
  await h.expectError(other, { code: null, prefix: 'Cannot subscribe to #server-to-user-u6' });
  const me = await ctx.pool.raw();
  await me.signin(app, { id: 'u6' });
  me.send({ event: 'pusher:subscribe', data: { auth: 'garbage-is-ignored', channel: '#server-to-user-u6' } });
  assert.deepEqual(await me.nextMeaningful(), { event: 'pusher_internal:subscription_succeeded', channel: '#server-to-user-u6', data: '{}' });
  // an internal channel: no subscription_count events (the default app has them on)
  await h.expectNothingMore(me, 'no subscription_count on #server-to-user-', { ignore: () => false });
  // pusher-js subscribes to it by itself after signin
  const p = await ctx.pool.pusher({ user: { id: 'u6-js' } });
  p.signin();
  await h.waitFor(() => p.user.serverToUserChannel && p.user.serverToUserChannel.subscribed, 3000, 'pusher-js server-to-user subscription');
  assert.equal(p.user.serverToUserChannel.name, '#server-to-user-u6-js');
});

test('WS-USER-7 events published to #server-to-user-<id> reach that user\'s connections', T, async () => {
  const api = h.sdk(ctx.server);
  const c1 = await ctx.pool.raw();
  const c2 = await ctx.pool.raw();
  const stranger = await ctx.pool.raw();
  for (const c of [c1, c2]) {
    await c.signin(app, { id: 'u7' });
    await c.subscribeOk('#server-to-user-u7');
  }
  await stranger.signin(app, { id: 'u7-other' });
  await stranger.subscribeOk('#server-to-user-u7-other');
  const res = await h.sdkCall(api.sendToUser('u7', 'note', 'hi'));
  assert.equal(res.status, 200);
  for (const c of [c1, c2]) {
    // the node SDK sends a string argument as is
    assert.deepEqual(await c.nextMeaningful(), { event: 'note', channel: '#server-to-user-u7', data: 'hi' });
  }
  await api.sendToUser('u7-other', 'marker', 'm');
  await h.expectOnlyMarker(stranger, 'marker');
  // pusher-js: pusher.user.bind
  const p = await ctx.pool.pusher({ user: { id: 'u7-js' } });
  p.signin();
  await h.waitFor(() => p.user.serverToUserChannel && p.user.serverToUserChannel.subscribed, 3000, 'server-to-user subscription');
  const got = h.once(p.user, 'greeting');
  await api.sendToUser('u7-js', 'greeting', { hello: 'you' });
  assert.deepEqual(await got, { hello: 'you' });
});

test('WS-USER-8 terminate: every signed-in connection of the user gets pusher:error 4009 then close 4009', T, async () => {
  const api = h.sdk(ctx.server);
  const s1 = await ctx.pool.raw();
  const s2 = await ctx.pool.raw();
  for (const c of [s1, s2]) await c.signin(app, { id: 'u8' });
  // s1 is also a presence member: its termination has the usual side effects
  const room = h.uid('presence-u8room');
  const witness = await ctx.pool.raw();
  await witness.subscribeOk(room, { app, channelData: JSON.stringify({ user_id: 'witness' }) });
  await s1.subscribeOk(room, { app, channelData: JSON.stringify({ user_id: 'u8' }) });
  await witness.nextEvent('pusher_internal:member_added', room);
  // presence-only "u8" (not signed in) and another signed-in user are unaffected
  const presOnly = await ctx.pool.raw();
  await presOnly.subscribeOk(h.uid('presence-u8'), { app, channelData: JSON.stringify({ user_id: 'u8' }) });
  const other = await ctx.pool.raw();
  await other.signin(app, { id: 'u8-other' });
  const p = await ctx.pool.pusher({ user: { id: 'u8' } });
  p.signin();
  await h.withTimeout(p.user.signinDonePromise, 3000, 'pusher-js signin');

  const res = await h.sdkCall(api.terminateUserConnections('u8'));
  assert.equal(res.status, 200);
  for (const c of [s1, s2]) await h.expectErrorThenClose(c, 4009, 'Connection is unauthorized');
  await h.waitState(p, 'disconnected', 3000);
  assert.deepEqual(h.stringData(await witness.nextEvent('pusher_internal:member_removed', room)), { user_id: 'u8' });
  for (const c of [presOnly, other]) {
    const { pong } = await c.sync();
    assert.equal(pong.event, 'pusher:pong');
    assert.equal(c.closed, null);
  }
});

test('WS-USER-9 authorized-connections mode: no signin/private subscription within the timeout -> 4009', T, async () => {
  const s = ctx.servers.authconn;
  const idle = await ctx.pool.raw({ server: s });
  const publicOnly = await ctx.pool.raw({ server: s });
  await publicOnly.subscribeOk('just-public');
  const signed = await ctx.pool.raw({ server: s });
  assert.equal((await signed.signin(app, { id: 'u9' })).event, 'pusher:signin_success');
  const priv = await ctx.pool.raw({ server: s });
  await priv.subscribeOk('private-u9', { app });
  const pres = await ctx.pool.raw({ server: s });
  await pres.subscribeOk('presence-u9', { app, channelData: JSON.stringify({ user_id: 'p9' }) });

  await h.expectErrorThenClose(idle, 4009, 'Connection is unauthorized', 6000);
  await h.expectErrorThenClose(publicOnly, 4009, 'Connection is unauthorized', 6000);
  // the authorized ones outlive the timeout
  const deadline = Date.now() + 1500;
  await h.waitFor(() => Date.now() > deadline || signed.closed || priv.closed || pres.closed, 4000, 'time to pass');
  for (const c of [signed, priv, pres]) {
    assert.equal(c.closed, null, `authorized connection closed: ${JSON.stringify(c.closed)}`);
    const { pong } = await c.sync();
    assert.equal(pong.event, 'pusher:pong');
  }
});

test('WS-WATCH-1 watchlist from user_data; more than the limit -> first ones kept + pusher:error 4302', T, async () => {
  // default limit 100
  const c = await ctx.pool.raw();
  const ids = Array.from({ length: 101 }, (_, i) => `w1-${String(i).padStart(3, '0')}`);
  const r = await c.signin(app, { id: 'w1', watchlist: ids });
  assert.equal(r.event, 'pusher:signin_success', JSON.stringify(r));
  const err = await c.nextEvent('pusher:error');
  h.assertErrorFrame(err, { code: 4302, prefix: 'Watchlist limit exceeded' });
  const wl = watchEvents(await c.nextEvent('pusher_internal:watchlist_events'));
  assert.deepEqual(wl, { offline: ids.slice(0, 100) });
  assert.equal(c.closed, null);
  // configured limit 3
  const s = ctx.servers.smallwatch;
  const online = await ctx.pool.raw({ server: s });
  await online.signin(app, { id: 'x4' });
  const d = await ctx.pool.raw({ server: s });
  const r2 = await d.signin(app, { id: 'w1b', watchlist: ['x1', 'x2', 'x3', 'x4'] });
  assert.equal(r2.event, 'pusher:signin_success');
  h.assertErrorFrame(await d.nextEvent('pusher:error'), { code: 4302 });
  assert.deepEqual(watchEvents(await d.nextEvent('pusher_internal:watchlist_events')), { offline: ['x1', 'x2', 'x3'] });
  // x4 is not watched: its going offline is not reported
  online.close();
  await h.expectNothingMore(d, 'x4 is beyond the watchlist limit');
  // within the limit: no error
  const e = await ctx.pool.raw({ server: s });
  await e.signin(app, { id: 'w1c', watchlist: ['x1', 'x2', 'x3'] });
  await e.nextEvent('pusher_internal:watchlist_events');
  await h.expectNothingMore(e, 'no 4302 within the limit');
});

test('WS-WATCH-2 statuses as pusher_internal:watchlist_events {"events":[{name,user_ids}]} without channel', T, async () => {
  const on1 = await ctx.pool.raw();
  const on2 = await ctx.pool.raw();
  await on1.signin(app, { id: 'w2-on1' });
  await on2.signin(app, { id: 'w2-on2' });
  const w = await ctx.pool.raw();
  await w.signin(app, { id: 'w2', watchlist: ['w2-on1', 'w2-off', 'w2-on2'] });
  const f = await w.nextEvent('pusher_internal:watchlist_events');
  assert.deepEqual(watchEvents(f), { online: ['w2-on1', 'w2-on2'], offline: ['w2-off'] });
  // pusher-js emits each element on pusher.user.watchlist
  const p = await ctx.pool.pusher({ user: { id: 'w2-js', watchlist: ['w2-on1', 'w2-none'] } });
  const onl = h.once(p.user.watchlist, 'online');
  const off = h.once(p.user.watchlist, 'offline');
  p.signin();
  assert.deepEqual(await onl, { name: 'online', user_ids: ['w2-on1'] });
  assert.deepEqual(await off, { name: 'offline', user_ids: ['w2-none'] });
});

test('WS-WATCH-3 initial statuses right after signin; transitions pushed to all watchers\' signed-in connections', T, async () => {
  const w1 = await ctx.pool.raw();
  const w2 = await ctx.pool.raw();
  for (const w of [w1, w2]) {
    const r = await w.signin(app, { id: 'w3-watcher', watchlist: ['w3-a'] });
    assert.equal(r.event, 'pusher:signin_success');
    // the initial status comes right after signin_success
    const next = await w.nextMeaningful(3000, 'initial watchlist status');
    assert.equal(next.event, 'pusher_internal:watchlist_events');
    assert.deepEqual(watchEvents(next), { offline: ['w3-a'] });
  }
  // an observer on a presence channel tells when the server has processed a1's close
  const probe = h.uid('presence-w3');
  const obs = await ctx.pool.raw();
  await obs.subscribeOk(probe, { app, channelData: JSON.stringify({ user_id: 'obs' }) });
  const a1 = await ctx.pool.raw();
  await a1.signin(app, { id: 'w3-a' });
  await a1.subscribeOk(probe, { app, channelData: JSON.stringify({ user_id: 'a1-probe' }) });
  for (const w of [w1, w2]) assert.deepEqual(watchEvents(await w.nextEvent('pusher_internal:watchlist_events')), { online: ['w3-a'] });
  // a second connection of w3-a: no transition
  const a2 = await ctx.pool.raw();
  await a2.signin(app, { id: 'w3-a' });
  a1.close();
  await obs.nextEvent('pusher_internal:member_removed', probe);
  await h.expectNothingMore(w1, 'no transition while w3-a is still online elsewhere');
  a2.close();
  for (const w of [w1, w2]) assert.deepEqual(watchEvents(await w.nextEvent('pusher_internal:watchlist_events')), { offline: ['w3-a'] });
  // a connection of the watcher that is not signed in gets nothing
  const anon = await ctx.pool.raw();
  const a3 = await ctx.pool.raw();
  await a3.signin(app, { id: 'w3-a' });
  await w1.nextEvent('pusher_internal:watchlist_events');
  await h.expectNothingMore(anon, 'not signed in: no watchlist events');
});

test('HTTP-TERM-1 POST /apps/{id}/users/{uid}/terminate_connections body {} -> 200 {} and closes the user\'s connections', T, async () => {
  const api = h.sdk(ctx.server);
  const none = await h.sdkCall(api.terminateUserConnections('nobody-here'));
  assert.equal(none.status, 200);
  assert.deepEqual(none.json(), {});
  const c = await ctx.pool.raw();
  await c.signin(app, { id: 't1' });
  const res = await h.sdkCall(api.post({ path: '/users/t1/terminate_connections', body: {} }));
  assert.equal(res.status, 200);
  assert.equal(res.text.trim(), '{}');
  await h.expectErrorThenClose(c, 4009, 'Connection is unauthorized');
});

test('HTTP-TERM-2 POST /users/{uid}/terminate_connections (python SDK path, no /apps prefix) routed by auth_key', T, async () => {
  const c = await ctx.pool.raw();
  await c.signin(app, { id: 't2' });
  const res = await h.signedFetch(ctx.server.httpBase, { app, method: 'POST', path: '/users/t2/terminate_connections', body: '{}' });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json(), {});
  await h.expectErrorThenClose(c, 4009, 'Connection is unauthorized');
  // bad signature on that route -> 401, nobody closed
  const d = await ctx.pool.raw();
  await d.signin(app, { id: 't2b' });
  const bad = await h.signedFetch(ctx.server.httpBase, { app, method: 'POST', path: '/users/t2b/terminate_connections', body: '{}', signSecret: 'wrong' });
  assert.equal(bad.status, 401);
  const { pong } = await d.sync();
  assert.equal(pong.event, 'pusher:pong');
});
