'use strict';
// DEP-EVENTS-*, DEP-STATS-1: deprecated endpoints.

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

const ctx = h.harness();
const T = { timeout: 20000 };
const app = h.DEFAULT_APP;

function depPost(channel, { name, socketId, body, ...rest } = {}) {
  const params = {};
  if (name !== undefined) params.name = name;
  if (socketId !== undefined) params.socket_id = socketId;
  return h.signedFetch(ctx.server.httpBase, { app, method: 'POST', path: `/apps/app-id/channels/${channel}/events`, params, body, ...rest });
}

test('DEP-EVENTS-1 POST /apps/{id}/channels/{c}/events?name=… with raw body as data -> 202 {} and delivery', T, async () => {
  const ch = h.uid('dep1');
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  await a.subscribeOk(ch);
  await b.subscribeOk(ch);
  const r = await depPost(ch, { name: 'foo', body: '{"hello":"world"}' });
  assert.equal(r.status, 202, r.text);
  assert.deepEqual(r.json(), {});
  for (const c of [a, b]) assert.deepEqual(await c.nextMeaningful(), { event: 'foo', channel: ch, data: '{"hello":"world"}' });
  // socket_id exclusion
  const r2 = await depPost(ch, { name: 'bar', socketId: a.socketId, body: '{"x":1}' });
  assert.equal(r2.status, 202, r2.text);
  assert.deepEqual(await b.nextMeaningful(), { event: 'bar', channel: ch, data: '{"x":1}' });
  await h.sdk(ctx.server).trigger(ch, 'marker', 'm');
  await h.expectOnlyMarker(a, 'marker');
  await h.expectOnlyMarker(b, 'marker');
  // the node SDK can call it too (its post() sends a JSON body)
  const sdkRes = await h.sdkCall(h.sdk(ctx.server).post({ path: `/channels/${ch}/events`, params: { name: 'via-sdk' }, body: { k: 'v' } }));
  assert.equal(sdkRes.status, 202);
  assert.deepEqual(await b.nextMeaningful(), { event: 'via-sdk', channel: ch, data: '{"k":"v"}' });
  // name is required
  const noName = await depPost(ch, { body: '{}' });
  assert.equal(noName.status, 400, noName.text);
});

test('DEP-EVENTS-2 body not valid UTF-8 -> 400; JSON validity not checked', T, async () => {
  const ch = h.uid('dep2');
  const c = await ctx.pool.raw();
  await c.subscribeOk(ch);
  const bad = await depPost(ch, { name: 'bin', body: Buffer.from([0x7b, 0xff, 0xfe, 0x7d]) });
  assert.equal(bad.status, 400, bad.text);
  assert.ok(bad.text.endsWith('\n'));
  const notJson = await depPost(ch, { name: 'text', body: 'hello, not json {' });
  assert.equal(notJson.status, 202, notJson.text);
  assert.deepEqual(await c.nextMeaningful(), { event: 'text', channel: ch, data: 'hello, not json {' });
  const utf8 = await depPost(ch, { name: 'utf8', body: 'héllo 😀' });
  assert.equal(utf8.status, 202, utf8.text);
  assert.deepEqual(await c.nextMeaningful(), { event: 'utf8', channel: ch, data: 'héllo 😀' });
});

test('DEP-EVENTS-3 name, socket_id and body_md5 are part of the signed query', T, async () => {
  const ch = h.uid('dep3');
  const c = await ctx.pool.raw();
  await c.subscribeOk(ch);
  const without = (key) => (pairs) => pairs.filter(([k]) => k !== key);
  for (const key of ['name', 'socket_id', 'body_md5']) {
    const r = await depPost(ch, { name: 'foo', socketId: '1234.1234', body: '{"a":1}', signPairs: without(key) });
    assert.equal(r.status, 401, `${key} left out of the signature: ${r.text}`);
  }
  const ok = await depPost(ch, { name: 'foo', socketId: '1234.1234', body: '{"a":1}' });
  assert.equal(ok.status, 202, ok.text);
  assert.deepEqual(await c.nextMeaningful(), { event: 'foo', channel: ch, data: '{"a":1}' });
  const noMd5 = await depPost(ch, { name: 'foo', body: '{"a":1}', bodyMd5: null });
  assert.equal(noMd5.status, 401);
});

test('DEP-EVENTS-4 size limit (413) and cache storage as for /events', T, async () => {
  const ch = h.uid('dep4');
  const c = await ctx.pool.raw();
  await c.subscribeOk(ch);
  const big = await depPost(ch, { name: 'big', body: 'x'.repeat(10241) });
  assert.equal(big.status, 413, big.text);
  const fits = await depPost(ch, { name: 'fits', body: 'x'.repeat(10240) });
  assert.equal(fits.status, 202, fits.text);
  assert.equal((await c.nextMeaningful()).event, 'fits');
  const cache = h.uid('cache-dep4');
  const stored = await depPost(cache, { name: 'cached', body: '{"v":4}' });
  assert.equal(stored.status, 202, stored.text);
  const late = await ctx.pool.raw();
  await late.subscribeOk(cache);
  assert.deepEqual(await late.nextMeaningful(), { event: 'cached', channel: cache, data: '{"v":4}' });
});

test('DEP-STATS-1 GET /apps/{id}/channels/{c}/stats -> {"occupied","connection_count"} plus user_count for presence', T, async () => {
  const api = h.sdk(ctx.server);
  const stats = async (ch) => {
    const r = await h.sdkCall(api.get({ path: `/channels/${ch}/stats` }));
    assert.equal(r.status, 200, r.text);
    return r.json();
  };
  const pub = h.uid('stats');
  const pres = h.uid('presence-stats');
  assert.deepEqual(await stats(pub), { occupied: false, connection_count: 0 });
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  const c = await ctx.pool.raw();
  await a.subscribeOk(pub);
  await b.subscribeOk(pub);
  assert.deepEqual(await stats(pub), { occupied: true, connection_count: 2 });
  await a.subscribeOk(pres, { app, channelData: JSON.stringify({ user_id: 'x' }) });
  await b.subscribeOk(pres, { app, channelData: JSON.stringify({ user_id: 'x' }) });
  await c.subscribeOk(pres, { app, channelData: JSON.stringify({ user_id: 'y' }) });
  assert.deepEqual(await stats(pres), { occupied: true, user_count: 2, connection_count: 3 });
  const priv = h.uid('private-stats');
  await c.subscribeOk(priv, { app });
  assert.deepEqual(await stats(priv), { occupied: true, connection_count: 1 });
});
