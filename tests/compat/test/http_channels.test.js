'use strict';
// HTTP-CHANNELS-*, HTTP-CHANNEL-*, HTTP-USERS-*: channel queries.

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

const ctx = h.harness({
  nocount: { apps: [{ id: 'app-id', key: 'app-key', secret: 'app-secret', enable_subscription_count: false }] },
});
const T = { timeout: 20000 };
const app = h.DEFAULT_APP;

async function get(path, params) {
  return h.sdkCall(h.sdk(ctx.server).get({ path, params }));
}
function assertError(res, status, body) {
  assert.equal(res.status, status, `status (body ${JSON.stringify(res.text)})`);
  assert.ok(res.text.endsWith('\n'), `plain-text error ending in a newline: ${JSON.stringify(res.text)}`);
  if (body !== undefined) assert.equal(res.text, body);
}
const cd = (id) => JSON.stringify({ user_id: id });

test('HTTP-CHANNELS-1 GET /channels lists occupied channels as {"channels":{name:{}}}; none -> {"channels":{}}', T, async () => {
  const empty = await get('/channels');
  assert.equal(empty.status, 200);
  assert.equal(empty.text.replace(/\s/g, ''), '{"channels":{}}', 'fresh server: no channels, as an object');
  const a = await ctx.pool.raw();
  await a.subscribeOk('lc-a');
  await a.subscribeOk('presence-lc-b', { app, channelData: cd('u1') });
  await a.subscribeOk('private-lc-c', { app });
  const b = await ctx.pool.raw();
  await b.subscribeOk('lc-a');
  const all = await get('/channels');
  assert.deepEqual(all.json(), { channels: { 'lc-a': {}, 'presence-lc-b': {}, 'private-lc-c': {} } });
  a.unsubscribe('private-lc-c');
  b.close();
  await h.waitFor(async () => {
    const r = await get('/channels');
    return JSON.stringify(r.json()) === JSON.stringify({ channels: { 'lc-a': {}, 'presence-lc-b': {} } }) || false;
  }, 3000, 'private-lc-c to disappear and lc-a to stay (still subscribed by a)');
  a.close();
  await h.waitFor(async () => (await get('/channels')).text.replace(/\s/g, '') === '{"channels":{}}', 3000, 'no channels after everyone left');
});

test('HTTP-CHANNELS-2 filter_by_prefix filters by plain, case-sensitive prefix', T, async () => {
  const a = await ctx.pool.raw();
  for (const ch of ['fp-one', 'fp-two', 'fpx', 'FP-upper', 'other-fp']) await a.subscribeOk(ch);
  await a.subscribeOk('private-fp-three', { app });
  assert.deepEqual((await get('/channels', { filter_by_prefix: 'fp-' })).json(), { channels: { 'fp-one': {}, 'fp-two': {} } });
  assert.deepEqual((await get('/channels', { filter_by_prefix: 'private-fp' })).json(), { channels: { 'private-fp-three': {} } });
  assert.deepEqual((await get('/channels', { filter_by_prefix: 'FP' })).json(), { channels: { 'FP-upper': {} } });
  assert.deepEqual((await get('/channels', { filter_by_prefix: 'zzz' })).json(), { channels: {} });
});

test('HTTP-CHANNELS-3 info=user_count without a presence- prefix filter -> 400 (exact text); with it -> counts', T, async () => {
  const msg = 'user_count may only be requested for presence channels - please supply filter_by_prefix begining with presence-\n';
  assertError(await get('/channels', { info: 'user_count' }), 400, msg);
  assertError(await get('/channels', { info: 'user_count', filter_by_prefix: 'private-' }), 400, msg);
  assertError(await get('/channels', { info: 'user_count', filter_by_prefix: 'pres' }), 400, msg);
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  await a.subscribeOk('presence-uc-1', { app, channelData: cd('x') });
  await b.subscribeOk('presence-uc-1', { app, channelData: cd('y') });
  await a.subscribeOk('presence-uc-2', { app, channelData: cd('x') });
  await b.subscribeOk('presence-uc-2', { app, channelData: cd('x') });
  const r = await get('/channels', { info: 'user_count', filter_by_prefix: 'presence-uc-' });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json(), { channels: { 'presence-uc-1': { user_count: 2 }, 'presence-uc-2': { user_count: 1 } } });
});

test('HTTP-CHANNELS-4 info=subscription_count supported', T, async () => {
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  await a.subscribeOk('sc-list-a');
  await b.subscribeOk('sc-list-a');
  await a.subscribeOk('sc-list-b');
  const r = await get('/channels', { info: 'subscription_count', filter_by_prefix: 'sc-list-' });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json(), { channels: { 'sc-list-a': { subscription_count: 2 }, 'sc-list-b': { subscription_count: 1 } } });
});

test('HTTP-CHANNELS-5 internal #server-to-user- channels are not listed', T, async () => {
  const a = await ctx.pool.raw();
  await a.signin(app, { id: 'listed-user' });
  await a.subscribeOk('#server-to-user-listed-user');
  await a.subscribeOk('s2u-visible');
  const r = await get('/channels');
  assert.ok('s2u-visible' in r.json().channels);
  assert.deepEqual(Object.keys(r.json().channels).filter((k) => k.startsWith('#')), []);
  // '#' must be percent-encoded on the wire (the SDK would send it raw, starting a URL fragment)
  const f = await h.signedFetch(ctx.server.httpBase, { app, method: 'GET', path: '/apps/app-id/channels', params: { filter_by_prefix: '#' } });
  assert.equal(f.status, 200, f.text);
  assert.deepEqual(f.json(), { channels: {} });
});

test('HTTP-CHANNEL-1 GET /channels/{c} always returns occupied; unoccupied -> 200 {"occupied":false}', T, async () => {
  for (const ch of ['never-used', 'presence-never', 'private-never', 'cache-never']) {
    const r = await get(`/channels/${ch}`);
    assert.equal(r.status, 200);
    assert.deepEqual(r.json(), { occupied: false });
  }
  const a = await ctx.pool.raw();
  await a.subscribeOk('ch1-occ');
  assert.deepEqual((await get('/channels/ch1-occ')).json(), { occupied: true });
  assertError(await get('/channels/bad name'), 400);
});

test('HTTP-CHANNEL-2 info=user_count on non-presence -> 400 (exact text); presence -> user_count', T, async () => {
  for (const ch of ['public-uc', 'private-uc', 'cache-uc']) {
    assertError(await get(`/channels/${ch}`, { info: 'user_count' }), 400, 'Cannot retrieve the user count unless the channel is a presence channel\n');
  }
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  await a.subscribeOk('presence-ch2', { app, channelData: cd('1') });
  await b.subscribeOk('presence-ch2', { app, channelData: cd('2') });
  // b in a second presence channel counts there, not twice here
  await b.subscribeOk('presence-ch2b', { app, channelData: cd('2') });
  assert.deepEqual((await get('/channels/presence-ch2', { info: 'user_count' })).json(), { occupied: true, user_count: 2 });
  assert.deepEqual((await get('/channels/presence-ch2b', { info: 'user_count' })).json(), { occupied: true, user_count: 1 });
  assert.deepEqual((await get('/channels/presence-ch2-empty', { info: 'user_count' })).json(), { occupied: false, user_count: 0 });
});

test('HTTP-CHANNEL-3 info=subscription_count -> connection count for every channel type', T, async () => {
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  await a.signin(app, { id: 'same-user' });
  for (const c of [a, b]) {
    await c.subscribeOk('sc-pub');
    await c.subscribeOk('private-sc', { app });
    await c.subscribeOk('presence-sc', { app, channelData: cd('same-user') });
  }
  for (const ch of ['sc-pub', 'private-sc']) {
    assert.deepEqual((await get(`/channels/${ch}`, { info: 'subscription_count' })).json(), { occupied: true, subscription_count: 2 });
  }
  assert.deepEqual((await get('/channels/presence-sc', { info: 'subscription_count,user_count' })).json(), {
    occupied: true,
    subscription_count: 2,
    user_count: 1,
  });
  assert.deepEqual((await get('/channels/sc-unused', { info: 'subscription_count' })).json(), { occupied: false, subscription_count: 0 });
  // feature disabled for the app -> 400
  const off = await h.sdkCall(h.sdk(ctx.servers.nocount).get({ path: '/channels/sc-pub', params: { info: 'subscription_count' } }));
  assertError(off, 400);
});

test('HTTP-CHANNEL-4 info=cache on cache channels -> {"data","ttl"} or null; non-cache -> 400', T, async () => {
  const api = h.sdk(ctx.server);
  const t0 = performance.now();
  await api.trigger('cache-ch4', 'tick', '{"p":10}');
  const r = await get('/channels/cache-ch4', { info: 'cache' });
  const stored = (performance.now() - t0) / 1000; // at most this long since the event was stored
  assert.equal(r.status, 200, r.text);
  const body = r.json();
  assert.deepEqual(Object.keys(body).sort(), ['cache', 'occupied']);
  assert.equal(body.occupied, false);
  assert.deepEqual(Object.keys(body.cache).sort(), ['data', 'ttl']);
  assert.equal(body.cache.data, '{"p":10}');
  // limits.cache_ttl (1800 s) less the time since the event was stored, in whole seconds
  const least = 1800 - Math.ceil(stored);
  assert.ok(Number.isInteger(body.cache.ttl) && body.cache.ttl >= least && body.cache.ttl <= 1800, `ttl ${body.cache.ttl}, expected ${least}..1800`);
  for (const ch of ['cache-ch4-none', 'private-cache-ch4-none', 'presence-cache-ch4-none', 'private-encrypted-cache-ch4-none']) {
    assert.deepEqual((await get(`/channels/${ch}`, { info: 'cache' })).json(), { occupied: false, cache: null });
  }
  await api.trigger('private-cache-ch4', 'tick', 'latest-1');
  await api.trigger('private-cache-ch4', 'tick', 'latest-2');
  assert.equal((await get('/channels/private-cache-ch4', { info: 'cache' })).json().cache.data, 'latest-2');
  assertError(await get('/channels/plain-ch4', { info: 'cache' }), 400);
});

test('HTTP-CHANNEL-5 unknown info attributes are ignored', T, async () => {
  const a = await ctx.pool.raw();
  await a.subscribeOk('ch5');
  assert.deepEqual((await get('/channels/ch5', { info: 'foo,bar' })).json(), { occupied: true });
  assert.deepEqual((await get('/channels/ch5', { info: 'foo,subscription_count' })).json(), { occupied: true, subscription_count: 1 });
  assert.deepEqual((await get('/channels/ch5-none', { info: 'whatever' })).json(), { occupied: false });
  assert.deepEqual((await get('/channels', { info: 'nonsense', filter_by_prefix: 'ch5' })).json(), { channels: { ch5: {} } });
});

test('HTTP-USERS-1 GET /channels/{c}/users -> {"users":[{"id":"…"}]} with string ids; [] when empty', T, async () => {
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  const c = await ctx.pool.raw();
  await a.subscribeOk('presence-users1', { app, channelData: cd('1') });
  await b.subscribeOk('presence-users1', { app, channelData: cd('1') });
  await c.subscribeOk('presence-users1', { app, channelData: '{"user_id":2,"user_info":{"n":"two"}}' });
  const r = await get('/channels/presence-users1/users');
  assert.equal(r.status, 200, r.text);
  const users = r.json().users;
  assert.deepEqual(Object.keys(r.json()), ['users']);
  assert.deepEqual([...users].sort((x, y) => (x.id < y.id ? -1 : 1)), [{ id: '1' }, { id: '2' }]);
  assert.deepEqual((await get('/channels/presence-users-empty/users')).json(), { users: [] });
  c.close();
  await h.waitFor(async () => (await get('/channels/presence-users1/users')).json().users.length === 1, 3000, 'user 2 to leave');
  assert.deepEqual((await get('/channels/presence-users1/users')).json(), { users: [{ id: '1' }] });
});

test('HTTP-USERS-2 non-presence channel -> 400 "Users can only be retrieved for presence channels"', T, async () => {
  for (const ch of ['users-public', 'private-users', 'cache-users', 'private-encrypted-users']) {
    assertError(await get(`/channels/${ch}/users`), 400, 'Users can only be retrieved for presence channels\n');
  }
});
