'use strict';
// WS-PRES-*: presence members, snapshots, member_added/removed, limits.

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

const ctx = h.harness({
  small: {
    apps: [{ id: 'app-id', key: 'app-key', secret: 'app-secret', limits: { max_presence_members: 2 } }],
  },
});
const T = { timeout: 20000 };
const app = h.DEFAULT_APP;
const cd = (user_id, user_info) => JSON.stringify(user_info === undefined ? { user_id } : { user_id, user_info });

/** Sorted copy of a presence snapshot for order-independent comparison. */
function snapshot(frame) {
  const d = h.stringData(frame);
  assert.deepEqual(Object.keys(d), ['presence']);
  assert.deepEqual(Object.keys(d.presence).sort(), ['count', 'hash', 'ids']);
  return { ...d.presence, ids: [...d.presence.ids].sort() };
}

test('WS-PRES-1 user_id string or number -> canonical string; other types rejected', T, async () => {
  const ch = h.uid('presence-p1');
  const a = await ctx.pool.raw();
  const okA = await a.subscribeOk(ch, { app, channelData: '{"user_id":10,"user_info":{"n":"num"}}' });
  assert.deepEqual(snapshot(okA), { ids: ['10'], hash: { 10: { n: 'num' } }, count: 1 });
  assert.match(okA.data, /"ids":\["10"\]/, 'id must be the string "10"');
  const b = await ctx.pool.raw();
  await b.subscribeOk(ch, { app, channelData: cd('str-id') });
  const added = await a.nextEvent('pusher_internal:member_added', ch);
  assert.deepEqual(h.stringData(added), { user_id: 'str-id', user_info: null });
  // numeric id in member events is a string too
  const c = await ctx.pool.raw();
  await c.subscribeOk(ch, { app, channelData: '{"user_id":42}' });
  const added42 = await a.nextEvent('pusher_internal:member_added', ch);
  assert.equal(h.stringData(added42).user_id, '42');
  const r = await h.sdkCall(h.sdk(ctx.server).get({ path: `/channels/${ch}/users` }));
  assert.deepEqual(r.json().users.map((u) => u.id).sort(), ['10', '42', 'str-id']);
  // other types rejected
  const bad = ['{"user_id":null}', '{"user_id":true}', '{"user_id":{"a":1}}', '{"user_id":[1]}', '{"user_id":""}', '{"user_info":{}}', '"just-a-string"', '[1]', 'not json'];
  const d = await ctx.pool.raw();
  for (const channelData of bad) {
    const name = h.uid('presence-p1bad');
    d.subscribe(name, { auth: h.channelAuth(app, d.socketId, name, channelData), channel_data: channelData });
    const e = await d.nextMeaningful(3000, `reply for channel_data ${channelData}`);
    h.assertErrorFrame(e, { code: null, prefix: 'Invalid channel_data' });
  }
  await h.expectNothingMore(d, 'no subscription for invalid channel_data');
});

test('WS-PRES-2 snapshot {"presence":{"ids","hash","count"}} string-encoded, including the subscriber', T, async () => {
  const ch = h.uid('presence-p2');
  const a = await ctx.pool.raw();
  const okA = await a.subscribeOk(ch, { app, channelData: cd('u1', { name: 'One' }) });
  assert.equal(typeof okA.data, 'string');
  assert.deepEqual(snapshot(okA), { ids: ['u1'], hash: { u1: { name: 'One' } }, count: 1 });
  const b = await ctx.pool.raw();
  const okB = await b.subscribeOk(ch, { app, channelData: cd('u2', [1, 'two']) });
  assert.deepEqual(snapshot(okB), { ids: ['u1', 'u2'], hash: { u1: { name: 'One' }, u2: [1, 'two'] }, count: 2 });
  assert.deepEqual(Object.keys(okB).sort(), ['channel', 'data', 'event']);
  // pusher-js builds its members list from it
  const p = await ctx.pool.pusher({ presenceDefault: { user_id: 'u3', user_info: { name: 'Three' } } });
  const pch = await h.subscribeOk(p, ch);
  assert.equal(pch.members.count, 3);
  const seen = {};
  pch.members.each((m) => (seen[m.id] = m.info));
  assert.deepEqual(seen, { u1: { name: 'One' }, u2: [1, 'two'], u3: { name: 'Three' } });
  assert.equal(pch.members.me.id, 'u3');
});

test('WS-PRES-3 member_added {"user_id","user_info"} to all other subscribers on a user\'s first connection only', T, async () => {
  const ch = h.uid('presence-p3');
  const a = await ctx.pool.raw();
  await a.subscribeOk(ch, { app, channelData: cd('a') });
  const b = await ctx.pool.raw();
  await b.subscribeOk(ch, { app, channelData: cd('b') });
  assert.deepEqual(h.stringData(await a.nextEvent('pusher_internal:member_added', ch)), { user_id: 'b', user_info: null });
  const a2 = await ctx.pool.raw(); // second tab of user a
  await a2.subscribeOk(ch, { app, channelData: cd('a') });
  const j = await ctx.pool.raw();
  const okJ = await j.subscribeOk(ch, { app, channelData: cd('joiner', { role: 'x' }) });
  assert.equal(snapshot(okJ).count, 3);
  for (const other of [a, a2, b]) {
    const added = await other.nextEvent('pusher_internal:member_added', ch);
    assert.deepEqual(added, {
      event: 'pusher_internal:member_added',
      channel: ch,
      data: added.data,
    });
    assert.deepEqual(h.stringData(added), { user_id: 'joiner', user_info: { role: 'x' } });
  }
  // the joiner itself gets no member_added (it has the snapshot)
  await h.expectNothingMore(j, 'no member_added to the joiner');
  // pusher-js emits pusher:member_added
  const p = await ctx.pool.pusher({ presenceDefault: { user_id: 'watcher-js' } });
  const pch = await h.subscribeOk(p, ch);
  const evt = h.nextEvent(pch, 'pusher:member_added');
  const k = await ctx.pool.raw();
  await k.subscribeOk(ch, { app, channelData: cd('late', { v: 1 }) });
  const { data } = await evt;
  assert.equal(data.id, 'late');
  assert.deepEqual(data.info, { v: 1 });
});

test('WS-PRES-4 member_removed {"user_id"} to remaining subscribers when the last connection leaves (unsubscribe or disconnect)', T, async () => {
  const ch = h.uid('presence-p4');
  const a = await ctx.pool.raw();
  await a.subscribeOk(ch, { app, channelData: cd('stay') });
  // leaving by unsubscribe
  const u = await ctx.pool.raw();
  await u.subscribeOk(ch, { app, channelData: cd('unsub') });
  await a.nextEvent('pusher_internal:member_added', ch);
  u.unsubscribe(ch);
  const r1 = await a.nextEvent('pusher_internal:member_removed', ch);
  assert.deepEqual(r1, { event: 'pusher_internal:member_removed', channel: ch, data: r1.data });
  assert.deepEqual(h.stringData(r1), { user_id: 'unsub' });
  await h.expectNothingMore(u, 'the leaver gets nothing');
  // leaving by disconnect, user with two connections: only the last one counts
  const t1 = await ctx.pool.raw();
  const t2 = await ctx.pool.raw();
  await t1.subscribeOk(ch, { app, channelData: cd('tabs') });
  await t2.subscribeOk(ch, { app, channelData: cd('tabs') });
  await a.nextEvent('pusher_internal:member_added', ch);
  t1.close();
  const api = h.sdk(ctx.server);
  await h.waitFor(async () => {
    const r = await h.sdkCall(api.get({ path: `/channels/${ch}`, params: { info: 'subscription_count' } }));
    return r.json().subscription_count === 2;
  }, 3000, 'first tab gone');
  await h.expectNothingMore(a, 'no member_removed while another tab remains');
  t2.close();
  const r2 = await a.nextEvent('pusher_internal:member_removed', ch);
  assert.deepEqual(h.stringData(r2), { user_id: 'tabs' });
  // pusher-js: pusher:member_removed
  const p = await ctx.pool.pusher({ presenceDefault: { user_id: 'js-watch' } });
  const pch = await h.subscribeOk(p, ch);
  const gone = h.nextEvent(pch, 'pusher:member_removed');
  a.unsubscribe(ch);
  const { data } = await gone;
  assert.equal(data.id, 'stay');
  assert.equal(pch.members.count, 1);
});

test('WS-PRES-5 additional tabs of a present user produce no member events', T, async () => {
  const ch = h.uid('presence-p5');
  const a = await ctx.pool.raw();
  await a.subscribeOk(ch, { app, channelData: cd('observer') });
  const tab1 = await ctx.pool.raw();
  await tab1.subscribeOk(ch, { app, channelData: cd('multi', { t: 1 }) });
  await a.nextEvent('pusher_internal:member_added', ch);
  const tab2 = await ctx.pool.raw();
  const ok2 = await tab2.subscribeOk(ch, { app, channelData: cd('multi', { t: 1 }) });
  assert.equal(snapshot(ok2).count, 2, 'second tab: still two distinct users');
  await h.expectNothingMore(a, 'no member_added for a second tab');
  await h.expectNothingMore(tab1, 'no member_added to the first tab');
  tab2.unsubscribe(ch);
  await tab2.sync();
  await h.expectNothingMore(a, 'no member_removed while the first tab remains');
  await h.expectNothingMore(tab1, 'no member_removed to the other tab');
});

test('WS-PRES-6 more than max_presence_members distinct users -> new user refused; known users still admitted', T, async () => {
  const s = ctx.servers.small;
  const ch = h.uid('presence-p6');
  const u1 = await ctx.pool.raw({ server: s });
  const u2 = await ctx.pool.raw({ server: s });
  await u1.subscribeOk(ch, { app, channelData: cd('one') });
  await u2.subscribeOk(ch, { app, channelData: cd('two') });
  await u1.nextEvent('pusher_internal:member_added', ch);
  const u3 = await ctx.pool.raw({ server: s });
  u3.subscribe(ch, { auth: h.channelAuth(app, u3.socketId, ch, cd('three')), channel_data: cd('three') });
  const e = await u3.nextMeaningful(3000, 'reply for the third user');
  h.assertErrorFrame(e, { code: null });
  assert.ok(e.data.message.length > 0);
  await h.expectNothingMore(u1, 'no member_added for the refused user');
  // a second connection of an existing member is fine
  const u1b = await ctx.pool.raw({ server: s });
  const ok = await u1b.subscribeOk(ch, { app, channelData: cd('one') });
  assert.equal(snapshot(ok).count, 2);
  // once someone leaves, a new user fits
  u2.close();
  await u1.nextEvent('pusher_internal:member_removed', ch);
  const ok3 = await u3.subscribeOk(ch, { app, channelData: cd('three') });
  assert.deepEqual(snapshot(ok3).ids, ['one', 'three']);
});

test('WS-PRES-7 user_info over 1 KB or user_id over 128 chars -> refused', T, async () => {
  const c = await ctx.pool.raw();
  const fits = { s: 'x'.repeat(1000) }; // serialized 1008 bytes
  assert.ok(JSON.stringify(fits).length <= 1024);
  const ok = await c.subscribeOk(h.uid('presence-p7ok'), { app, channelData: cd('fits', fits) });
  assert.equal(snapshot(ok).count, 1);
  const big = { s: 'x'.repeat(1100) };
  const ch1 = h.uid('presence-p7big');
  c.subscribe(ch1, { auth: h.channelAuth(app, c.socketId, ch1, cd('big', big)), channel_data: cd('big', big) });
  h.assertErrorFrame(await c.nextMeaningful(3000, 'reply for big user_info'), { code: null });
  const okId = await c.subscribeOk(h.uid('presence-p7id'), { app, channelData: cd('i'.repeat(128)) });
  assert.equal(snapshot(okId).ids[0].length, 128);
  const ch2 = h.uid('presence-p7long');
  const longId = cd('i'.repeat(129));
  c.subscribe(ch2, { auth: h.channelAuth(app, c.socketId, ch2, longId), channel_data: longId });
  h.assertErrorFrame(await c.nextMeaningful(3000, 'reply for a long user_id'), { code: null });
  await h.expectNothingMore(c, 'refused subscriptions produce nothing else');
});

test('WS-PRES-8 the latest user_info of a user replaces the stored one for later snapshots', T, async () => {
  const ch = h.uid('presence-p8');
  const t1 = await ctx.pool.raw();
  await t1.subscribeOk(ch, { app, channelData: cd('u', { v: 1 }) });
  const t2 = await ctx.pool.raw();
  await t2.subscribeOk(ch, { app, channelData: cd('u', { v: 2 }) });
  await h.expectNothingMore(t1, 'no event to existing members about the new user_info');
  const later = await ctx.pool.raw();
  const ok = await later.subscribeOk(ch, { app, channelData: cd('later') });
  assert.deepEqual(snapshot(ok).hash.u, { v: 2 });
});

test('WS-PRES-9 presence without channel_data, not signed in -> "<channel> is a presence channel and subscription must include channel_data"', T, async () => {
  const c = await ctx.pool.raw();
  const ch = h.uid('presence-p9');
  c.subscribe(ch, { auth: h.channelAuth(app, c.socketId, ch) });
  await h.expectError(c, { code: null, message: `${ch} is a presence channel and subscription must include channel_data` });
  await h.expectNothingMore(c);
});
