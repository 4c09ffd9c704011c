'use strict';
// WS-DELIVER-*: delivery of events published through the HTTP API.

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

const ctx = h.harness();
const T = { timeout: 20000 };
const app = h.DEFAULT_APP;

test('WS-DELIVER-1 frame {"event","channel","data":<publisher string verbatim>}', T, async () => {
  const api = h.sdk(ctx.server);
  const ch = h.uid('d1');
  const c = await ctx.pool.raw();
  await c.subscribeOk(ch);
  const payloads = ['{"b":1,  "a":[1,2,{"z":null}]}', 'plain text, not JSON', '"a json string"', '', '12345678901234567890', '{"u":"\\u00e9 é 😀"}'];
  for (const data of payloads) {
    const res = await h.sdkCall(api.trigger(ch, 'ev-d1', data));
    assert.equal(res.status, 200);
    const f = await c.nextMeaningful(3000, `delivery of ${JSON.stringify(data)}`);
    assert.deepEqual(f, { event: 'ev-d1', channel: ch, data });
  }
  // an object given to the SDK is JSON-encoded by it and arrives as that string
  await api.trigger(ch, 'obj', { hello: 'world', n: [1, 2] });
  assert.deepEqual(await c.nextMeaningful(), { event: 'obj', channel: ch, data: '{"hello":"world","n":[1,2]}' });
  // pusher-js gets the decoded value
  const p = await ctx.pool.pusher();
  const pch = await h.subscribeOk(p, ch);
  const got = h.nextEvent(pch, 'js-ev');
  await api.trigger(ch, 'js-ev', { x: 1 });
  assert.deepEqual((await got).data, { x: 1 });
});

test('WS-DELIVER-2 the connection whose socket_id is given is excluded', T, async () => {
  const api = h.sdk(ctx.server);
  const ch = h.uid('private-d2');
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  await a.subscribeOk(ch, { app });
  await b.subscribeOk(ch, { app });
  await api.trigger(ch, 'not-for-a', 'x', { socket_id: a.socketId });
  assert.deepEqual(await b.nextMeaningful(), { event: 'not-for-a', channel: ch, data: 'x' });
  await api.trigger(ch, 'marker', 'm');
  await h.expectOnlyMarker(a, 'marker');
  await h.expectOnlyMarker(b, 'marker');
  // an unknown (well-formed) socket id excludes nobody
  await api.trigger(ch, 'for-all', 'y', { socket_id: '1.1' });
  assert.equal((await a.nextMeaningful()).event, 'for-all');
  assert.equal((await b.nextMeaningful()).event, 'for-all');
  // pusher-js: exclusion of its own socket id
  const p = await ctx.pool.pusher();
  const pch = await h.subscribeOk(p, ch);
  const seen = [];
  pch.bind('excluded', () => seen.push('excluded'));
  const marker = h.nextEvent(pch, 'marker2');
  await api.trigger(ch, 'excluded', 'z', { socket_id: p.connection.socket_id });
  await api.trigger(ch, 'marker2', 'm');
  await marker;
  assert.deepEqual(seen, []);
});

test('WS-DELIVER-3 one frame per target channel; per-connection order preserved', T, async () => {
  const api = h.sdk(ctx.server);
  const x = h.uid('d3x');
  const y = h.uid('d3y');
  const c = await ctx.pool.raw();
  await c.subscribeOk(x);
  await c.subscribeOk(y);
  await api.trigger([x, y, h.uid('d3-unoccupied')], 'both', 'v');
  const f1 = await c.nextMeaningful();
  const f2 = await c.nextMeaningful();
  assert.deepEqual([f1, f2].sort((a, b) => (a.channel < b.channel ? -1 : 1)), [
    { event: 'both', channel: x, data: 'v' },
    { event: 'both', channel: y, data: 'v' },
  ]);
  await api.trigger(x, 'marker', 'm');
  await h.expectOnlyMarker(c, 'marker');
  // order: sequential publishes arrive in order (also across the two channels)
  for (let i = 0; i < 20; i++) await api.trigger(i % 2 ? x : y, 'seq', String(i));
  const got = [];
  for (let i = 0; i < 20; i++) got.push((await c.nextMeaningful()).data);
  assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => String(i)));
  // a batch too
  await api.triggerBatch(Array.from({ length: 10 }, (_, i) => ({ channel: x, name: 'b', data: `b${i}` })));
  const bgot = [];
  for (let i = 0; i < 10; i++) bgot.push((await c.nextMeaningful()).data);
  assert.deepEqual(bgot, Array.from({ length: 10 }, (_, i) => `b${i}`));
});

test('WS-DELIVER-4 no internal members (socket_id, info, name, …) leak into delivered frames', T, async () => {
  const api = h.sdk(ctx.server);
  const ch = h.uid('presence-d4');
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  await a.subscribeOk(ch, { app, channelData: JSON.stringify({ user_id: 'a' }) });
  await b.subscribeOk(ch, { app, channelData: JSON.stringify({ user_id: 'b' }) });
  await api.trigger(ch, 'ev', 'd', { socket_id: a.socketId, info: 'user_count,subscription_count' });
  const f = await b.next((m) => m.event === 'ev');
  assert.deepEqual(Object.keys(f).sort(), ['channel', 'data', 'event']);
  assert.equal(b.frames.find((x) => x.json && x.json.event === 'ev').text.includes(a.socketId), false, 'socket id leaked');
  await api.triggerBatch([{ channel: ch, name: 'bev', data: 'e', socket_id: a.socketId, info: 'user_count' }]);
  const g = await b.next((m) => m.event === 'bev');
  assert.deepEqual(g, { event: 'bev', channel: ch, data: 'e' });
});
