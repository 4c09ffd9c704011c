'use strict';
// WS-CACHE-*, WS-COUNT-*: cache channels and subscription counts.

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

const ctx = h.harness({
  short: {
    apps: [{ id: 'app-id', key: 'app-key', secret: 'app-secret', enable_subscription_count: false, limits: { cache_ttl: 1 } }],
  },
});
const T = { timeout: 30000 };
const app = h.DEFAULT_APP;
const SEALED = '{"nonce":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH","ciphertext":"ZrsmvtN628hFj6VtlG8bby1MsZW/4ftOyCr5kbst+BJJcFk="}';

/** Publishes through the SDK (raw body so that encrypted channels need no master key). */
function publish(server, channel, name, data) {
  return h.sdkCall(h.sdk(server).post({ path: '/events', body: { name, data, channels: [channel] } }));
}
/** Subscribes a fresh raw client and returns [client, frames after subscription_succeeded]. */
async function subscribeFresh(server, channel) {
  const c = await ctx.pool.raw({ server });
  const channelData = channel.startsWith('presence-') ? JSON.stringify({ user_id: h.uid('u') }) : undefined;
  await c.subscribeOk(channel, { app, channelData });
  return c;
}

test('WS-CACHE-1 events published via HTTP to the four cache types are stored, also when unoccupied (TTL 1800 s)', T, async () => {
  const types = ['cache-', 'private-cache-', 'private-encrypted-cache-', 'presence-cache-'];
  for (const prefix of types) {
    const ch = h.uid(`${prefix}k1`);
    const data = prefix.startsWith('private-encrypted') ? SEALED : `{"t":"${prefix}"}`;
    const t0 = performance.now();
    assert.equal((await publish(ctx.server, ch, 'stored', data)).status, 200);
    const info = await h.sdkCall(h.sdk(ctx.server).get({ path: `/channels/${ch}`, params: { info: 'cache' } }));
    const stored = (performance.now() - t0) / 1000; // at most this long since the event was stored
    assert.equal(info.json().cache.data, data);
    // limits.cache_ttl (1800 s) less the time since the event was stored, in whole seconds
    const least = 1800 - Math.ceil(stored);
    const { ttl } = info.json().cache;
    assert.ok(Number.isInteger(ttl) && ttl >= least && ttl <= 1800, `ttl ${ttl}, expected ${least}..1800`);
    const c = await subscribeFresh(ctx.server, ch);
    assert.deepEqual(await c.nextMeaningful(3000, `cached event on ${ch}`), { event: 'stored', channel: ch, data });
  }
  // non-cache channels store nothing
  const plain = h.uid('k1-plain');
  await publish(ctx.server, plain, 'gone', 'x');
  const c = await subscribeFresh(ctx.server, plain);
  await h.expectNothingMore(c, 'no replay on a non-cache channel');
  // the TTL is honoured (configured 1 s here)
  const s = ctx.servers.short;
  const ch = h.uid('cache-k1ttl');
  await publish(s, ch, 'short-lived', 'x');
  const fresh = await subscribeFresh(s, ch);
  assert.equal((await fresh.nextMeaningful()).event, 'short-lived');
  await h.waitFor(async () => {
    const r = await h.sdkCall(h.sdk(s).get({ path: `/channels/${ch}`, params: { info: 'cache' } }));
    return r.json().cache === null;
  }, 5000, 'the cached event to expire after cache_ttl = 1 s');
  const late = await subscribeFresh(s, ch);
  assert.deepEqual(await late.nextMeaningful(), { event: 'pusher:cache_miss', channel: ch });
});

test('WS-CACHE-2 a new subscriber receives the latest cached event right after subscription_succeeded', T, async () => {
  const ch = h.uid('cache-k2');
  await publish(ctx.server, ch, 'first', '1');
  await publish(ctx.server, ch, 'second', '2');
  const c = await ctx.pool.raw();
  c.subscribe(ch);
  assert.deepEqual(await c.nextJson(3000, 'subscription_succeeded'), { event: 'pusher_internal:subscription_succeeded', channel: ch, data: '{}' });
  assert.deepEqual(await c.nextMeaningful(3000, 'cached event'), { event: 'second', channel: ch, data: '2' });
  await h.expectNothingMore(c, 'exactly one replayed event');
  // batch publishes are cached too; presence-cache replays after the presence snapshot
  const pch = h.uid('presence-cache-k2');
  await h.sdk(ctx.server).triggerBatch([{ channel: pch, name: 'from-batch', data: 'b' }]);
  const p = await ctx.pool.raw();
  p.subscribe(pch, { auth: h.channelAuth(app, p.socketId, pch, '{"user_id":"k2"}'), channel_data: '{"user_id":"k2"}' });
  const ok = await p.nextJson(3000, 'presence subscription_succeeded');
  assert.equal(ok.event, 'pusher_internal:subscription_succeeded');
  assert.deepEqual(await p.nextMeaningful(), { event: 'from-batch', channel: pch, data: 'b' });
  // existing subscribers are not sent it again; pusher-js gets it as a normal event
  const js = await ctx.pool.pusher();
  const chan = js.subscribe(ch);
  const got = await h.nextEvent(chan, 'second');
  assert.equal(got.data, 2);
  await h.expectNothingMore(c, 'no replay to existing subscribers');
});

test('WS-CACHE-3 nothing cached -> {"event":"pusher:cache_miss","channel":…} to the subscriber only', T, async () => {
  const ch = h.uid('private-cache-k3');
  const a = await ctx.pool.raw();
  a.subscribe(ch, { auth: h.channelAuth(app, a.socketId, ch) });
  assert.equal((await a.nextJson()).event, 'pusher_internal:subscription_succeeded');
  const miss = await a.nextMeaningful(3000, 'cache_miss');
  assert.deepEqual(miss, { event: 'pusher:cache_miss', channel: ch });
  const missFrame = a.frames.find((f) => f.json && f.json.event === 'pusher:cache_miss');
  assert.ok(!('data' in missFrame.json), 'cache_miss carries no data member');
  const b = await ctx.pool.raw();
  await b.subscribeOk(ch, { app });
  assert.deepEqual(await b.nextMeaningful(), { event: 'pusher:cache_miss', channel: ch });
  await h.expectNothingMore(a, 'the first subscriber is not sent the second one\'s cache_miss');
  // pusher-js emits pusher:cache_miss on the channel
  const js = await ctx.pool.pusher();
  const chan = js.subscribe(h.uid('cache-k3js'));
  await h.nextEvent(chan, 'pusher:cache_miss');
});

test('WS-CACHE-4 client events are never cached', T, async () => {
  const ch = h.uid('private-cache-k4');
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  await a.subscribeOk(ch, { app });
  await b.subscribeOk(ch, { app });
  await a.sync();
  await b.sync();
  a.send({ event: 'client-not-cached', channel: ch, data: { x: 1 } });
  assert.equal((await b.nextEvent('client-not-cached', ch)).event, 'client-not-cached');
  const late = await ctx.pool.raw();
  await late.subscribeOk(ch, { app });
  assert.deepEqual(await late.nextMeaningful(), { event: 'pusher:cache_miss', channel: ch });
  // with an HTTP event cached first, a later client event does not replace it
  await publish(ctx.server, ch, 'from-http', 'h');
  a.send({ event: 'client-after', channel: ch, data: {} });
  await b.nextEvent('client-after', ch);
  const later = await ctx.pool.raw();
  await later.subscribeOk(ch, { app });
  assert.deepEqual(await later.nextMeaningful(), { event: 'from-http', channel: ch, data: 'h' });
  const info = await h.sdkCall(h.sdk(ctx.server).get({ path: `/channels/${ch}`, params: { info: 'cache' } }));
  assert.equal(info.json().cache.data, 'h');
});

test('WS-COUNT-1 pusher_internal:subscription_count {"subscription_count":n} to all subscribers after each (un)subscribe', T, async () => {
  const ch = h.uid('count1');
  const countOf = (f) => {
    assert.deepEqual(Object.keys(f).sort(), ['channel', 'data', 'event']);
    return h.stringData(f).subscription_count;
  };
  const a = await ctx.pool.raw();
  await a.subscribeOk(ch);
  assert.equal(countOf(await a.nextEvent('pusher_internal:subscription_count', ch)), 1);
  const b = await ctx.pool.raw();
  await b.subscribeOk(ch);
  assert.equal(countOf(await a.nextEvent('pusher_internal:subscription_count', ch)), 2);
  assert.equal(countOf(await b.nextEvent('pusher_internal:subscription_count', ch)), 2);
  b.unsubscribe(ch);
  assert.equal(countOf(await a.nextEvent('pusher_internal:subscription_count', ch)), 1);
  await h.expectNothingMore(b, 'nothing to the connection that left', { ignore: () => false });
  const c = await ctx.pool.raw();
  await c.subscribeOk(ch);
  assert.equal(countOf(await a.nextEvent('pusher_internal:subscription_count', ch)), 2);
  c.close();
  assert.equal(countOf(await a.nextEvent('pusher_internal:subscription_count', ch)), 1);
  // private channels too; presence channels never
  const priv = h.uid('private-count1');
  await a.subscribeOk(priv, { app });
  assert.equal(countOf(await a.nextEvent('pusher_internal:subscription_count', priv)), 1);
  const pres = h.uid('presence-count1');
  await a.subscribeOk(pres, { app, channelData: '{"user_id":"c1"}' });
  await b.subscribeOk(pres, { app, channelData: '{"user_id":"c2"}' });
  await a.nextEvent('pusher_internal:member_added', pres);
  await h.expectNothingMore(a, 'no subscription_count on presence channels', { ignore: () => false });
  // pusher-js exposes it as channel.subscriptionCount / pusher:subscription_count
  const js = await ctx.pool.pusher();
  const chan = js.subscribe(ch);
  const ev = await h.nextEvent(chan, 'pusher:subscription_count');
  assert.deepEqual(ev.data, { subscription_count: 2 });
  assert.equal(chan.subscriptionCount, 2);
  // feature off for the app: no count events at all
  const s = ctx.servers.short;
  const x = await ctx.pool.raw({ server: s });
  const y = await ctx.pool.raw({ server: s });
  await x.subscribeOk('count-off');
  await y.subscribeOk('count-off');
  y.unsubscribe('count-off');
  await y.sync();
  await h.expectNothingMore(x, 'no subscription_count when the feature is off', { ignore: () => false });
});

test('WS-COUNT-2 channels with more than 100 subscribers: at most one count event per 5 s, latest value', { timeout: 60000 }, async () => {
  const ch = h.uid('count2');
  const observer = await ctx.pool.raw();
  await observer.subscribeOk(ch);
  const others = [];
  for (let i = 0; i < 99; i++) {
    const c = await ctx.pool.raw();
    c.subscribe(ch);
    others.push(c);
  }
  // up to 100 subscribers every change is reported at once
  await observer.next((m) => m.event === 'pusher_internal:subscription_count' && JSON.parse(m.data).subscription_count === 100, 10000, 'count 100');
  observer.drain();
  // Frames from here on, by position: a timestamp would also take in count events that arrived
  // within the same millisecond, before this point.
  const from = observer.frames.length;
  for (let i = 0; i < 5; i++) {
    const c = await ctx.pool.raw();
    c.subscribe(ch);
  }
  const counts = () =>
    observer.frames
      .slice(from)
      .filter((f) => f.json && f.json.event === 'pusher_internal:subscription_count')
      .map((f) => ({ n: JSON.parse(f.json.data).subscription_count, at: f.at }));
  await h.waitFor(() => counts().some((x) => x.n === 105), 9000, 'the latest count (105) to be reported');
  const seen = counts();
  assert.ok(seen.length <= 2, `at most one event per 5 s window, got ${JSON.stringify(seen)}`);
  for (let i = 1; i < seen.length; i++) {
    assert.ok(seen[i].at - seen[i - 1].at >= 4500, `events closer than 5 s: ${JSON.stringify(seen)}`);
  }
  assert.equal(seen[seen.length - 1].n, 105);
  // once everyone is back under the threshold, a change is reported at once again
  for (const c of others.slice(0, 10)) c.unsubscribe(ch);
  await observer.next((m) => m.event === 'pusher_internal:subscription_count' && JSON.parse(m.data).subscription_count === 95, 12000, 'count back to 95');
});
