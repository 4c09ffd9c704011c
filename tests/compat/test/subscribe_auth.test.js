'use strict';
// WS-SUB-*, WS-AUTH-*: subscriptions, channel names/types, authorization signatures.

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

// The documented example credentials (websocket-protocol.md §4.4).
const DOCS = { id: 'docs-id', key: '278d425bdf160c739803', secret: '7ad3773142a6692b25b8' };
const OTHER = { id: 'other-id', key: 'other-key', secret: 'other-secret' };
const COMPAT = { id: 'compat-id', key: 'compat-key', secret: 'compat-secret', emit_subscription_error: true };

const ctx = h.harness({
  multi: { apps: [{ ...h.DEFAULT_APP }, OTHER, DOCS, COMPAT] },
});
const T = { timeout: 20000 };
const app = h.DEFAULT_APP;

test('WS-SUB-1 public subscribe (auth "") -> pusher_internal:subscription_succeeded with data "{}"', T, async () => {
  const c = await ctx.pool.raw();
  c.sendRaw('{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}');
  const ok = await c.nextJson(3000, 'subscription_succeeded');
  assert.deepEqual(ok, { event: 'pusher_internal:subscription_succeeded', channel: 'my-channel', data: '{}' });
  // without the auth member too
  c.send({ event: 'pusher:subscribe', data: { channel: 'my-channel-2' } });
  const ok2 = await c.nextMeaningful(3000, 'subscription_succeeded');
  assert.deepEqual(ok2, { event: 'pusher_internal:subscription_succeeded', channel: 'my-channel-2', data: '{}' });
  // pusher-js marks the channel subscribed
  const p = await ctx.pool.pusher();
  const ch = await h.subscribeOk(p, 'my-channel');
  assert.equal(ch.subscribed, true);
});

test('WS-SUB-2 channel names: [A-Za-z0-9_-=@,.;]+ up to 200 chars accepted; others -> "Invalid channel name \'…\'"', T, async () => {
  const c = await ctx.pool.raw();
  const good = ['AZaz09_-=@,.;', 'a', 'x'.repeat(200), 'pub'.padEnd(200, '-')];
  for (const name of good) {
    const ok = await c.subscribeOk(name);
    assert.equal(ok.data, '{}');
  }
  const bad = ['has space', 'slash/name', 'é-accent', 'star*', '#reserved', '#server-to-user', 'x'.repeat(201), 'colon:name', ''];
  for (const name of bad) {
    c.subscribe(name);
    const e = await c.nextMeaningful(3000, `reply for ${JSON.stringify(name)}`);
    h.assertErrorFrame(e, { code: null, prefix: `Invalid channel name '${name}` });
  }
  await h.expectNothingMore(c, 'no subscription_succeeded for invalid names');
});

test('WS-SUB-3 channel type decided by prefix (private-encrypted-cache-, private-encrypted-, private-cache-, private-, presence-cache-, presence-, cache-, public)', T, async () => {
  const c = await ctx.pool.raw();
  const cd = JSON.stringify({ user_id: 'sub3' });
  const needsAuth = ['private-encrypted-cache-t3', 'private-encrypted-t3', 'private-cache-t3', 'private-t3', 'presence-cache-t3', 'presence-t3'];
  for (const name of needsAuth) {
    c.subscribe(name);
    const e = await c.nextMeaningful(3000, `reply for ${name}`);
    h.assertErrorFrame(e, { code: null, message: `Auth info required to subscribe to ${name}` });
  }
  // public channels, even when "private"/"presence" appears later or without the dash
  for (const name of ['cache-t3', 'my-private-t3', 'privatet3', 'presencet3', 'public-presence-t3', 'Private-t3']) {
    const ok = await c.subscribeOk(name);
    assert.equal(ok.data, '{}');
  }
  // cache types get a cache_miss (nothing cached yet), non-cache types do not
  const types = [
    ['private-encrypted-cache-t3b', true, false],
    ['private-encrypted-t3b', false, false],
    ['private-cache-t3b', true, false],
    ['private-t3b', false, false],
    ['presence-cache-t3b', true, true],
    ['presence-t3b', false, true],
    ['cache-t3b', true, false],
    ['public-t3b', false, false],
  ];
  for (const [name, cache, presence] of types) {
    const ok = await c.subscribeOk(name, { app, channelData: presence ? cd : undefined });
    if (presence) assert.ok('presence' in h.stringData(ok), `${name} is a presence channel`);
    else assert.equal(ok.data, '{}', `${name} is not a presence channel`);
    const { between } = await c.sync();
    const misses = between.filter((m) => m.event === 'pusher:cache_miss' && m.channel === name);
    assert.equal(misses.length, cache ? 1 : 0, `${name} cache_miss count (frames ${JSON.stringify(between)})`);
  }
  // client events: refused on public cache- channels, accepted on private-cache-
  c.send({ event: 'client-t', channel: 'cache-t3b', data: {} });
  await h.expectError(c, { code: null, message: 'Client event rejected - only supported on private and presence channels' });
  const peer = await ctx.pool.raw();
  await peer.subscribeOk('private-cache-t3b', { app });
  c.send({ event: 'client-t', channel: 'private-cache-t3b', data: {} });
  assert.deepEqual(await peer.nextEvent('client-t'), { event: 'client-t', channel: 'private-cache-t3b', data: {} });
  await h.expectNothingMore(c, 'accepted client event on private-cache-');
});

test('WS-SUB-4 subscription_succeeded is sent for every successful subscription of every type', T, async () => {
  const c = await ctx.pool.raw();
  await c.signin(app, { id: 'sub4' });
  const cd = JSON.stringify({ user_id: 'sub4', user_info: { k: 'v' } });
  const names = [
    'pub-s4', 'cache-s4', 'private-s4', 'private-cache-s4', 'private-encrypted-s4', 'private-encrypted-cache-s4',
    'presence-s4', 'presence-cache-s4', '#server-to-user-sub4',
  ];
  for (const name of names) {
    const ok = await c.subscribeOk(name, { app, channelData: name.startsWith('presence-') ? cd : undefined });
    assert.equal(ok.event, 'pusher_internal:subscription_succeeded');
    assert.equal(ok.channel, name);
    assert.equal(typeof ok.data, 'string');
    if (name.startsWith('presence-')) {
      assert.deepEqual(h.stringData(ok), { presence: { ids: ['sub4'], hash: { sub4: { k: 'v' } }, count: 1 } });
    } else {
      assert.equal(ok.data, '{}');
    }
  }
  // pusher-js marks each kind subscribed (encrypted ones need the encryption build)
  const p = await ctx.pool.pusher({ presenceDefault: { user_id: 'js4' } });
  for (const name of ['pub-s4-js', 'private-s4-js', 'presence-s4-js', 'cache-s4-js']) {
    const ch = await h.subscribeOk(p, name);
    assert.equal(ch.subscribed, true, name);
  }
});

test('WS-SUB-5 missing data.channel -> pusher:error code null "Missing parameter: data.channel"', T, async () => {
  const c = await ctx.pool.raw();
  for (const data of [{}, { auth: '' }, { channel: 5 }, { channel: null }]) {
    c.send({ event: 'pusher:subscribe', data });
    const e = await c.nextJson(3000, `reply for ${JSON.stringify(data)}`);
    h.assertErrorFrame(e, { code: null, message: 'Missing parameter: data.channel' });
  }
  c.send({ event: 'pusher:subscribe' });
  const e = await c.nextJson(3000, 'reply for a subscribe without data');
  h.assertErrorFrame(e, { code: null });
  const { pong } = await c.sync();
  assert.equal(pong.event, 'pusher:pong');
});

test('WS-SUB-6 duplicate subscribe -> "Existing subscription to <channel>", no state change', T, async () => {
  const api = h.sdk(ctx.server);
  const ch = h.uid('dup');
  const c = await ctx.pool.raw();
  await c.subscribeOk(ch);
  c.subscribe(ch);
  await h.expectError(c, { code: null, message: `Existing subscription to ${ch}` });
  await h.expectNothingMore(c, 'no second subscription_succeeded');
  const info = await h.sdkCall(api.get({ path: `/channels/${ch}`, params: { info: 'subscription_count' } }));
  assert.deepEqual(info.json(), { occupied: true, subscription_count: 1 });
  await api.trigger(ch, 'once', 'x');
  await api.trigger(ch, 'marker', 'm');
  const first = await c.nextMeaningful(3000, 'event');
  assert.equal(first.event, 'once');
  await h.expectOnlyMarker(c, 'marker');
  // a duplicate on a private channel, even with a valid signature
  const p = h.uid('private-dup');
  await c.subscribeOk(p, { app });
  c.subscribe(p, { auth: h.channelAuth(app, c.socketId, p) });
  await h.expectError(c, { code: null, message: `Existing subscription to ${p}` });
});

test('WS-SUB-7 pusher:unsubscribe: no reply, unknown channel ignored, no further events', T, async () => {
  const api = h.sdk(ctx.server);
  const gone = h.uid('unsub');
  const stay = h.uid('stay');
  const c = await ctx.pool.raw();
  await c.subscribeOk(gone);
  await c.subscribeOk(stay);
  c.unsubscribe(gone);
  await h.expectNothingMore(c, 'unsubscribe has no reply');
  c.unsubscribe('never-subscribed');
  await h.expectNothingMore(c, 'unsubscribe of an unknown channel is ignored');
  await api.trigger(gone, 'late', 'x');
  await api.trigger(stay, 'marker', 'm');
  await h.expectOnlyMarker(c, 'marker');
  // pusher-js: unsubscribe, then nothing more on that channel
  const p = await ctx.pool.pusher();
  const pch = await h.subscribeOk(p, gone);
  const pstay = await h.subscribeOk(p, stay);
  const got = [];
  pch.bind('late2', (d) => got.push(d));
  p.unsubscribe(gone);
  const marker = h.nextEvent(pstay, 'marker2');
  await h.waitFor(async () => {
    const r = await h.sdkCall(api.get({ path: `/channels/${gone}` }));
    return r.json().occupied === false;
  }, 3000, 'server to process the pusher-js unsubscribe');
  await api.trigger(gone, 'late2', 'x');
  await api.trigger(stay, 'marker2', 'm');
  await marker;
  assert.deepEqual(got, []);
});

test('WS-SUB-8 events are delivered only to connections whose subscription succeeded', T, async () => {
  const api = h.sdk(ctx.server);
  const priv = h.uid('private-s8');
  const pres = h.uid('presence-s8');
  const marker = h.uid('s8-marker');
  const c = await ctx.pool.raw();
  await c.subscribeOk(marker);
  c.subscribe(priv, { auth: `${app.key}:${'0'.repeat(64)}` });
  await h.expectError(c, { code: null, prefix: 'Invalid signature' });
  c.subscribe(pres, { auth: h.channelAuth(app, c.socketId, pres) }); // no channel_data
  await h.expectError(c, { code: null });
  await api.trigger([priv, pres], 'nope', 'x');
  await api.trigger(marker, 'marker', 'm');
  await h.expectOnlyMarker(c, 'marker');
});

test('WS-AUTH-1 private and encrypted channels: auth = key:hex(HMAC(secret, "socket_id:channel"))', T, async () => {
  const c = await ctx.pool.raw();
  for (const ch of ['private-a1', 'private-encrypted-a1', 'private-cache-a1', 'private-encrypted-cache-a1']) {
    c.subscribe(ch, { auth: `${app.key}:${h.hmacHex(app.secret, `${c.socketId}:${ch}`)}` });
    const ok = await c.nextEvent('pusher_internal:subscription_succeeded', ch);
    assert.equal(ok.data, '{}');
  }
  // signed for another socket id -> refused
  const other = await ctx.pool.raw();
  const ch = 'private-a1-other';
  c.subscribe(ch, { auth: h.channelAuth(app, other.socketId, ch) });
  await h.expectError(c, { code: null, message: new RegExp(`^Invalid signature: Expected HMAC SHA256 hex digest of ${c.socketId.replace('.', '\\.')}:${ch}, but got `) });
  // via pusher-js with an SDK-signed custom handler
  const p = await ctx.pool.pusher();
  const pch = await h.subscribeOk(p, 'private-a1-js');
  assert.equal(pch.subscribed, true);
});

test('WS-AUTH-2 presence: signature over socket_id:channel:channel_data using the raw channel_data', T, async () => {
  const c = await ctx.pool.raw();
  const ch = h.uid('presence-a2');
  const raw = '{ "user_id" : "a2",\n "user_info" : {"b":2, "a":1} }';
  c.subscribe(ch, { auth: h.channelAuth(app, c.socketId, ch, raw), channel_data: raw });
  const ok = await c.nextEvent('pusher_internal:subscription_succeeded', ch);
  assert.deepEqual(h.stringData(ok).presence.ids, ['a2']);
  // same auth with a re-serialized (compact) channel_data -> refused, message names the raw string
  const ch2 = h.uid('presence-a2b');
  const compact = JSON.stringify(JSON.parse(raw));
  const sig = h.hmacHex(app.secret, `${c.socketId}:${ch2}:${raw}`);
  c.subscribe(ch2, { auth: `${app.key}:${sig}`, channel_data: compact });
  await h.expectError(c, {
    code: null,
    message: `Invalid signature: Expected HMAC SHA256 hex digest of ${c.socketId}:${ch2}:${compact}, but got ${sig}`,
  });
  // pusher-js with presence data from the SDK
  const p = await ctx.pool.pusher({ presenceDefault: { user_id: 'a2-js', user_info: { n: 'x' } } });
  const pch = await h.subscribeOk(p, h.uid('presence-a2js'));
  assert.equal(pch.members.me.id, 'a2-js');
  assert.deepEqual(pch.members.me.info, { n: 'x' });
});

test('WS-AUTH-3 presence without channel_data on a signed-in connection: signature over socket_id:channel, identity from sign-in', T, async () => {
  const c = await ctx.pool.raw();
  const s = await c.signin(app, { id: 'a3', user_info: { name: 'Signed In' } });
  assert.equal(s.event, 'pusher:signin_success');
  const ch = h.uid('presence-a3');
  c.subscribe(ch, { auth: h.channelAuth(app, c.socketId, ch) });
  const ok = await c.nextEvent('pusher_internal:subscription_succeeded', ch);
  assert.deepEqual(h.stringData(ok), { presence: { ids: ['a3'], hash: { a3: { name: 'Signed In' } }, count: 1 } });
  // another member sees the signed-in identity
  const b = await ctx.pool.raw();
  const okb = await b.subscribeOk(ch, { app, channelData: JSON.stringify({ user_id: 'b3' }) });
  assert.deepEqual(h.stringData(okb).presence.hash.a3, { name: 'Signed In' });
  // channel_data wins when both exist
  const ch2 = h.uid('presence-a3b');
  const cd = JSON.stringify({ user_id: 'override', user_info: { o: 1 } });
  const ok2 = await c.subscribeOk(ch2, { app, channelData: cd });
  assert.deepEqual(h.stringData(ok2), { presence: { ids: ['override'], hash: { override: { o: 1 } }, count: 1 } });
});

test('WS-AUTH-4 the key part must be a key of this app; signature compared exactly', T, async () => {
  const s = ctx.servers.multi;
  const c = await ctx.pool.raw({ server: s });
  // another app's key with that app's valid signature -> refused
  c.subscribe('private-a4', { auth: h.channelAuth(OTHER, c.socketId, 'private-a4') });
  await h.expectError(c, { code: null, message: `Invalid key in subscription auth data: '${OTHER.key}'` });
  // own key, signature made with another app's secret -> refused
  const wrongSig = h.hmacHex(OTHER.secret, `${c.socketId}:private-a4`);
  c.subscribe('private-a4', { auth: `${app.key}:${wrongSig}` });
  await h.expectError(c, { code: null, prefix: 'Invalid signature: Expected HMAC SHA256 hex digest of ' });
  // a one-character change, a truncated signature, an upper-cased key
  const good = h.hmacHex(app.secret, `${c.socketId}:private-a4`);
  const flipped = good.slice(0, -1) + (good.endsWith('0') ? '1' : '0');
  for (const auth of [`${app.key}:${flipped}`, `${app.key}:${good.slice(0, 63)}`, `${app.key}:${good}00`]) {
    c.subscribe('private-a4', { auth });
    await h.expectError(c, { code: null, prefix: 'Invalid signature' });
  }
  c.subscribe('private-a4', { auth: `${app.key.toUpperCase()}:${good}` });
  await h.expectError(c, { code: null, message: `Invalid key in subscription auth data: '${app.key.toUpperCase()}'` });
  // the right one still works afterwards
  const ok = await c.subscribeOk('private-a4', { app });
  assert.equal(ok.data, '{}');
  // and the other app's key works on the other app
  const o = await ctx.pool.raw({ server: s, key: OTHER.key });
  assert.equal((await o.subscribeOk('private-a4', { app: OTHER })).data, '{}');
});

test('WS-AUTH-5 no or empty auth -> "Auth info required to subscribe to <channel>"', T, async () => {
  const c = await ctx.pool.raw();
  for (const ch of ['private-a5', 'presence-a5', 'private-encrypted-a5']) {
    c.send({ event: 'pusher:subscribe', data: { channel: ch } });
    await h.expectError(c, { code: null, message: `Auth info required to subscribe to ${ch}` });
    c.send({ event: 'pusher:subscribe', data: { channel: ch, auth: '' } });
    await h.expectError(c, { code: null, message: `Auth info required to subscribe to ${ch}` });
  }
  await h.expectNothingMore(c);
});

test('WS-AUTH-6 auth without ":" -> "Auth value for subscription to <channel> is invalid: should be of format \'key:signature\'"', T, async () => {
  const c = await ctx.pool.raw();
  for (const ch of ['private-a6', 'presence-a6']) {
    c.subscribe(ch, { auth: 'no-colon-here', channel_data: JSON.stringify({ user_id: 'x' }) });
    await h.expectError(c, {
      code: null,
      message: `Auth value for subscription to ${ch} is invalid: should be of format 'key:signature'`,
    });
  }
});

test('WS-AUTH-7 wrong key -> "Invalid key in subscription auth data: \'<key>\'"', T, async () => {
  const c = await ctx.pool.raw();
  c.subscribe('private-a7', { auth: `wrong-key:${h.hmacHex(app.secret, `${c.socketId}:private-a7`)}` });
  await h.expectError(c, { code: null, message: "Invalid key in subscription auth data: 'wrong-key'" });
  c.subscribe('private-a7', { auth: `:${'a'.repeat(64)}` });
  await h.expectError(c, { code: null, message: "Invalid key in subscription auth data: ''" });
});

test('WS-AUTH-8 bad signature -> "Invalid signature: Expected HMAC SHA256 hex digest of <string>, but got <sig>"; no subscription; connection kept', T, async () => {
  const api = h.sdk(ctx.server);
  const c = await ctx.pool.raw();
  const ch = h.uid('private-a8');
  c.subscribe(ch, { auth: `${app.key}:0000` });
  await h.expectError(c, { code: null, message: `Invalid signature: Expected HMAC SHA256 hex digest of ${c.socketId}:${ch}, but got 0000` });
  const pres = h.uid('presence-a8');
  const cd = JSON.stringify({ user_id: 'a8' });
  c.subscribe(pres, { auth: `${app.key}:deadbeef`, channel_data: cd });
  await h.expectError(c, { code: null, message: `Invalid signature: Expected HMAC SHA256 hex digest of ${c.socketId}:${pres}:${cd}, but got deadbeef` });
  // not subscribed: not occupied, nothing delivered, connection open
  const r = await h.sdkCall(api.get({ path: `/channels/${ch}` }));
  assert.deepEqual(r.json(), { occupied: false });
  const { pong } = await c.sync();
  assert.equal(pong.event, 'pusher:pong');
  // pusher-js: a bad signature is a connection-level error, the connection stays up
  const p = await ctx.pool.pusher({ authorize: (params, cb) => cb(null, { auth: `${app.key}:${'1'.repeat(64)}` }) });
  p.subscribe(h.uid('private-a8js'));
  await h.waitFor(() => p.__errors.some((e) => e.data && /^Invalid signature/.test(e.data.message)), 3000, 'pusher-js error');
  assert.equal(p.connection.state, 'connected');
});

test('WS-AUTH-9 emit_subscription_error: channel-scoped pusher:subscription_error {type,error,status} in addition to pusher:error', T, async () => {
  const s = ctx.servers.multi;
  const c = await ctx.pool.raw({ server: s, key: COMPAT.key });
  c.subscribe('private-a9', { auth: `${COMPAT.key}:${'0'.repeat(64)}` });
  await h.expectError(c, { code: null, prefix: 'Invalid signature' });
  const se = await c.nextEvent('pusher:subscription_error', 'private-a9');
  assert.equal(typeof se.data, 'object');
  assert.equal(se.data.type, 'AuthError');
  assert.equal(se.data.status, 401);
  assert.equal(typeof se.data.error, 'string');
  assert.ok(se.data.error.length > 0);
  // pusher-js re-emits it on the channel
  const p = await ctx.pool.pusher({
    server: s,
    app: COMPAT,
    authorize: (params, cb) => cb(null, { auth: `${COMPAT.key}:${'2'.repeat(64)}` }),
  });
  const ch = p.subscribe('private-a9js');
  const err = await h.nextEvent(ch, 'pusher:subscription_error');
  assert.equal(err.data.type, 'AuthError');
  assert.equal(err.data.status, 401);
  // off by default: only the pusher:error
  const d = await ctx.pool.raw({ server: s });
  d.subscribe('private-a9', { auth: `${app.key}:${'0'.repeat(64)}` });
  await h.expectError(d, { code: null, prefix: 'Invalid signature' });
  await h.expectNothingMore(d, 'no pusher:subscription_error when the flag is off');
});

test('WS-AUTH-10 worked vectors of ws §4.4 verify (signer and server agree)', T, async () => {
  // the signer used by these tests reproduces the documented vectors
  assert.equal(h.hmacHex(DOCS.secret, '1234.1234:private-foobar'), '58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4');
  assert.equal(
    h.hmacHex(DOCS.secret, '1234.1234:presence-foobar:{"user_id":10,"user_info":{"name":"Mr. Channels"}}'),
    '31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80',
  );
  assert.equal(h.hmacHex(DOCS.secret, '1234.1234::user::{"id":"12345"}'), '4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba');
  // the server, configured with the documented key/secret, accepts the same constructions
  const s = ctx.servers.multi;
  const c = await ctx.pool.raw({ server: s, key: DOCS.key });
  const ok1 = await c.subscribeOk('private-foobar', { app: DOCS });
  assert.equal(ok1.data, '{}');
  const cd = '{"user_id":10,"user_info":{"name":"Mr. Channels"}}';
  const ok2 = await c.subscribeOk('presence-foobar', { app: DOCS, channelData: cd });
  assert.deepEqual(h.stringData(ok2), { presence: { ids: ['10'], hash: { 10: { name: 'Mr. Channels' } }, count: 1 } });
  const si = await c.signin(DOCS, '{"id":"12345"}');
  assert.deepEqual(si, { event: 'pusher:signin_success', data: { user_data: '{"id":"12345"}' } });
  // the documented signature belongs to socket 1234.1234, not to this one
  c.subscribe('private-cache-foobar', { auth: `${DOCS.key}:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4` });
  await h.expectError(c, {
    code: null,
    message: `Invalid signature: Expected HMAC SHA256 hex digest of ${c.socketId}:private-cache-foobar, but got 58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4`,
  });
});
