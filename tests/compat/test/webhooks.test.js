'use strict';
// HOOK-FORMAT-*, HOOK-EVT-*, HOOK-DELAY-1, HOOK-DELIVERY-*, HOOK-CONF-1 and
// WS-CLIENT-10: webhooks caused by real pusher-js clients, received by a real
// HTTP server (lib/webhook_receiver.js) that validates every request with the
// official `pusher` SDK. Each test starts its own Herald (env-configured
// targets) and receiver, so counts are exact.
//
// "Nothing more arrives" checks: first attempts to one target are made one at a
// time in creation order (only a webhook whose attempt failed leaves that line
// to retry on its own), so while the receiver accepts everything a marker event
// caused afterwards (and after any delay window that could still produce
// something) arrives after everything that could wrongly have been sent; the
// test then compares the full list.

const { test } = require('node:test');
const crypto = require('node:crypto');
const PusherServer = require('pusher');
const h = require('../lib');
const { setupHooks, ev, untilTime } = require('../lib/webhook_receiver');

const { assert } = h;
const app = h.DEFAULT_APP;
const T = { timeout: 30000 };
const DELAY = 300; // vacate delay used by setupHooks unless a test says otherwise

const ALL = ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed', 'client_event', 'cache_miss', 'subscription_count'];
const NO_COUNT = ALL.filter((n) => n !== 'subscription_count');

/** Stable string of an event (keys sorted) for order-independent comparison. */
function canon(e) {
  const o = {};
  for (const k of Object.keys(e).sort()) o[k] = e[k];
  return JSON.stringify(o);
}
const bag = (list) => list.map(canon).sort();
const onCh = (ch) => (e) => e.channel === ch;
const names = (list) => list.map((e) => e.name);

/** pusher-js client; `user` makes it a presence member with that user id. */
function client(env, user, extra = {}) {
  return env.pool.pusher(user === undefined ? extra : { presenceDefault: { user_id: user, user_info: { name: `n-${user}` } }, ...extra });
}

/** Subscribes `c` to a fresh public channel and waits until its `name` event reached every path. */
async function marker(env, c, { paths = [undefined], name = 'channel_occupied', channel } = {}) {
  const ch = channel || h.uid('mk');
  await h.subscribeOk(c, ch);
  for (const p of paths) await env.recv.waitEvent(ev({ name, channel: ch }), { path: p, ms: 8000, what: `marker ${name} ${ch} on ${p || 'any path'}` });
  return ch;
}

/** HTTP API view of a channel (default app). */
async function channelInfo(env, ch, info) {
  const r = await h.sdkCall(h.sdk(env.server).get({ path: `/channels/${ch}`, params: info ? { info } : {} }));
  assert.equal(r.status, 200, r.text);
  return r.json();
}
async function presenceUsers(env, ch) {
  const r = await h.sdkCall(h.sdk(env.server).get({ path: `/channels/${ch}/users` }));
  assert.equal(r.status, 200, r.text);
  return r.json().users.map((u) => u.id);
}

/** Triggers a client event with pusher-js once the channel is subscribed. */
function trigger(c, ch, event, data) {
  assert.ok(c.channel(ch) && c.channel(ch).subscribed, `${ch} subscribed before triggering`);
  assert.equal(c.channel(ch).trigger(event, data), true, `pusher-js sent ${event}`);
}

function hmac(secret, buf) {
  return crypto.createHmac('sha256', secret).update(buf).digest('hex');
}

function headerNames(r) {
  return r.rawHeaders.filter((_, i) => i % 2 === 0);
}
function rawHeaderValues(r, name) {
  const out = [];
  for (let i = 0; i < r.rawHeaders.length; i += 2) if (r.rawHeaders[i].toLowerCase() === name.toLowerCase()) out.push(r.rawHeaders[i + 1]);
  return out;
}

// ---------------------------------------------------------------------------
// Format

test('HOOK-FORMAT-1 body {"time_ms":<int>,"events":[…]}: POST, compact JSON, time_ms = creation time', T, async (t) => {
  const env = await setupHooks(t, { targets: [{ event_types: ['channel_occupied', 'channel_vacated'] }] });
  const { recv } = env;
  const c = await client(env);
  const ch = h.uid('news');
  const t0 = Date.now();
  await h.subscribeOk(c, ch);
  const occ = await recv.waitEvent(ev({ name: 'channel_occupied', channel: ch }));
  const r = occ._req;
  assert.equal(r.method, 'POST');
  assert.equal(r.url, '/hook');
  const body = JSON.parse(r.text);
  assert.deepEqual(Object.keys(body).sort(), ['events', 'time_ms'], `body members: ${r.text}`);
  assert.ok(Number.isInteger(body.time_ms), `time_ms must be an integer: ${r.text}`);
  assert.ok(body.time_ms >= t0 - 50 && body.time_ms <= r.at + 5, `time_ms ${body.time_ms} must be the creation time (subscribed at ${t0}, received at ${r.at})`);
  assert.equal(r.time.getTime(), body.time_ms, 'SDK getTime() is time_ms');
  assert.deepEqual(body.events, [{ name: 'channel_occupied', channel: ch }]);
  assert.equal(r.text, JSON.stringify(body), 'compact JSON: no whitespace');

  // A retried webhook keeps its creation time: delays are detectable.
  recv.failNext(1);
  const tU = Date.now();
  c.unsubscribe(ch);
  const vac = await recv.waitEvent(ev({ name: 'channel_vacated', channel: ch }), { ms: 6000 });
  const tries = recv.requests.filter((q) => q.signature === vac._req.signature);
  assert.deepEqual(tries.map((q) => q.status), [500, 200], 'one failed attempt, then the accepted one');
  const vbody = JSON.parse(vac._req.text);
  assert.equal(vbody.time_ms, JSON.parse(tries[0].text).time_ms, 'same time_ms on the retry');
  assert.ok(vbody.time_ms >= tU + DELAY - 50, `vacated created after the vacate delay (time_ms ${vbody.time_ms}, unsubscribed ${tU})`);
  assert.ok(vac._req.at - vbody.time_ms >= 900, `time_ms is the creation time, not the send time (sent ${vac._req.at - vbody.time_ms} ms after it)`);
  // pusher-http-python rejects webhooks more than 5 minutes off.
  for (const q of recv.requests) assert.ok(Math.abs(q.at - JSON.parse(q.text).time_ms) < 300000);
  recv.assertAllValid(assert);
});

test('HOOK-FORMAT-2 Content-Type exactly application/json, X-Pusher-Key, X-Pusher-Signature = hex HMAC-SHA256(secret, body)', T, async (t) => {
  // The spec's verification vector, to make sure this test's HMAC is the right one.
  assert.equal(
    hmac('7ad3773142a6692b25b8', Buffer.from('{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"my-channel"}]}')),
    'c19001ae3963ccb13bf618e5b16ba9848e7e74df0993aa0689168e341c6833cf',
  );
  const env = await setupHooks(t, {});
  const { recv } = env;
  const p = await client(env, 'u1');
  const q = await client(env, 'u2');
  const room = h.uid('presence-f2');
  await h.subscribeOk(p, room);
  await h.subscribeOk(q, room);
  trigger(p, room, 'client-hi', { text: 'héllo ✓' });
  const pub = h.uid('pub-f2');
  await h.subscribeOk(p, pub);
  await recv.waitEvent(ev({ name: 'client_event', channel: room }));
  await recv.waitEvent(ev({ name: 'subscription_count', channel: pub }));
  assert.ok(recv.requests.length >= 5, `several webhooks: ${recv.describe()}`);
  const wrong = new PusherServer({ appId: app.id, key: app.key, secret: 'not-the-secret' });
  const otherKey = new PusherServer({ appId: app.id, key: 'other-key', secret: app.secret });
  for (const r of recv.requests) {
    assert.equal(r.headers['content-type'], 'application/json', 'Content-Type exactly application/json (no charset)');
    assert.equal(r.headers['x-pusher-key'], app.key);
    assert.match(r.signature, /^[0-9a-f]{64}$/, 'lowercase hex signature');
    assert.equal(r.signature, hmac(app.secret, r.raw), `signature is HMAC-SHA256 of the exact body bytes: ${r.text}`);
    assert.equal(r.valid, true, r.validationError);
    assert.equal(wrong.webhook({ headers: r.headers, rawBody: r.text }).isValid(), false, 'wrong secret must not validate');
    assert.equal(otherKey.webhook({ headers: r.headers, rawBody: r.text }).isValid(), false, 'wrong key must not validate');
    assert.equal(
      new PusherServer({ appId: app.id, key: app.key, secret: app.secret }).webhook({ headers: r.headers, rawBody: r.text.replace('"events"', '"events" ') }).isValid(),
      false,
      'a modified body must not validate',
    );
  }
  const ce = recv.events().find(ev({ name: 'client_event', channel: room }));
  assert.equal(JSON.parse(ce.data).text, 'héllo ✓', 'non-ASCII data survives signing');
  recv.assertAllValid(assert);
});

test('HOOK-FORMAT-3 header names sent in canonical case (X-Pusher-Key, X-Pusher-Signature, Content-Type), HTTP/1.1', T, async (t) => {
  const env = await setupHooks(t, {});
  const { recv } = env;
  const c = await client(env, 'u1');
  const room = h.uid('presence-f3');
  await h.subscribeOk(c, room);
  trigger(c, room, 'client-x', {});
  await recv.waitEvent(ev({ name: 'client_event', channel: room }));
  assert.ok(recv.requests.length >= 3);
  for (const r of recv.requests) {
    const hn = headerNames(r);
    for (const n of ['Content-Type', 'X-Pusher-Key', 'X-Pusher-Signature']) {
      assert.ok(hn.includes(n), `raw header name ${n} expected exactly as written; got ${JSON.stringify(hn)}`);
      assert.equal(hn.filter((x) => x.toLowerCase() === n.toLowerCase()).length, 1, `${n} sent once`);
    }
    assert.equal(r.httpVersion, '1.1', 'HTTP/1.1');
  }
  recv.assertAllValid(assert);
});

test('HOOK-FORMAT-4 user_id, data, socket_id, event are JSON strings; subscription_count an integer', T, async (t) => {
  const env = await setupHooks(t, {});
  const { recv } = env;
  const room = h.uid('presence-f4');
  const a = await client(env, 42); // numeric presence id -> "42"
  const b = await client(env, 'u-b');
  await h.subscribeOk(a, room);
  await h.subscribeOk(b, room);
  const added = await recv.waitEvent(ev({ name: 'member_added', channel: room, user_id: '42' }), { what: 'member_added with user_id "42" (string)' });
  assert.deepEqual(Object.keys(added).sort(), ['channel', 'name', 'user_id'], 'no user_info in member_added');
  trigger(a, room, 'client-cursor', { x: 3, y: 4 });
  const ce = await recv.waitEvent(ev({ name: 'client_event', channel: room }));
  assert.deepEqual(ce, { name: 'client_event', channel: room, event: 'client-cursor', data: '{"x":3,"y":4}', socket_id: a.connection.socket_id, user_id: '42' });
  const pub = h.uid('pub-f4');
  await h.subscribeOk(a, pub);
  const cnt = await recv.waitEvent(ev({ name: 'subscription_count', channel: pub }));
  assert.equal(cnt.subscription_count, 1);
  assert.ok(Number.isInteger(cnt.subscription_count), 'subscription_count is an integer, not a string');
  // Every event of every body decodes into the Go SDK's struct.
  for (const r of recv.requests) {
    const body = JSON.parse(r.text);
    assert.ok(Number.isInteger(body.time_ms));
    for (const e of body.events) {
      for (const k of ['name', 'channel', 'event', 'data', 'socket_id', 'user_id']) {
        if (k in e) assert.equal(typeof e[k], 'string', `${k} must be a string in ${JSON.stringify(e)}`);
      }
      if ('subscription_count' in e) assert.ok(Number.isInteger(e.subscription_count), JSON.stringify(e));
      assert.ok(!('user_info' in e), `user_info never included: ${JSON.stringify(e)}`);
    }
  }
  recv.assertAllValid(assert);
});

// ---------------------------------------------------------------------------
// Event types

test('HOOK-EVT-1 channel_occupied on first subscriber (public, private, presence), once', T, async (t) => {
  const env = await setupHooks(t, { targets: [{ event_types: ['channel_occupied', 'channel_vacated'] }] });
  const { recv } = env;
  const a = await client(env, 'ua');
  const b = await client(env, 'ub');
  const chans = [h.uid('pub-e1'), h.uid('private-e1'), h.uid('presence-e1')];
  for (const ch of chans) {
    await h.subscribeOk(a, ch);
    const e = await recv.waitEvent(ev({ name: 'channel_occupied', channel: ch }));
    assert.deepEqual(e, { name: 'channel_occupied', channel: ch });
    await h.subscribeOk(b, ch); // second subscriber: nothing
  }
  await marker(env, b);
  for (const ch of chans) assert.deepEqual(names(recv.events().filter(onCh(ch))), ['channel_occupied'], `exactly one occupied for ${ch}: ${recv.describe()}`);
  recv.assertAllValid(assert);
});

test('HOOK-EVT-1 internal #server-to-user- channels generate no webhook', T, async (t) => {
  const env = await setupHooks(t, {});
  const { recv } = env;
  const u = await env.pool.pusher({ user: { id: 'hook-user', user_info: {} } });
  u.signin();
  await h.withTimeout(u.user.signinDonePromise, 3000, 'pusher-js signin');
  await h.waitFor(() => u.user.serverToUserChannel && u.user.serverToUserChannel.subscribed, 3000, '#server-to-user- subscription');
  const got = h.once(u.user, 'hello', 3000, 'user event');
  const r = await h.sdkCall(h.sdk(env.server).sendToUser('hook-user', 'hello', { x: 1 }));
  assert.equal(r.status, 200, r.text);
  await got;
  u.disconnect();
  await untilTime(Date.now() + DELAY + 100); // a (wrong) vacate would have been created by now
  const m = await client(env);
  await marker(env, m);
  assert.deepEqual(recv.events().filter((e) => e.channel.startsWith('#')), [], `no webhook for internal channels: ${recv.describe()}`);
  recv.assertAllValid(assert);
});

test('HOOK-EVT-2 channel_vacated when the last subscriber leaves, after the vacate delay', T, async (t) => {
  const DL = 400;
  const env = await setupHooks(t, { vacateDelayMs: DL, targets: [{ event_types: ['channel_occupied', 'channel_vacated'] }] });
  const { recv } = env;
  const a = await client(env);
  const b = await client(env);
  const chans = [h.uid('pub-e2'), h.uid('private-e2')];
  for (const ch of chans) {
    await h.subscribeOk(a, ch);
    await h.subscribeOk(b, ch);
    await recv.waitEvent(ev({ name: 'channel_occupied', channel: ch }));
    a.unsubscribe(ch); // one of two leaves: not vacated
    await h.waitFor(async () => (await channelInfo(env, ch, 'subscription_count')).subscription_count === 1, 3000, `${ch} down to 1 subscriber`);
    const tB = Date.now();
    b.unsubscribe(ch);
    const vac = await recv.waitEvent(ev({ name: 'channel_vacated', channel: ch }), { ms: 5000 });
    assert.deepEqual(vac, { name: 'channel_vacated', channel: ch });
    assert.ok(vac._req.at - tB >= DL - 30, `vacated delayed by ~${DL} ms (arrived ${vac._req.at - tB} ms after the last unsubscribe)`);
    assert.ok(JSON.parse(vac._req.text).time_ms >= tB + DL - 30, 'created when the delay expired');
  }
  await marker(env, a);
  for (const ch of chans) assert.deepEqual(names(recv.events().filter(onCh(ch))), ['channel_occupied', 'channel_vacated'], `${ch}: ${recv.describe()}`);
  recv.assertAllValid(assert);
});

test('HOOK-EVT-3 member_added on the first connection of a user id only', T, async (t) => {
  const env = await setupHooks(t, { targets: [{ event_types: ['member_added', 'member_removed', 'channel_occupied'] }] });
  const { recv } = env;
  const room = h.uid('presence-e3');
  const tab1 = await client(env, 'u1');
  const tab2 = await client(env, 'u1');
  const other = await client(env, 'u2');
  await h.subscribeOk(tab1, room);
  const a1 = await recv.waitEvent(ev({ name: 'member_added', channel: room, user_id: 'u1' }));
  assert.deepEqual(a1, { name: 'member_added', channel: room, user_id: 'u1' });
  await h.subscribeOk(tab2, room); // same user: nothing
  await h.subscribeOk(other, room);
  await recv.waitEvent(ev({ name: 'member_added', channel: room, user_id: 'u2' }));
  await marker(env, other);
  const added = recv.events().filter((e) => e.channel === room && e.name === 'member_added');
  assert.deepEqual(added.map((e) => e.user_id), ['u1', 'u2'], `one member_added per user: ${recv.describe()}`);
  assert.deepEqual(names(recv.events().filter(onCh(room))).sort(), ['channel_occupied', 'member_added', 'member_added']);
  recv.assertAllValid(assert);
});

test('HOOK-EVT-4 member_removed when the last connection of a user leaves, after the delay; before channel_vacated', T, async (t) => {
  const DL = 400;
  const env = await setupHooks(t, { vacateDelayMs: DL, targets: [{ event_types: ['member_added', 'member_removed', 'channel_occupied', 'channel_vacated'] }] });
  const { recv } = env;
  const room = h.uid('presence-e4');
  const tabA = await client(env, 'u7');
  const tabB = await client(env, 'u7');
  const u8 = await client(env, 'u8');
  for (const c of [tabA, tabB, u8]) await h.subscribeOk(c, room);
  await recv.waitEvents((e) => e.channel === room && e.name === 'member_added', { count: 2 });
  tabA.disconnect(); // user 7 still present through tab B: nothing
  const t8 = Date.now();
  u8.unsubscribe(room);
  const r8 = await recv.waitEvent(ev({ name: 'member_removed', channel: room, user_id: 'u8' }), { ms: 5000 });
  assert.deepEqual(r8, { name: 'member_removed', channel: room, user_id: 'u8' });
  assert.ok(r8._req.at - t8 >= DL - 30, `member_removed delayed (${r8._req.at - t8} ms)`);
  assert.deepEqual(await presenceUsers(env, room), ['u7']);
  const t7 = Date.now();
  tabB.unsubscribe(room);
  const vac = await recv.waitEvent(ev({ name: 'channel_vacated', channel: room }), { ms: 5000 });
  const r7 = recv.events().find(ev({ name: 'member_removed', channel: room, user_id: 'u7' }));
  assert.ok(r7, `member_removed u7 arrived no later than channel_vacated: ${recv.describe()}`);
  assert.ok(r7._req.at - t7 >= DL - 30 && vac._req.at - t7 >= DL - 30, 'both delayed');
  const m = await client(env);
  await marker(env, m);
  const seq = recv.events().filter(onCh(room)).map((e) => (e.user_id ? `${e.name}:${e.user_id}` : e.name));
  assert.deepEqual(seq.slice(0, 3).sort(), ['channel_occupied', 'member_added:u7', 'member_added:u8'].sort(), `start: ${seq}`);
  assert.deepEqual(seq.slice(3), ['member_removed:u8', 'member_removed:u7', 'channel_vacated'], `removals in order, removal before vacate: ${seq}`);
  recv.assertAllValid(assert);
});

test('HOOK-EVT-5 client_event with channel, event, data (string), socket_id, user_id (presence only)', T, async (t) => {
  const env = await setupHooks(t, { targets: [{ event_types: ['client_event'] }] });
  const { recv } = env;
  const priv = h.uid('private-e5');
  const a = await client(env);
  const b = await client(env);
  await h.subscribeOk(a, priv);
  await h.subscribeOk(b, priv);
  const got = h.nextEvent(b.channel(priv), 'client-typing');
  trigger(a, priv, 'client-typing', { on: true });
  await got;
  const e1 = await recv.waitEvent(ev({ name: 'client_event', channel: priv }));
  assert.deepEqual(e1, { name: 'client_event', channel: priv, event: 'client-typing', data: '{"on":true}', socket_id: a.connection.socket_id }, 'no user_id on private channels');

  const room = h.uid('presence-e5');
  const p = await client(env, 'u42');
  const q = await client(env, 'u43');
  await h.subscribeOk(p, room);
  await h.subscribeOk(q, room);
  const sid = p.connection.socket_id;
  const cases = [
    ['client-cursor', { x: 3, y: 4 }, '{"x":3,"y":4}'],
    ['client-str', 'plain "text"', 'plain "text"'], // a JSON string is passed as that string
    ['client-num', 12, '12'],
    ['client-arr', [1, 'a', null], '[1,"a",null]'],
  ];
  for (const [event, data] of cases) trigger(p, room, event, data);
  const got2 = await recv.waitEvents(ev({ name: 'client_event', channel: room }), { count: cases.length });
  assert.deepEqual(
    got2,
    cases.map(([event, , data]) => ({ name: 'client_event', channel: room, event, data, socket_id: sid, user_id: 'u42' })),
  );
  recv.assertAllValid(assert);
});

test('WS-CLIENT-10 an accepted client event emits one client_event webhook (not per recipient, not for rejected ones); never cached', T, async (t) => {
  const env = await setupHooks(t, { targets: [{ event_types: ['client_event', 'cache_miss'] }] });
  const { recv } = env;
  const priv = h.uid('private-c10');
  const [a, b, c, d] = await Promise.all([client(env), client(env), client(env), client(env)]);
  for (const x of [a, b, c, d]) await h.subscribeOk(x, priv);
  const relayed = [b, c, d].map((x) => h.nextEvent(x.channel(priv), 'client-once'));
  trigger(a, priv, 'client-once', { n: 1 });
  await Promise.all(relayed);
  // rejected: public channel, not subscribed
  const pub = h.uid('pub-c10');
  await h.subscribeOk(a, pub);
  a.channel(pub).trigger('client-public', { no: 1 });
  a.send_event('client-nosub', { no: 2 }, h.uid('private-c10-not-subscribed'));
  trigger(a, priv, 'client-marker', { n: 2 });
  await recv.waitEvent(ev({ name: 'client_event', event: 'client-marker' }));
  assert.deepEqual(
    recv.events().filter(ev({ name: 'client_event' })).map((e) => e.event),
    ['client-once', 'client-marker'],
    `one webhook per accepted client event, none for rejected ones: ${recv.describe()}`,
  );
  // never cached: a later subscriber of a cache channel gets a cache miss, not the client event
  const cch = h.uid('private-cache-c10');
  const miss1 = h.once(a.subscribe(cch), 'pusher:cache_miss', 3000, 'cache_miss for the first subscriber');
  await h.subscribeOk(a, cch);
  await miss1;
  await recv.waitEvent(ev({ name: 'cache_miss', channel: cch }));
  trigger(a, cch, 'client-c', { v: 1 });
  await recv.waitEvent(ev({ name: 'client_event', channel: cch, event: 'client-c' }));
  const late = await client(env);
  const lateCh = late.subscribe(cch);
  const leaked = [];
  lateCh.bind('client-c', (x) => leaked.push(x));
  const miss2 = h.once(lateCh, 'pusher:cache_miss', 3000, 'pusher:cache_miss for a later subscriber (client events are not cached)');
  await h.subscribeOk(late, cch);
  await miss2;
  trigger(a, priv, 'client-marker2', {});
  await recv.waitEvent(ev({ name: 'client_event', event: 'client-marker2' }));
  assert.deepEqual(leaked, [], 'the client event was not replayed from a cache');
  recv.assertAllValid(assert);
});

test('HOOK-EVT-6 cache_miss on subscription to an empty cache channel, de-duplicated per channel and window', T, async (t) => {
  const env = await setupHooks(t, { targets: [{ event_types: ['cache_miss', 'channel_occupied'] }] });
  const { recv } = env;
  const x = h.uid('cache-e6x');
  const y = h.uid('cache-e6y');
  const subMiss = async (c, ch) => {
    const p = h.once(c.subscribe(ch), 'pusher:cache_miss', 3000, `pusher:cache_miss frame on ${ch}`);
    await h.subscribeOk(c, ch);
    await p;
  };
  const [a, b, c, d] = await Promise.all([client(env), client(env), client(env), client(env)]);
  await subMiss(a, x);
  const m1 = await recv.waitEvent(ev({ name: 'cache_miss', channel: x }));
  assert.deepEqual(m1, { name: 'cache_miss', channel: x });
  await subMiss(b, x); // every subscriber gets its frame, but no second webhook
  // once something is cached there is no miss
  const got = h.nextEvent(a.channel(x), 'price');
  const r = await h.sdkCall(h.sdk(env.server).trigger(x, 'price', { p: 1 }));
  assert.equal(r.status, 200, r.text);
  await got;
  const cc = c.subscribe(x);
  const cached = h.nextEvent(cc, 'price');
  const misses = [];
  cc.bind('pusher:cache_miss', () => misses.push(1));
  await h.subscribeOk(c, x);
  await cached;
  await subMiss(d, y); // other channel: its own webhook
  await recv.waitEvent(ev({ name: 'cache_miss', channel: y }));
  await marker(env, d);
  assert.deepEqual(misses, []);
  assert.deepEqual(
    recv.events().filter(ev({ name: 'cache_miss' })).map((e) => e.channel),
    [x, y],
    `one cache_miss per channel: ${recv.describe()}`,
  );
  recv.assertAllValid(assert);

  // After the de-duplication window a new miss is reported again.
  const DEB = 1000;
  const env2 = await setupHooks(t, { targets: [{ event_types: ['cache_miss', 'channel_occupied'] }], env: { HERALD_WEBHOOKS_CACHE_MISS_DEBOUNCE_MS: String(DEB) } });
  const z = h.uid('cache-e6z');
  const [e, f, g] = await Promise.all([client(env2), client(env2), client(env2)]);
  await subMiss(e, z);
  const first = await env2.recv.waitEvent(ev({ name: 'cache_miss', channel: z }));
  await subMiss(f, z); // inside the window
  await untilTime(JSON.parse(first._req.text).time_ms + DEB + 100);
  await subMiss(g, z); // after the window
  await env2.recv.waitEvents(ev({ name: 'cache_miss', channel: z }), { count: 2, ms: 3000 });
  await marker(env2, g);
  assert.equal(env2.recv.events().filter(ev({ name: 'cache_miss', channel: z })).length, 2, env2.recv.describe());
  env2.recv.assertAllValid(assert);
});

test('HOOK-EVT-7 subscription_count on count changes of non-presence channels', T, async (t) => {
  const env = await setupHooks(t, { targets: [{ event_types: ['subscription_count', 'channel_occupied'] }] });
  const { recv } = env;
  const pub = h.uid('pub-e7');
  const priv = h.uid('private-e7');
  const room = h.uid('presence-e7');
  const a = await client(env, 'ua');
  const b = await client(env, 'ub');
  const count = (ch, n) => recv.waitEvent((e) => e.name === 'subscription_count' && e.channel === ch && e.subscription_count === n);
  await h.subscribeOk(a, pub);
  await count(pub, 1);
  await h.subscribeOk(b, pub);
  await count(pub, 2);
  b.unsubscribe(pub);
  await recv.waitEvents((e) => e.name === 'subscription_count' && e.channel === pub, { count: 3 });
  await h.subscribeOk(a, priv);
  await count(priv, 1);
  await h.subscribeOk(a, room);
  await h.subscribeOk(b, room);
  await marker(env, b, { name: 'subscription_count' });
  const counts = (ch) => recv.events().filter((e) => e.name === 'subscription_count' && e.channel === ch);
  for (const e of counts(pub)) assert.deepEqual(Object.keys(e).sort(), ['channel', 'name', 'subscription_count']);
  assert.deepEqual(counts(pub).map((e) => e.subscription_count), [1, 2, 1], recv.describe());
  assert.deepEqual(counts(priv).map((e) => e.subscription_count), [1]);
  assert.deepEqual(counts(room), [], 'no subscription_count for presence channels');
  recv.assertAllValid(assert);
});

test('HOOK-EVT-7 subscription_count throttled above 100 subscribers: one per 5 s with the latest count', { timeout: 60000 }, async (t) => {
  const env = await setupHooks(t, { targets: [{ event_types: ['subscription_count'] }] });
  const { recv } = env;
  const ch = h.uid('pub-e7big');
  const isCount = (e) => e.name === 'subscription_count' && e.channel === ch;
  const first = await Promise.all(Array.from({ length: 100 }, () => client(env, undefined, { ms: 10000 })));
  await Promise.all(first.map((c) => h.subscribeOk(c, ch, 10000)));
  const hundred = await recv.waitEvents(isCount, { count: 100, ms: 20000 });
  assert.deepEqual(hundred.map((e) => e.subscription_count).sort((p, q) => p - q), Array.from({ length: 100 }, (_, i) => i + 1), 'up to 100: one per change');
  const t100 = Math.max(...hundred.map((e) => JSON.parse(e._req.text).time_ms));
  const more = await Promise.all([1, 2, 3].map(() => client(env)));
  for (const c of more) await h.subscribeOk(c, ch);
  const late = await recv.waitEvent((e) => isCount(e) && e.subscription_count > 100, { ms: 10000, what: 'throttled subscription_count above 100' });
  assert.equal(late.subscription_count, 103, 'the latest count is sent');
  const lateMs = JSON.parse(late._req.text).time_ms;
  assert.ok(lateMs - t100 >= 4900, `throttled to one per 5 s (sent ${lateMs - t100} ms after the previous one)`);
  await marker(env, more[0], { name: 'subscription_count' });
  assert.deepEqual(
    recv.events().filter(isCount).map((e) => e.subscription_count).slice(100),
    [103],
    'nothing for 101 and 102',
  );
  recv.assertAllValid(assert);
});

// ---------------------------------------------------------------------------
// Delays

test('HOOK-DELAY-1 quick re-subscribe / re-join cancels vacated and member_removed and the matching occupied / member_added', T, async (t) => {
  const DL = 600;
  const env = await setupHooks(t, { vacateDelayMs: DL, targets: [{ event_types: NO_COUNT }] });
  const { recv } = env;
  const seqOf = (ch) => recv.events().filter(onCh(ch)).map((e) => (e.user_id ? `${e.name}:${e.user_id}` : e.name));

  // 6.1: unsubscribe and subscribe again within the window
  const news = h.uid('pub-d1');
  const a = await client(env);
  await h.subscribeOk(a, news);
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: news }));
  const tU = Date.now();
  a.unsubscribe(news);
  await h.waitFor(async () => (await channelInfo(env, news)).occupied === false, DL / 2, 'channel empty on the server');
  await h.subscribeOk(a, news);
  assert.ok(Date.now() < tU + DL, 'test setup: re-subscribed inside the delay window');

  // 6.2-style: the same user re-joins a presence channel from a new connection
  const room = h.uid('presence-d1');
  const p1 = await client(env, 'u1');
  await h.subscribeOk(p1, room);
  await recv.waitEvent(ev({ name: 'member_added', channel: room }));
  const tD = Date.now();
  p1.disconnect();
  await h.waitFor(async () => (await presenceUsers(env, room)).length === 0, DL / 2, 'u1 gone on the server');
  const p2 = await client(env, 'u1');
  await h.subscribeOk(p2, room);
  assert.ok(Date.now() < tD + DL, 'test setup: re-joined inside the delay window');

  // Another user fills the emptied presence channel: the channel stays occupied, u1 really left.
  const room2 = h.uid('presence-d1b');
  const q1 = await client(env, 'u1');
  await h.subscribeOk(q1, room2);
  await recv.waitEvent(ev({ name: 'member_added', channel: room2 }));
  const tQ = Date.now();
  q1.disconnect();
  await h.waitFor(async () => (await presenceUsers(env, room2)).length === 0, DL / 2, 'u1 gone from room2');
  const q2 = await client(env, 'u2');
  await h.subscribeOk(q2, room2);
  assert.ok(Date.now() < tQ + DL, 'test setup: u2 joined inside the delay window');
  const rm = await recv.waitEvent(ev({ name: 'member_removed', channel: room2, user_id: 'u1' }), { ms: 5000 });
  assert.ok(rm._req.at - tQ >= DL - 30, 'member_removed of u1 still sent after the delay');

  await untilTime(Math.max(tU, tD, tQ) + DL + 200);
  const m = await client(env);
  await marker(env, m);
  assert.deepEqual(seqOf(news), ['channel_occupied'], `no vacated and no second occupied for ${news}: ${recv.describe()}`);
  assert.deepEqual(seqOf(room).sort(), ['channel_occupied', 'member_added:u1'], `no removal and no second join for ${room}: ${recv.describe()}`);
  assert.deepEqual(seqOf(room2).sort(), ['channel_occupied', 'member_added:u1', 'member_added:u2', 'member_removed:u1'], `${room2}: ${recv.describe()}`);

  // Leaving for good is reported after the delay.
  const tL = Date.now();
  a.unsubscribe(news);
  p2.unsubscribe(room);
  q2.unsubscribe(room2);
  await recv.waitEvent(ev({ name: 'channel_vacated', channel: news }), { ms: 5000 });
  await recv.waitEvent(ev({ name: 'channel_vacated', channel: room }), { ms: 5000 });
  await recv.waitEvent(ev({ name: 'channel_vacated', channel: room2 }), { ms: 5000 });
  const leaving = [
    ev({ name: 'channel_vacated', channel: news }),
    ev({ name: 'channel_vacated', channel: room }),
    ev({ name: 'channel_vacated', channel: room2 }),
    ev({ name: 'member_removed', channel: room, user_id: 'u1' }),
    ev({ name: 'member_removed', channel: room2, user_id: 'u2' }),
  ];
  for (const pred of leaving) {
    const e = await recv.waitEvent(pred, { ms: 5000 });
    assert.ok(e._req.at - tL >= DL - 30, `${canon(e)} delayed (${e._req.at - tL} ms)`);
  }
  await marker(env, m);
  assert.deepEqual(seqOf(news), ['channel_occupied', 'channel_vacated']);
  assert.deepEqual(seqOf(room).slice(2), ['member_removed:u1', 'channel_vacated']);
  assert.deepEqual(seqOf(room2).slice(4), ['member_removed:u2', 'channel_vacated']);
  recv.assertAllValid(assert);
});

test('HOOK-DELAY-1 the default vacate delay is ~3 s', { timeout: 30000 }, async (t) => {
  const env = await setupHooks(t, { vacateDelayMs: null, targets: [{ event_types: NO_COUNT }] });
  const { recv } = env;
  const ch = h.uid('pub-d1def');
  const room = h.uid('presence-d1def');
  const a = await client(env, 'u1');
  const tS = Date.now();
  await h.subscribeOk(a, ch);
  const occ = await recv.waitEvent(ev({ name: 'channel_occupied', channel: ch }));
  assert.ok(occ._req.at - tS < 1000, 'channel_occupied is not delayed');
  await h.subscribeOk(a, room);
  await recv.waitEvent(ev({ name: 'member_added', channel: room }));
  const tU = Date.now();
  a.unsubscribe(ch);
  a.unsubscribe(room);
  const vac = await recv.waitEvent(ev({ name: 'channel_vacated', channel: ch }), { ms: 8000 });
  const rem = await recv.waitEvent(ev({ name: 'member_removed', channel: room, user_id: 'u1' }), { ms: 8000 });
  for (const e of [vac, rem]) {
    const dt = e._req.at - tU;
    assert.ok(dt >= 2900 && dt < 4500, `${e.name} ~3 s after leaving (got ${dt} ms)`);
    assert.ok(JSON.parse(e._req.text).time_ms - tU >= 2900, 'created when the delay expired');
  }
  recv.assertAllValid(assert);
});

test('HOOK-DELAY-1 a quick re-subscribe suppresses the second occupied / member_added even for targets that do not take vacated / removed', T, async (t) => {
  const DL = 600;
  const env = await setupHooks(t, {
    vacateDelayMs: DL,
    targets: [
      { path: '/occ', event_types: ['channel_occupied'] },
      { path: '/add', event_types: ['member_added'] },
    ],
  });
  const { recv } = env;
  const news = h.uid('pub-d1o');
  const room = h.uid('presence-d1o');
  const a = await client(env, 'u1');
  await h.subscribeOk(a, news);
  await h.subscribeOk(a, room);
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: news }), { path: '/occ' });
  await recv.waitEvent(ev({ name: 'member_added', channel: room }), { path: '/add' });
  const tU = Date.now();
  a.disconnect();
  await h.waitFor(async () => (await channelInfo(env, news)).occupied === false && (await channelInfo(env, room)).occupied === false, DL / 2, 'both channels empty');
  const b = await client(env, 'u1');
  await h.subscribeOk(b, news);
  await h.subscribeOk(b, room);
  assert.ok(Date.now() < tU + DL, 'test setup: came back inside the delay window');
  await untilTime(tU + DL + 200);
  const mk = h.uid('presence-mk');
  await h.subscribeOk(b, mk);
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: mk }), { path: '/occ' });
  await recv.waitEvent(ev({ name: 'member_added', channel: mk }), { path: '/add' });
  // Both sides checked before asserting, so a failure reports each.
  assert.deepEqual(
    {
      occ: recv.events('/occ').filter(onCh(news)).map((e) => e.name),
      add: recv.events('/add').filter(onCh(room)).map((e) => `${e.name}:${e.user_id}`),
    },
    { occ: ['channel_occupied'], add: ['member_added:u1'] },
    'a vacated/occupied pair (or leave/re-join) inside the window produces no webhook at all (hooks §2.1/§3), ' +
      `whatever event types the target takes; /occ got ${recv.describe('/occ')}; /add got ${recv.describe('/add')}`,
  );
  recv.assertAllValid(assert);
});

// ---------------------------------------------------------------------------
// Delivery

test('HOOK-DELIVERY-1 500, 500, 200: the same body three times (same bytes, same signature), back-off 1 s then 2 s', T, async (t) => {
  const env = await setupHooks(t, { targets: [{ event_types: ['channel_occupied'] }], env: { HERALD_WEBHOOKS_REQUEST_TIMEOUT_MS: '800' } });
  const { recv } = env;
  const c = await client(env);
  const ch = h.uid('pub-r1');
  recv.failNext(2, 500);
  await h.subscribeOk(c, ch);
  const ok = await recv.waitEvent(ev({ name: 'channel_occupied', channel: ch }), { ms: 8000 });
  const tries = recv.requests.filter((r) => r.text.includes(ch));
  assert.deepEqual(tries.map((r) => r.status), [500, 500, 200], recv.describe());
  for (const r of tries) {
    assert.ok(r.raw.equals(tries[0].raw), 'identical body bytes');
    assert.equal(r.signature, tries[0].signature, 'identical signature');
    assert.equal(r.valid, true);
  }
  const g1 = tries[1].at - tries[0].at;
  const g2 = tries[2].at - tries[1].at;
  assert.ok(g1 >= 950 && g1 < 1800, `first back-off ~1 s (got ${g1} ms)`);
  assert.ok(g2 >= 1950 && g2 < 3000, `second back-off ~2 s (got ${g2} ms)`);
  assert.equal(recv.accepted().filter((r) => r.signature === ok._req.signature).length, 1, 'not re-sent after the 200');

  // any non-2xx and timeouts are retried too
  const ch2 = h.uid('pub-r1b');
  recv.failNext(1, 404);
  recv.failNext(1, 'hang'); // no answer: the 800 ms request timeout applies
  await h.subscribeOk(c, ch2);
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: ch2 }), { ms: 8000 });
  const tries2 = recv.requests.filter((r) => r.text.includes(ch2));
  assert.deepEqual(tries2.map((r) => r.status), [404, 'hang', 200], recv.describe());
  assert.ok(tries2.every((r) => r.raw.equals(tries2[0].raw)), 'same body on every attempt');
  recv.assertAllValid(assert);
});

test('HOOK-DELIVERY-1 no attempt later than the retry window after creation; a retrying webhook does not hold up other channels', T, async (t) => {
  const WIN = 5; // attempts at 0, 1 and 3 s; the next (7 s) would be past the window
  let doomed;
  const env = await setupHooks(t, {
    targets: [{ event_types: ['channel_occupied'] }],
    env: { HERALD_WEBHOOKS_RETRY_WINDOW_SECS: String(WIN) },
    receiver: { respond: (r) => (doomed && r.text.includes(doomed) ? 500 : undefined) },
  });
  const { recv } = env;
  const c = await client(env);
  doomed = h.uid('pub-doomed');
  await h.subscribeOk(c, doomed);
  await recv.waitRequests((r) => r.text.includes(doomed), { count: 2, ms: 5000 });
  const next = h.uid('pub-next');
  // Requests from here on (by position: an attempt seen just now can share the millisecond).
  const seenBefore = recv.requests.length;
  await h.subscribeOk(c, next);
  // another channel goes while the doomed webhook waits for its third attempt
  const ok = await recv.waitEvent(ev({ name: 'channel_occupied', channel: next }), { ms: 8000 });
  const created = JSON.parse(recv.requests.find((r) => r.text.includes(doomed)).text).time_ms;
  const waitedFor = recv.requests.slice(seenBefore).filter((r) => r.text.includes(doomed) && r.at <= ok._req.at);
  assert.deepEqual(waitedFor.map((r) => r.at - created), [], `${next} did not wait for an attempt of the retrying webhook: ${recv.describe()}`);
  // once the window is over, no attempt can come any more
  await untilTime(created + WIN * 1000 + 500);
  await marker(env, c);
  const attempts = recv.requests.filter((r) => r.text.includes(doomed));
  assert.ok(attempts.length >= 2 && attempts.length <= 3, `attempts: ${recv.describe()}`);
  for (const r of attempts) {
    assert.equal(r.status, 500);
    assert.ok(r.at <= created + WIN * 1000 + 100, `attempt ${r.at - created} ms after creation exceeds the ${WIN} s window`);
  }
  recv.assertAllValid(assert);
});

test('HOOK-DELIVERY-1 a webhook queued behind a hanging request is not first sent after its retry window', T, async (t) => {
  const WIN = 2;
  let hang;
  const env = await setupHooks(t, {
    targets: [{ event_types: ['channel_occupied'] }],
    env: { HERALD_WEBHOOKS_RETRY_WINDOW_SECS: String(WIN), HERALD_WEBHOOKS_REQUEST_TIMEOUT_MS: '3000' },
    receiver: { respond: (r) => (hang && r.text.includes(hang) ? 'hang' : undefined) },
  });
  const { recv } = env;
  const c = await client(env);
  hang = h.uid('pub-hang');
  await h.subscribeOk(c, hang);
  const [first] = await recv.waitRequests((r) => r.text.includes(hang), { count: 1 });
  const queued = h.uid('pub-queued');
  await h.subscribeOk(c, queued); // created now, waits behind the hanging request
  await untilTime(JSON.parse(first.text).time_ms + 3000 + 500); // the hanging attempt has timed out by now
  await marker(env, c);
  const attempts = recv.requests.filter((r) => r.text.includes(queued));
  const late = attempts.filter((r) => r.at > JSON.parse(r.text).time_ms + WIN * 1000 + 100);
  assert.deepEqual(
    late.map((r) => ({ sentMsAfterCreation: r.at - JSON.parse(r.text).time_ms, body: r.text })),
    [],
    `no attempt later than the ${WIN} s retry window after creation (hooks §4)`,
  );
  recv.assertAllValid(assert);
});

test('HOOK-DELIVERY-1 a receiver that is down (port closed) for 20 s still gets every event afterwards', { timeout: 90000 }, async (t) => {
  const env = await setupHooks(t, { targets: [{ event_types: NO_COUNT }] });
  const { recv } = env;
  const a = await client(env);
  const p = await client(env, 'u1');
  const q = await client(env, 'u2');
  await recv.down();
  const tDown = Date.now();
  const pub1 = h.uid('pub-down1');
  const pub2 = h.uid('pub-down2');
  const room = h.uid('presence-down');
  await h.subscribeOk(a, pub1);
  await h.subscribeOk(a, pub2);
  await h.subscribeOk(p, room);
  await h.subscribeOk(q, room);
  trigger(p, room, 'client-x', { i: 1 });
  a.unsubscribe(pub2);
  const expected = [
    { name: 'channel_occupied', channel: pub1 },
    { name: 'channel_occupied', channel: pub2 },
    { name: 'channel_occupied', channel: room },
    { name: 'member_added', channel: room, user_id: 'u1' },
    { name: 'member_added', channel: room, user_id: 'u2' },
    { name: 'client_event', channel: room, event: 'client-x', data: '{"i":1}', socket_id: p.connection.socket_id, user_id: 'u1' },
    { name: 'channel_vacated', channel: pub2 },
  ];
  await untilTime(tDown + 20000);
  assert.equal(recv.requests.length, 0);
  await recv.up();
  await recv.until(() => recv.events().length >= expected.length, 45000, `${expected.length} events after the receiver came back`);
  await marker(env, a, { channel: h.uid('pub-down-mk') });
  const got = recv.events().filter((e) => !e.channel.startsWith('pub-down-mk'));
  assert.deepEqual(bag(got), bag(expected), 'every event, once');
  assert.equal(new Set(recv.accepted().map((r) => r.signature)).size, recv.accepted().length, 'no body accepted twice');
  recv.assertAllValid(assert);
});

test('HOOK-DELIVERY-1 count check: events delivered equal events caused; only retries repeat a body', { timeout: 60000 }, async (t) => {
  let n = 0;
  const env = await setupHooks(t, { receiver: { respond: () => (++n % 4 === 0 ? 500 : undefined) } });
  const { recv } = env;
  const [a, b, p1a, p1b, p2] = await Promise.all([client(env), client(env), client(env, 'u1'), client(env, 'u1'), client(env, 'u2')]);
  const c1 = h.uid('pub-cnt1');
  const c2 = h.uid('pub-cnt2');
  const c3 = h.uid('pub-cnt3');
  const pd = h.uid('private-cnt');
  const room = h.uid('presence-cnt');
  const ce = h.uid('cache-cnt');
  for (const ch of [c1, c2, c3, pd]) await h.subscribeOk(a, ch);
  await h.subscribeOk(b, c1);
  for (const c of [p1a, p1b, p2]) await h.subscribeOk(c, room);
  for (let i = 0; i < 3; i++) trigger(p1a, room, 'client-p', { i });
  for (let i = 0; i < 2; i++) trigger(a, pd, 'client-d', { i });
  await h.subscribeOk(a, ce);
  await h.subscribeOk(b, ce); // cache miss again, de-duplicated
  const sa = a.connection.socket_id;
  const sp = p1a.connection.socket_id;
  // wait until the client events were received by the server (they are in the webhook stream)
  await recv.waitEvents(ev({ name: 'client_event' }), { count: 5, ms: 20000 });
  for (const c of [a, b, p1a, p1b, p2]) c.disconnect();
  const occ = (ch) => ({ name: 'channel_occupied', channel: ch });
  const vac = (ch) => ({ name: 'channel_vacated', channel: ch });
  const cnt = (ch, k) => ({ name: 'subscription_count', channel: ch, subscription_count: k });
  const expected = [
    ...[c1, c2, c3, pd, room, ce].map(occ),
    ...[c1, c2, c3, pd, room, ce].map(vac),
    cnt(c1, 1), cnt(c1, 2), cnt(c2, 1), cnt(c3, 1), cnt(pd, 1), cnt(ce, 1), cnt(ce, 2),
    cnt(c1, 1), cnt(ce, 1), // 2 -> 1 when the first of the two leaves
    { name: 'member_added', channel: room, user_id: 'u1' },
    { name: 'member_added', channel: room, user_id: 'u2' },
    { name: 'member_removed', channel: room, user_id: 'u1' },
    { name: 'member_removed', channel: room, user_id: 'u2' },
    ...[0, 1, 2].map((i) => ({ name: 'client_event', channel: room, event: 'client-p', data: JSON.stringify({ i }), socket_id: sp, user_id: 'u1' })),
    ...[0, 1].map((i) => ({ name: 'client_event', channel: pd, event: 'client-d', data: JSON.stringify({ i }), socket_id: sa })),
    { name: 'cache_miss', channel: ce },
  ];
  await recv.until(() => recv.events().length >= expected.length, 40000, `${expected.length} events`);
  const m = await client(env);
  const mk = await marker(env, m, { name: 'subscription_count', channel: h.uid('pub-cntmk') });
  const got = recv.events().filter((e) => e.channel !== mk);
  assert.deepEqual(bag(got), bag(expected), 'delivered events = caused events');
  const accepted = recv.accepted();
  assert.equal(new Set(accepted.map((r) => r.signature)).size, accepted.length, 'no body accepted twice');
  const failed = recv.requests.filter((r) => r.status !== 200);
  assert.ok(failed.length >= 3, 'some attempts failed (test sanity)');
  const acceptedSigs = new Set(accepted.map((r) => r.signature));
  for (const r of failed) assert.ok(acceptedSigs.has(r.signature), `failed body re-sent and accepted: ${r.text}`);
  // Every repeat of a body follows a failed attempt of that body.
  const bySig = new Map();
  for (const r of recv.requests) {
    const prev = bySig.get(r.signature);
    if (prev) assert.notEqual(prev.status, 200, `body re-sent after a 200: ${r.text}`);
    bySig.set(r.signature, r);
  }
  recv.assertAllValid(assert);
});

test('HOOK-DELIVERY-2 batching off: exactly one event per body; on: several events share a body', T, async (t) => {
  const chans = (tag) => Array.from({ length: 8 }, (_, i) => h.uid(`pub-b${tag}${i}`));

  const off = await setupHooks(t, { batch: false, targets: [{ event_types: ['channel_occupied'] }] });
  const c = await client(off);
  const list = chans('off');
  await Promise.all(list.map((ch) => h.subscribeOk(c, ch)));
  await off.recv.waitEvents(ev({ name: 'channel_occupied' }), { count: 8 });
  await marker(off, c);
  assert.ok(off.recv.requests.every((r) => JSON.parse(r.text).events.length === 1), `one event per body: ${off.recv.describe()}`);
  assert.deepEqual(bag(off.recv.events().filter((e) => list.includes(e.channel))), bag(list.map((ch) => ({ name: 'channel_occupied', channel: ch }))));
  off.recv.assertAllValid(assert);

  const on = await setupHooks(t, { batch: true, targets: [{ event_types: ['channel_occupied'] }], env: { HERALD_WEBHOOKS_BATCH_WINDOW_MS: '300' } });
  const d = await client(on);
  const list2 = chans('on');
  await Promise.all(list2.map((ch) => h.subscribeOk(d, ch)));
  await on.recv.waitEvents(ev({ name: 'channel_occupied' }), { count: 8 });
  await marker(on, d);
  const sizes = on.recv.accepted().map((r) => JSON.parse(r.text).events.length);
  assert.ok(sizes.some((s) => s > 1), `several events in one body with batching on: sizes ${sizes}`);
  assert.deepEqual(bag(on.recv.events().filter((e) => list2.includes(e.channel))), bag(list2.map((ch) => ({ name: 'channel_occupied', channel: ch }))), 'each event once');
  on.recv.assertAllValid(assert);

  const max = await setupHooks(t, {
    batch: true,
    targets: [{ event_types: ['channel_occupied'] }],
    env: { HERALD_WEBHOOKS_BATCH_WINDOW_MS: '300', HERALD_WEBHOOKS_BATCH_MAX_EVENTS: '3' },
  });
  const e = await client(max);
  const list3 = chans('max');
  await Promise.all(list3.map((ch) => h.subscribeOk(e, ch)));
  await max.recv.waitEvents(ev({ name: 'channel_occupied' }), { count: 8 });
  const sizes3 = max.recv.accepted().map((r) => JSON.parse(r.text).events.length);
  assert.ok(sizes3.every((s) => s >= 1 && s <= 3), `batch_max_events 3: sizes ${sizes3}`);
  assert.ok(sizes3.some((s) => s > 1), `still batched: sizes ${sizes3}`);
  max.recv.assertAllValid(assert);
});

test('HOOK-DELIVERY-3 per-target filtering happens before signing: the filtered body is what is signed and sent', T, async (t) => {
  const env = await setupHooks(t, {
    batch: true,
    env: { HERALD_WEBHOOKS_BATCH_WINDOW_MS: '300' },
    targets: [
      { path: '/all', event_types: ALL },
      { path: '/presence', event_types: ['channel_occupied', 'member_added', 'client_event'], filter: { channel_name_starts_with: 'presence-' } },
    ],
  });
  const { recv } = env;
  const p = await client(env, 'u1');
  const q = await client(env, 'u2');
  const pub = h.uid('pub-f');
  const priv = h.uid('private-f');
  const room = h.uid('presence-f');
  await Promise.all([pub, priv, room].map((ch) => h.subscribeOk(p, ch)));
  await h.subscribeOk(q, room);
  trigger(p, room, 'client-f', { k: 1 });
  trigger(p, priv, 'client-g', { k: 2 });
  await recv.waitEvent(ev({ name: 'client_event', channel: room }), { path: '/presence' });
  await recv.waitEvent(ev({ name: 'client_event', channel: priv }), { path: '/all' });
  const mk = h.uid('presence-fmk');
  await h.subscribeOk(q, mk);
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: mk }), { path: '/presence' });
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: mk }), { path: '/all' });
  const pres = recv.accepted('/presence');
  for (const r of pres) {
    assert.equal(r.signature, hmac(app.secret, r.raw), 'signature over the filtered body');
    assert.equal(r.valid, true);
    for (const e of r.events) {
      assert.ok(e.channel.startsWith('presence-') && ['channel_occupied', 'member_added', 'client_event'].includes(e.name), `filtered out: ${JSON.stringify(e)}`);
    }
    assert.ok(!r.text.includes(pub) && !r.text.includes(priv), `no foreign channel in the body sent: ${r.text}`);
  }
  assert.deepEqual(
    bag(recv.events('/presence').filter(onCh(room))),
    bag([
      { name: 'channel_occupied', channel: room },
      { name: 'member_added', channel: room, user_id: 'u1' },
      { name: 'member_added', channel: room, user_id: 'u2' },
      { name: 'client_event', channel: room, event: 'client-f', data: '{"k":1}', socket_id: p.connection.socket_id, user_id: 'u1' },
    ]),
  );
  // The same batch went unfiltered to /all: same time_ms, more events, another signature.
  const pairs = pres
    .map((r) => [r, recv.accepted('/all').find((x) => JSON.parse(x.text).time_ms === JSON.parse(r.text).time_ms && x.events.length > r.events.length)])
    .filter(([, x]) => x);
  assert.ok(pairs.length >= 1, `a mixed batch was filtered for /presence: /all ${recv.describe('/all')} /presence ${recv.describe('/presence')}`);
  for (const [r, x] of pairs) assert.notEqual(r.signature, x.signature);
  assert.ok(recv.events('/all').some((e) => e.channel === pub) && recv.events('/all').some((e) => e.channel === priv));
  recv.assertAllValid(assert);
});

test('HOOK-CONF-1 per-app targets with url, event_types, channel prefix/suffix filters (both spellings) and extra headers', T, async (t) => {
  const env = await setupHooks(t, {
    targets: [
      { path: '/occ', event_types: ['channel_occupied'], headers: { 'X-Custom': 'v', 'X-Pusher-Key': 'evil', 'Content-Type': 'text/plain', 'x-pusher-signature': 'bad' } },
      { path: '/pres', event_types: ['member_added'], filter: { channel_name_starts_with: 'presence-' } },
      { path: '/prod', filter: { channel_name_ends_with: '-prod' } },
      { path: '/alias', event_types: ['channel_occupied', 'client_event'], filter: { channel_prefix: 'private-', channel_suffix: '-prod' } },
    ],
  });
  const { recv } = env;
  const p = await client(env, 'u1');
  const pub = h.uid('pub-k');
  const pubProd = `${h.uid('pub-k')}-prod`;
  const room = h.uid('presence-k');
  const privProd = `${h.uid('private-k')}-prod`;
  const priv = h.uid('private-k');
  for (const ch of [pub, pubProd, room, privProd, priv]) await h.subscribeOk(p, ch);
  trigger(p, privProd, 'client-a', { a: 1 });
  trigger(p, priv, 'client-b', { b: 1 });
  // markers: reach every target
  const mkProd = `${h.uid('private-kmk')}-prod`;
  const mkRoom = h.uid('presence-kmk');
  await h.subscribeOk(p, mkProd);
  await h.subscribeOk(p, mkRoom);
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: mkRoom }), { path: '/occ' });
  await recv.waitEvent(ev({ name: 'member_added', channel: mkRoom }), { path: '/pres' });
  await recv.waitEvent(ev({ name: 'subscription_count', channel: mkProd }), { path: '/prod' });
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: mkProd }), { path: '/alias' });
  const sid = p.connection.socket_id;
  const occ = (ch) => ({ name: 'channel_occupied', channel: ch });
  assert.deepEqual(bag(recv.events('/occ')), bag([pub, pubProd, room, privProd, priv, mkProd, mkRoom].map(occ)), '/occ: only channel_occupied');
  assert.deepEqual(bag(recv.events('/pres')), bag([room, mkRoom].map((ch) => ({ name: 'member_added', channel: ch, user_id: 'u1' }))), '/pres: member_added on presence-*');
  assert.deepEqual(
    bag(recv.events('/prod')),
    bag([
      occ(pubProd), occ(privProd), occ(mkProd),
      { name: 'subscription_count', channel: pubProd, subscription_count: 1 },
      { name: 'subscription_count', channel: privProd, subscription_count: 1 },
      { name: 'subscription_count', channel: mkProd, subscription_count: 1 },
      { name: 'client_event', channel: privProd, event: 'client-a', data: '{"a":1}', socket_id: sid },
    ]),
    '/prod: every type on *-prod',
  );
  assert.deepEqual(
    bag(recv.events('/alias')),
    bag([occ(privProd), occ(mkProd), { name: 'client_event', channel: privProd, event: 'client-a', data: '{"a":1}', socket_id: sid }]),
    '/alias: channel_prefix + channel_suffix',
  );
  for (const r of recv.requests) {
    if (r.url === '/occ') {
      assert.deepEqual(rawHeaderValues(r, 'X-Custom'), ['v'], 'extra header sent');
      assert.ok(headerNames(r).includes('X-Custom'), `extra header name as configured: ${headerNames(r)}`);
    } else {
      assert.deepEqual(rawHeaderValues(r, 'X-Custom'), [], 'extra headers only for their target');
    }
    assert.deepEqual(rawHeaderValues(r, 'X-Pusher-Key'), [app.key], 'X-Pusher-Key cannot be overridden');
    assert.deepEqual(rawHeaderValues(r, 'Content-Type'), ['application/json'], 'Content-Type cannot be overridden');
    assert.deepEqual(rawHeaderValues(r, 'X-Pusher-Signature'), [hmac(app.secret, r.raw)], 'X-Pusher-Signature cannot be overridden');
  }
  recv.assertAllValid(assert);
});
