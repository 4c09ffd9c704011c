'use strict';
// WS-FRAME-*: framing, JSON encoding of `data`, size limits, verbatim relaying.

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

const ctx = h.harness({
  small: {
    server: { max_ws_message_bytes: 1024 },
    apps: [{ id: 'app-id', key: 'app-key', secret: 'app-secret' }],
  },
});
const T = { timeout: 20000 };
const app = h.DEFAULT_APP;

test('WS-FRAME-1 server sends only text frames, each holding exactly one JSON object with a string event', T, async () => {
  const api = h.sdk(ctx.server);
  const ch = h.uid('presence-f1');
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  await a.signin(app, { id: 'f1-a', watchlist: ['f1-b'] });
  await a.subscribeOk(ch, { app, channelData: JSON.stringify({ user_id: 'f1-a' }) });
  await b.signin(app, { id: 'f1-b' });
  await b.subscribeOk(ch, { app, channelData: JSON.stringify({ user_id: 'f1-b' }) });
  await a.nextEvent('pusher_internal:member_added', ch);
  await a.subscribeOk('f1-public');
  await api.trigger('f1-public', 'ev', { x: 1 });
  await a.nextEvent('ev', 'f1-public');
  a.sendRaw('{broken');
  await a.nextEvent('pusher:error');
  b.send({ event: 'client-x', channel: ch, data: { y: 2 } });
  await a.nextEvent('client-x', ch);
  b.close();
  await a.nextEvent('pusher_internal:member_removed', ch);
  await a.sync();
  assert.ok(a.frames.length >= 8, `expected a varied session, got ${a.describeFrames()}`);
  for (const f of a.frames) {
    assert.equal(f.binary, false, `binary frame received: ${f.text}`);
    assert.ok(f.json !== undefined, `frame is not one JSON document: ${f.text}`);
    assert.equal(typeof f.json, 'object');
    assert.ok(f.json !== null && !Array.isArray(f.json), `frame is not a JSON object: ${f.text}`);
    assert.equal(typeof f.json.event, 'string', `event must be a string: ${f.text}`);
  }
});

test('WS-FRAME-2 a binary frame holding UTF-8 JSON is processed like text', T, async () => {
  const c = await ctx.pool.raw();
  c.sendRaw(Buffer.from(JSON.stringify({ event: 'pusher:ping', data: {} }), 'utf8'), { binary: true });
  const pong = await c.nextJson(3000, 'pong for a binary ping');
  assert.deepEqual(pong, { event: 'pusher:pong', data: '{}' });
  c.sendRaw(Buffer.from(JSON.stringify({ event: 'pusher:subscribe', data: { auth: '', channel: 'bin-ch' } }), 'utf8'), { binary: true });
  const ok = await c.nextJson(3000, 'subscription_succeeded for a binary subscribe');
  assert.deepEqual(ok, { event: 'pusher_internal:subscription_succeeded', channel: 'bin-ch', data: '{}' });
  assert.ok(c.frames.every((f) => !f.binary), 'replies are text frames');
});

test('WS-FRAME-3 invalid JSON -> pusher:error code null "Received invalid JSON"; connection kept', T, async () => {
  const c = await ctx.pool.raw();
  for (const bad of ['not json at all', '{"event":', '{"data":{}}', '{"event":5,"data":{}}', '[1,2,3]', '"just a string"']) {
    c.sendRaw(bad);
    const e = await c.nextJson(3000, `reply to ${bad}`);
    h.assertErrorFrame(e, { code: null, message: 'Received invalid JSON' });
  }
  const { pong } = await c.sync();
  assert.deepEqual(pong, { event: 'pusher:pong', data: '{}' });
  assert.equal(c.closed, null);
});

test('WS-FRAME-4 unknown event -> pusher:error code null "Unsupported event received on socket: <event>"', T, async () => {
  const c = await ctx.pool.raw();
  for (const ev of ['my-event', 'subscribe', 'pusher:nonsense']) {
    c.send({ event: ev, data: {} });
    const e = await c.nextJson(3000, `reply to ${ev}`);
    h.assertErrorFrame(e, { code: null, message: `Unsupported event received on socket: ${ev}` });
  }
  const { pong } = await c.sync();
  assert.equal(pong.event, 'pusher:pong');
});

test('WS-FRAME-5 data encoding per event type (string / object / verbatim)', T, async () => {
  const api = h.sdk(ctx.server);
  const pres = h.uid('presence-f5');
  const pub = h.uid('f5-pub');
  const a = await ctx.pool.raw();
  // connection_established: string
  h.stringData(a.frames[0].json);
  // pusher:pong: string "{}"
  const { pong } = await a.sync();
  assert.deepEqual(pong, { event: 'pusher:pong', data: '{}' });
  // pusher:error: object
  a.send({ event: 'bogus', data: {} });
  const err = await a.nextEvent('pusher:error');
  assert.equal(typeof err.data, 'object');
  // pusher:signin_success: object {user_data: string}; watchlist_events: string
  const ud = JSON.stringify({ id: 'f5-a', watchlist: ['f5-b'] });
  const signin = await a.signin(app, ud);
  assert.equal(signin.event, 'pusher:signin_success');
  assert.deepEqual(signin.data, { user_data: ud });
  const wl = await a.nextEvent('pusher_internal:watchlist_events');
  assert.equal(typeof wl.data, 'string');
  // subscription_succeeded: string "{}" / presence string
  const ok = await a.subscribeOk(pub);
  assert.equal(ok.data, '{}');
  // subscription_count: string
  const cnt = await a.nextEvent('pusher_internal:subscription_count', pub);
  assert.deepEqual(h.stringData(cnt), { subscription_count: 1 });
  const pok = await a.subscribeOk(pres, { app, channelData: JSON.stringify({ user_id: 'f5-a' }) });
  assert.equal(typeof pok.data, 'string');
  // member_added / member_removed: string
  const b = await ctx.pool.raw();
  await b.subscribeOk(pres, { app, channelData: JSON.stringify({ user_id: 'f5-b', user_info: { n: 1 } }) });
  const added = await a.nextEvent('pusher_internal:member_added', pres);
  assert.deepEqual(h.stringData(added), { user_id: 'f5-b', user_info: { n: 1 } });
  b.close();
  const removed = await a.nextEvent('pusher_internal:member_removed', pres);
  assert.deepEqual(h.stringData(removed), { user_id: 'f5-b' });
  // application event: verbatim string
  const payload = '{"z":1,  "a" : [1,2]}';
  await api.trigger(pub, 'app-ev', payload);
  const ev = await a.nextEvent('app-ev', pub);
  assert.equal(ev.data, payload);
});

test('WS-FRAME-6 client data accepted as an object or as a JSON string containing an object', T, async () => {
  const c = await ctx.pool.raw();
  c.send({ event: 'pusher:subscribe', data: JSON.stringify({ auth: '', channel: 'f6-string-data' }) });
  const ok = await c.nextJson(3000, 'subscription_succeeded');
  assert.deepEqual(ok, { event: 'pusher_internal:subscription_succeeded', channel: 'f6-string-data', data: '{}' });
  const ch = 'private-f6';
  c.send({ event: 'pusher:subscribe', data: JSON.stringify({ auth: h.channelAuth(app, c.socketId, ch), channel: ch }) });
  const ok2 = await c.next((m) => m.event === 'pusher_internal:subscription_succeeded', 3000, 'private subscription_succeeded');
  assert.equal(ok2.channel, ch);
  c.send({ event: 'pusher:unsubscribe', data: JSON.stringify({ channel: 'f6-string-data' }) });
  await h.expectNothingMore(c, 'unsubscribe with string data');
  c.send({ event: 'pusher:ping', data: '{}' });
  const pong = await c.nextMeaningful(3000, 'pong');
  assert.deepEqual(pong, { event: 'pusher:pong', data: '{}' });
  // the unsubscribe took effect: no delivery on the channel any more
  const api = h.sdk(ctx.server);
  await api.trigger(['f6-string-data', ch], 'after', 'x');
  const next = await c.nextMeaningful(3000, 'event after unsubscribe');
  assert.deepEqual(next, { event: 'after', channel: ch, data: 'x' });
});

test('WS-FRAME-7 oversized inbound message -> close 1009 (default limit 64 KiB; configurable)', T, async () => {
  const pad = (n) => JSON.stringify({ event: 'pusher:ping', data: { pad: 'x'.repeat(n) } });
  const ok = await ctx.pool.raw();
  ok.sendRaw(pad(60000)); // ~60 KB: under the default limit
  const pong = await ok.nextEvent('pusher:pong');
  assert.equal(pong.data, '{}');
  const big = await ctx.pool.raw();
  big.sendRaw(pad(70000)); // > 65536 bytes
  const closed = await big.waitClose(5000);
  assert.equal(closed.code, 1009, `close code ${JSON.stringify(closed)}`);

  const small = ctx.servers.small;
  const s1 = await ctx.pool.raw({ server: small });
  s1.sendRaw(pad(900));
  await s1.nextEvent('pusher:pong');
  const s2 = await ctx.pool.raw({ server: small });
  s2.sendRaw(pad(1100));
  const c2 = await s2.waitClose(5000);
  assert.equal(c2.code, 1009);
});

test('WS-FRAME-8 signed strings verified as received; relayed payloads keep key order and big numbers', T, async () => {
  // channel_data with unusual spacing, PHP-style escaped slash, key order and a big number
  const ch = h.uid('presence-f8');
  const channelData = '{"user_info": {"z":1,"a":12345678901234567890,"url":"http:\\/\\/x"}, "user_id" : "f8-a"}';
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  await b.subscribeOk(ch, { app, channelData: JSON.stringify({ user_id: 'f8-b' }) });
  const ok = await a.subscribeOk(ch, { app, channelData });
  assert.match(ok.data, /"f8-a"/);
  // the raw user_info is forwarded untouched (key order, big number)
  const added = await b.nextEvent('pusher_internal:member_added', ch);
  assert.equal(typeof added.data, 'string');
  assert.ok(
    added.data.includes('12345678901234567890'),
    `big number must survive in member_added: ${added.data}`,
  );
  assert.ok(/"z":\s*1,\s*"a":\s*12345678901234567890/.test(added.data), `key order must survive: ${added.data}`);
  // and in the presence snapshot of a later subscriber
  const later = await ctx.pool.raw();
  const snap = await later.subscribeOk(ch, { app, channelData: JSON.stringify({ user_id: 'f8-c' }) });
  assert.ok(/"z":\s*1,\s*"a":\s*12345678901234567890/.test(snap.data), `key order / big number in the snapshot: ${snap.data}`);

  // user_data with spaces and escaped slash, echoed verbatim
  const userData = '{ "id" : "f8-user", "name":"a\\/b", "n": 98765432109876543210 }';
  const s = await a.signin(app, userData);
  assert.equal(s.event, 'pusher:signin_success', JSON.stringify(s));
  assert.equal(s.data.user_data, userData);

  // client event data relayed byte-for-byte (key order, big number)
  const priv = h.uid('private-f8');
  await a.subscribeOk(priv, { app });
  await b.subscribeOk(priv, { app });
  a.sendRaw(`{"event":"client-big","channel":"${priv}","data":{"b":1,"a":98765432109876543210,"s":"\\u00e9"}}`);
  await b.nextEvent('client-big', priv);
  const rawFrame = b.frames.find((f) => f.json && f.json.event === 'client-big');
  assert.ok(rawFrame.text.includes('98765432109876543210'), `big number lost: ${rawFrame.text}`);
  assert.match(rawFrame.text, /\{"b":\s*1,\s*"a":\s*98765432109876543210/, `key order lost: ${rawFrame.text}`);
});
