'use strict';
// WS-CLIENT-1..9: client events (webhooks, WS-CLIENT-10, are out of scope here).

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

const NOCLIENT = { id: 'nc-id', key: 'nc-key', secret: 'nc-secret', enable_client_messages: false };
const ctx = h.harness({ multi: { apps: [{ ...h.DEFAULT_APP }, NOCLIENT] } });
const T = { timeout: 20000 };
const app = h.DEFAULT_APP;

/** Two or more raw clients subscribed to `ch` (signed for private/presence). */
async function members(ch, n, server = ctx.server, a = app) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const c = await ctx.pool.raw({ server, key: a.key });
    const channelData = ch.startsWith('presence-') ? JSON.stringify({ user_id: `m${i}` }) : undefined;
    await c.subscribeOk(ch, { app: a, channelData });
    out.push(c);
  }
  for (const c of out) await c.sync(); // drain cache_miss / counts of the setup
  return out;
}

test('WS-CLIENT-1 only names starting with "client-" are client events', T, async () => {
  const ch = h.uid('private-c1');
  const [a, b] = await members(ch, 2);
  for (const name of ['clientx-foo', 'Client-foo', 'my-client-foo', 'client_foo']) {
    a.send({ event: name, channel: ch, data: {} });
    await h.expectError(a, { code: null, message: `Unsupported event received on socket: ${name}` });
  }
  a.send({ event: 'client-foo', channel: ch, data: { ok: true } });
  assert.deepEqual(await b.nextMeaningful(), { event: 'client-foo', channel: ch, data: { ok: true } });
  await h.expectNothingMore(b, 'only the client- event was relayed');
});

test('WS-CLIENT-2 client events disabled for the app -> pusher:error code null (Pusher wording)', T, async () => {
  const s = ctx.servers.multi;
  const ch = 'private-c2';
  const [a, b] = await members(ch, 2, s, NOCLIENT);
  a.send({ event: 'client-x', channel: ch, data: {} });
  await h.expectError(a, {
    code: null,
    message: 'To send client events, you must enable this feature in the Settings page of your dashboard.',
  });
  await h.expectNothingMore(b, 'nothing relayed');
  // the "enabled" check comes before the channel-type check (ws §5.3 order)
  const pub = await ctx.pool.raw({ server: s, key: NOCLIENT.key });
  await pub.subscribeOk('public-c2');
  pub.send({ event: 'client-x', channel: 'public-c2', data: {} });
  await h.expectError(pub, { code: null, message: 'To send client events, you must enable this feature in the Settings page of your dashboard.' });
  // enabled app on the same server relays
  const [c, d] = await members(ch, 2, s, app);
  c.send({ event: 'client-x', channel: ch, data: {} });
  assert.equal((await d.nextMeaningful()).event, 'client-x');
});

test('WS-CLIENT-3 public channels -> "Client event rejected - only supported on private and presence channels"', T, async () => {
  for (const ch of [h.uid('pub-c3'), h.uid('cache-c3')]) {
    const [a, b] = await members(ch, 2);
    a.send({ event: 'client-x', channel: ch, data: {} });
    await h.expectError(a, { code: null, message: 'Client event rejected - only supported on private and presence channels' });
    await h.expectNothingMore(b, `nothing relayed on ${ch}`);
  }
  // accepted on every private/presence type (encrypted channels: E2E-5)
  for (const ch of ['private-c3', 'presence-c3', 'private-cache-c3', 'presence-cache-c3']) {
    const [a, b] = await members(h.uid(ch), 2);
    const name = b.frames.find((f) => f.json && f.json.event === 'pusher_internal:subscription_succeeded').json.channel;
    a.send({ event: 'client-y', channel: name, data: { t: ch } });
    const f = await b.nextEvent('client-y', name);
    assert.deepEqual(f.data, { t: ch });
  }
});

test('WS-CLIENT-4 the sender must be subscribed to the channel', T, async () => {
  const ch = h.uid('private-c4');
  const [b] = await members(ch, 1);
  const outsider = await ctx.pool.raw();
  outsider.send({ event: 'client-x', channel: ch, data: {} });
  await h.expectError(outsider, { code: null, prefix: 'Client event rejected - not subscribed to channel' });
  assert.ok(outsider.frames.some((f) => f.json && f.json.event === 'pusher:error' && f.json.data.message.includes(ch)), 'names the channel');
  await h.expectNothingMore(b, 'nothing relayed from a non-subscriber');
  // the channel-type check comes before the subscription check
  outsider.send({ event: 'client-x', channel: 'public-never-joined', data: {} });
  await h.expectError(outsider, { code: null, message: 'Client event rejected - only supported on private and presence channels' });
  // a failed subscription does not count as subscribed
  outsider.subscribe(ch, { auth: `${app.key}:${'0'.repeat(64)}` });
  await h.expectError(outsider, { code: null, prefix: 'Invalid signature' });
  outsider.send({ event: 'client-x', channel: ch, data: {} });
  await h.expectError(outsider, { code: null, prefix: 'Client event rejected - not subscribed to channel' });
  // nor does an unsubscribed one
  const [c] = await members(ch, 1);
  // the default app counts subscriptions: b is told of c's arrival
  assert.deepEqual(h.stringData(await b.nextEvent('pusher_internal:subscription_count', ch)), { subscription_count: 2 });
  c.unsubscribe(ch);
  c.send({ event: 'client-x', channel: ch, data: {} });
  await h.expectError(c, { code: null, prefix: 'Client event rejected - not subscribed to channel' });
  await h.expectNothingMore(b, 'nothing relayed after unsubscribe');
});

test('WS-CLIENT-5 relayed to all other subscribers, never echoed to the sender', T, async () => {
  const ch = h.uid('private-c5');
  const [a, b, c] = await members(ch, 3);
  a.send({ event: 'client-hello', channel: ch, data: { from: 'a' } });
  for (const r of [b, c]) assert.deepEqual(await r.nextMeaningful(), { event: 'client-hello', channel: ch, data: { from: 'a' } });
  await h.expectNothingMore(a, 'no echo to the sender');
  // pusher-js: channel.trigger reaches the others, not itself
  const p = await ctx.pool.pusher();
  const q = await ctx.pool.pusher();
  const pch = await h.subscribeOk(p, ch);
  const qch = await h.subscribeOk(q, ch);
  const selfSeen = [];
  pch.bind('client-js', (d) => selfSeen.push(d));
  const got = h.nextEvent(qch, 'client-js');
  assert.equal(pch.trigger('client-js', { v: 1 }), true);
  assert.deepEqual((await got).data, { v: 1 });
  const marker = h.nextEvent(pch, 'client-marker');
  qch.trigger('client-marker', {});
  await marker;
  assert.deepEqual(selfSeen, []);
});

test('WS-CLIENT-6 user_id of the sender added on presence channels only', T, async () => {
  const pres = h.uid('presence-c6');
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  await a.subscribeOk(pres, { app, channelData: '{"user_id":7}' });
  await b.subscribeOk(pres, { app, channelData: '{"user_id":"bee"}' });
  await a.nextEvent('pusher_internal:member_added', pres);
  a.send({ event: 'client-typing', channel: pres, data: { on: true } });
  assert.deepEqual(await b.nextEvent('client-typing'), { event: 'client-typing', channel: pres, data: { on: true }, user_id: '7' });
  b.send({ event: 'client-typing', channel: pres, data: { on: false } });
  assert.deepEqual(await a.nextEvent('client-typing'), { event: 'client-typing', channel: pres, data: { on: false }, user_id: 'bee' });
  // other connections of the same user receive it too (only the sending connection is skipped)
  const a2 = await ctx.pool.raw();
  await a2.subscribeOk(pres, { app, channelData: '{"user_id":7}' });
  a.send({ event: 'client-tabs', channel: pres, data: {} });
  assert.deepEqual(await a2.nextEvent('client-tabs'), { event: 'client-tabs', channel: pres, data: {}, user_id: '7' });
  assert.deepEqual(await b.nextEvent('client-tabs'), { event: 'client-tabs', channel: pres, data: {}, user_id: '7' });
  await h.expectNothingMore(a, 'no echo to the sending connection');
  // private: no user_id, even for a signed-in sender
  const priv = h.uid('private-c6');
  await a.signin(app, { id: 'signed-a' });
  await a.subscribeOk(priv, { app });
  await b.subscribeOk(priv, { app });
  a.send({ event: 'client-p', channel: priv, data: 1 });
  assert.deepEqual(await b.nextEvent('client-p'), { event: 'client-p', channel: priv, data: 1 });
  // pusher-js exposes it as metadata.user_id
  const p = await ctx.pool.pusher({ presenceDefault: { user_id: 'js-recv' } });
  const pch = await h.subscribeOk(p, pres);
  const got = h.nextEvent(pch, 'client-meta');
  a.send({ event: 'client-meta', channel: pres, data: { m: 1 } });
  const { data, metadata } = await got;
  assert.deepEqual(data, { m: 1 });
  assert.equal(metadata.user_id, '7');
});

test('WS-CLIENT-7 data relayed verbatim: object stays object, string stays string', T, async () => {
  const ch = h.uid('private-c7');
  const [a, b] = await members(ch, 2);
  const values = [{ nested: { k: [1, 'x', null] } }, 'a string', '{"looks":"like json"}', 42, [1, 2], true, null];
  for (const v of values) {
    a.send({ event: 'client-v', channel: ch, data: v });
    const f = await b.nextEvent('client-v', ch);
    assert.ok('data' in f, `data member missing when relaying ${JSON.stringify(v)}: ${JSON.stringify(f)}`);
    assert.deepEqual(f.data, v, `relayed ${JSON.stringify(v)}`);
  }
  const stringFrame = b.frames.filter((f) => f.json && f.json.event === 'client-v')[2];
  assert.ok(stringFrame.text.includes('"data":"{\\"looks\\":\\"like json\\"}"'), `string data must stay a string: ${stringFrame.text}`);
});

test('WS-CLIENT-8 more than 10 client events per second -> pusher:error 4301, events dropped, no close', T, async (t) => {
  const ch = h.uid('private-c8');
  const [a, b] = await members(ch, 2);
  // limits.client_event_rate (10): a token bucket of 10, full on connect, refilled at 10/s.
  const RATE = 10;
  const N = 30;
  const t0 = performance.now();
  for (let i = 0; i < N; i++) a.send({ event: 'client-burst', channel: ch, data: { i } });
  const { between } = await a.sync(5000);
  const elapsed = performance.now() - t0; // encloses the server's handling of the burst
  const errors = between.filter((m) => m.event === 'pusher:error');
  assert.deepEqual(between.filter((m) => m.event !== 'pusher:error'), [], 'only rate-limit errors reach the sender');
  for (const e of errors) h.assertErrorFrame(e, { code: 4301, message: 'Client event rejected due to rate limit' });
  await b.sync(5000);
  const relayed = b.frames.filter((f) => f.json && f.json.event === 'client-burst').map((f) => f.json.data.i);
  const accepted = N - errors.length;
  const most = h.bucketMax(RATE, RATE, elapsed);
  t.diagnostic(`accepted ${accepted} of ${N}, burst ${elapsed.toFixed(1)} ms`);
  assert.ok(accepted >= RATE && accepted <= most, `accepted ${accepted} of ${N} sent in ${elapsed.toFixed(1)} ms: expected ${RATE}..${most} (the bucket plus its refill)`);
  assert.equal(relayed.length, accepted, 'exactly the events not refused with 4301 are relayed');
  // the full bucket takes the first RATE events whatever the timing
  assert.deepEqual(relayed.slice(0, RATE), [...Array(RATE).keys()], 'the first 10 events are relayed');
  assert.deepEqual(relayed, [...relayed].sort((x, y) => x - y), 'relayed in order');
  assert.equal(a.closed, null, 'not closed');
  assert.equal(b.closed, null);
});

test('WS-CLIENT-9 event name up to 200 chars and data up to 10 240 bytes; larger rejected', T, async () => {
  const ch = h.uid('private-c9');
  const [a, b] = await members(ch, 2);
  const name200 = 'client-' + 'n'.repeat(193);
  assert.equal(name200.length, 200);
  a.send({ event: name200, channel: ch, data: {} });
  assert.equal((await b.nextMeaningful()).event, name200);
  a.send({ event: name200 + 'x', channel: ch, data: {} });
  await h.expectError(a, { code: null });
  const okData = { s: 'd'.repeat(10240 - 8) }; // serialized: exactly 10 240 bytes
  assert.equal(JSON.stringify(okData).length, 10240);
  a.send({ event: 'client-size', channel: ch, data: okData });
  assert.deepEqual((await b.nextMeaningful()).data, okData);
  const bigData = { s: 'd'.repeat(10240 - 7) }; // 10 241 bytes
  a.send({ event: 'client-size', channel: ch, data: bigData });
  await h.expectError(a, { code: null });
  await h.expectNothingMore(b, 'oversized client events are not relayed');
  assert.equal(a.closed, null);
});
