'use strict';
// HTTP-EVENTS-*, HTTP-BATCH-*: publishing through the HTTP API.

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

const ctx = h.harness({
  nocount: { apps: [{ id: 'app-id', key: 'app-key', secret: 'app-secret', enable_subscription_count: false }] },
});
const T = { timeout: 20000 };
const app = h.DEFAULT_APP;

/** POST /events with a raw JSON body through the SDK (bypasses its client-side checks). */
function postEvents(body) {
  return h.sdkCall(h.sdk(ctx.server).post({ path: '/events', body }));
}
function postBatch(batch) {
  return h.sdkCall(h.sdk(ctx.server).post({ path: '/batch_events', body: { batch } }));
}
function assertError(res, status, body) {
  assert.equal(res.status, status, `status (body ${JSON.stringify(res.text)})`);
  assert.ok(res.text.endsWith('\n'), `plain-text error ending in a newline: ${JSON.stringify(res.text)}`);
  if (body instanceof RegExp) assert.match(res.text, body);
  else if (body !== undefined) assert.equal(res.text, body);
}
/** A subscribed raw client on `channels` plus a private marker channel. */
async function listener(...channels) {
  const c = await ctx.pool.raw();
  for (const ch of channels) await c.subscribeOk(ch, { app, channelData: ch.startsWith('presence-') ? JSON.stringify({ user_id: h.uid('u') }) : undefined });
  c.marker = h.uid('marker');
  await c.subscribeOk(c.marker);
  await c.sync();
  return c;
}
async function sendMarker(c) {
  await h.sdk(ctx.server).trigger(c.marker, 'marker', 'm');
}

test('HTTP-EVENTS-1 POST /apps/{id}/events {name, data, channels} -> 200 {} and delivery', T, async () => {
  const a = h.uid('e1a');
  const b = h.uid('e1b');
  const c = await listener(a, b);
  const res = await h.sdkCall(h.sdk(ctx.server).trigger([a, b], 'my-event', { message: 'hello' }));
  assert.equal(res.status, 200);
  assert.deepEqual(res.json(), {});
  const got = [await c.nextMeaningful(), await c.nextMeaningful()].sort((x, y) => (x.channel < y.channel ? -1 : 1));
  assert.deepEqual(got, [
    { event: 'my-event', channel: a, data: '{"message":"hello"}' },
    { event: 'my-event', channel: b, data: '{"message":"hello"}' },
  ]);
});

test('HTTP-EVENTS-2 singular "channel" accepted (pusher-http-php)', T, async () => {
  const ch = h.uid('e2');
  const c = await listener(ch);
  const res = await postEvents({ name: 'single', data: '"hello"', channel: ch });
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json(), {});
  assert.deepEqual(await c.nextMeaningful(), { event: 'single', channel: ch, data: '"hello"' });
});

test('HTTP-EVENTS-3 info=user_count,subscription_count -> {"channels":{ch:{applicable attrs}}}', T, async () => {
  const pres = h.uid('presence-e3');
  const pub = h.uid('e3pub');
  const empty = h.uid('private-e3');
  for (const [uidv, n] of [['one', 2], ['two', 1]]) {
    for (let i = 0; i < n; i++) {
      const c = await ctx.pool.raw();
      await c.subscribeOk(pres, { app, channelData: JSON.stringify({ user_id: uidv }) });
    }
  }
  const p = await ctx.pool.raw();
  await p.subscribeOk(pub);
  const res = await h.sdkCall(h.sdk(ctx.server).trigger([pres, pub, empty], 'ev', 'x', { info: 'user_count,subscription_count' }));
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json(), {
    channels: {
      [pres]: { user_count: 2, subscription_count: 3 },
      [pub]: { subscription_count: 1 },
      [empty]: { subscription_count: 0 },
    },
  });
  const only = await h.sdkCall(h.sdk(ctx.server).trigger([pub], 'ev', 'x', { info: 'user_count' }));
  assert.deepEqual(only.json(), { channels: { [pub]: {} } }, 'user_count not applicable to a public channel: omitted, no error');
  const unknown = await h.sdkCall(h.sdk(ctx.server).trigger([pres], 'ev', 'x', { info: 'user_count,bogus' }));
  assert.deepEqual(unknown.json(), { channels: { [pres]: { user_count: 2 } } });
  // subscription_count requested while the feature is disabled for the app -> 400
  const off = await h.sdkCall(h.sdk(ctx.servers.nocount).trigger([pub], 'ev', 'x', { info: 'subscription_count' }));
  assertError(off, 400);
  const offUc = await h.sdkCall(h.sdk(ctx.servers.nocount).trigger([pres], 'ev', 'x', { info: 'user_count' }));
  assert.deepEqual(offUc.json(), { channels: { [pres]: { user_count: 0 } } });
});

test('HTTP-EVENTS-4 more than 100 channels -> 400; 100 accepted', T, async () => {
  const hundred = Array.from({ length: 100 }, (_, i) => `e4-${i}`);
  const c = await listener('e4-99');
  const ok = await postEvents({ name: 'many', data: 'x', channels: hundred });
  assert.equal(ok.status, 200, ok.text);
  assert.deepEqual(await c.nextMeaningful(), { event: 'many', channel: 'e4-99', data: 'x' });
  const tooMany = await postEvents({ name: 'many', data: 'x', channels: [...hundred, 'e4-100'] });
  assertError(tooMany, 400);
  await sendMarker(c);
  await h.expectOnlyMarker(c, 'marker');
});

test('HTTP-EVENTS-5 event name up to 200 chars of any characters; pusher:-prefixed names rejected', T, async () => {
  const ch = h.uid('e5');
  const c = await listener(ch);
  for (const name of ['App\\Events\\OrderShipped', 'with space & ünïcödé 😀', 'n'.repeat(200), 'client-from-server', 'a:b/c']) {
    const res = await postEvents({ name, data: 'x', channels: [ch] });
    assert.equal(res.status, 200, `${name}: ${res.text}`);
    assert.deepEqual(await c.nextMeaningful(), { event: name, channel: ch, data: 'x' });
  }
  assertError(await postEvents({ name: 'n'.repeat(201), data: 'x', channels: [ch] }), 400, 'Event name too long (max 200)\n');
  assertError(await postEvents({ name: 'pusher:fake', data: 'x', channels: [ch] }), 400);
  assertError(await postEvents({ name: 'pusher_internal:subscription_succeeded', data: '{}', channels: [ch] }), 400);
  assertError(await postEvents({ name: '', data: 'x', channels: [ch] }), 400);
  await sendMarker(c);
  await h.expectOnlyMarker(c, 'marker');
});

test('HTTP-EVENTS-6 data over 10 240 bytes -> 413', T, async () => {
  const ch = h.uid('e6');
  const c = await listener(ch);
  const ok = await postEvents({ name: 'big', data: 'd'.repeat(10240), channels: [ch] });
  assert.equal(ok.status, 200, ok.text);
  assert.equal((await c.nextMeaningful()).data.length, 10240);
  assertError(await postEvents({ name: 'big', data: 'd'.repeat(10241), channels: [ch] }), 413, 'Event data too large (max 10240 bytes)\n');
  // bytes, not characters: 5 121 two-byte characters = 10 242 bytes
  assertError(await postEvents({ name: 'big', data: 'é'.repeat(5121), channels: [ch] }), 413);
  const okUtf8 = await postEvents({ name: 'big', data: 'é'.repeat(5120), channels: [ch] });
  assert.equal(okUtf8.status, 200, okUtf8.text);
  assert.equal((await c.nextMeaningful()).data, 'é'.repeat(5120));
  await sendMarker(c);
  await h.expectOnlyMarker(c, 'marker');
  // the whole request body is capped too (default 1 MiB): 413 "Request body too large\n" (http §3.4)
  const huge = JSON.stringify({ name: 'big', data: 'x', channels: [ch], pad: 'p'.repeat(1100000) });
  const tooBig = await h.signedFetch(ctx.server.httpBase, { app, method: 'POST', path: '/apps/app-id/events', body: huge });
  assertError(tooBig, 413, 'Request body too large\n');
});

test('HTTP-EVENTS-7 socket_id excludes that connection; malformed socket_id -> 400', T, async () => {
  const ch = h.uid('e7');
  const a = await listener(ch);
  const b = await listener(ch);
  const res = await h.sdkCall(h.sdk(ctx.server).trigger(ch, 'ex', 'x', { socket_id: a.socketId }));
  assert.equal(res.status, 200);
  assert.deepEqual(await b.nextMeaningful(), { event: 'ex', channel: ch, data: 'x' });
  await sendMarker(a);
  await h.expectOnlyMarker(a, 'marker');
  for (const bad of ['abc', '1.2.3', '12', '.1', '1.', ' 1.2', '1.2x']) {
    assertError(await postEvents({ name: 'ex', data: 'x', channels: [ch], socket_id: bad }), 400, `Invalid socket_id: ${bad}\n`);
  }
  await sendMarker(b);
  await h.expectOnlyMarker(b, 'marker');
});

test('HTTP-EVENTS-8 #server-to-user-<id> accepted as a target; other # names -> 400', T, async () => {
  const c = await ctx.pool.raw();
  await c.signin(app, { id: 'e8user' });
  await c.subscribeOk('#server-to-user-e8user');
  const res = await h.sdkCall(h.sdk(ctx.server).sendToUser('e8user', 'to-user', { a: 1 }));
  assert.equal(res.status, 200);
  assert.deepEqual(res.json(), {});
  assert.deepEqual(await c.nextMeaningful(), { event: 'to-user', channel: '#server-to-user-e8user', data: '{"a":1}' });
  assertError(await postEvents({ name: 'x', data: 'x', channels: ['#not-a-user-channel'] }), 400, 'Invalid channel name: #not-a-user-channel\n');
  assertError(await postEvents({ name: 'x', data: 'x', channels: ['#server-to-user-'] }), 400);
  assertError(await postEvents({ name: 'x', data: 'x', channels: ['bad name'] }), 400, 'Invalid channel name: bad name\n');
});

test('HTTP-EVENTS-9 non-string name/data and missing members -> 400 with the documented texts', T, async () => {
  const ch = h.uid('e9');
  const c = await listener(ch);
  assertError(await postEvents({ name: 5, data: 'x', channels: [ch] }), 400, 'Expected name parameter to be a string\n');
  assertError(await postEvents({ name: 'n', data: { a: 1 }, channels: [ch] }), 400, 'Expected data parameter to be a string\n');
  assertError(await postEvents({ name: 'n', data: 5, channels: [ch] }), 400, 'Expected data parameter to be a string\n');
  assertError(await postEvents({ data: 'x', channels: [ch] }), 400, 'Missing required parameter: name\n');
  assertError(await postEvents({ name: 'n', channels: [ch] }), 400, 'Missing required parameter: data\n');
  assertError(await postEvents({ name: 'n', data: 'x' }), 400, 'Missing required parameter: channels\n');
  assertError(await postEvents({ name: 'n', data: 'x', channels: [] }), 400);
  assertError(await postEvents({ name: 'n', data: 'x', channels: ch }), 400);
  assertError(await postEvents({ name: 'n', data: 'x', channels: [5] }), 400);
  const notJson = await h.signedFetch(ctx.server.httpBase, { app, method: 'POST', path: '/apps/app-id/events', body: '{"name": "n", ' });
  assertError(notJson, 400);
  const arr = await h.signedFetch(ctx.server.httpBase, { app, method: 'POST', path: '/apps/app-id/events', body: '[1,2]' });
  assertError(arr, 400);
  await sendMarker(c);
  await h.expectOnlyMarker(c, 'marker');
});

test('HTTP-EVENTS-10 validation is all-or-nothing; duplicate channels published once', T, async () => {
  const ch = h.uid('e10');
  const c = await listener(ch);
  assertError(await postEvents({ name: 'n', data: 'x', channels: [ch, 'invalid name!'] }), 400);
  assertError(await postEvents({ name: 'n', data: 'x', channels: [ch, 'private-encrypted-e10'] }), 400);
  await sendMarker(c);
  await h.expectOnlyMarker(c, 'marker');
  const dup = await h.sdkCall(h.sdk(ctx.server).trigger([ch, ch, ch], 'dup', 'x', { info: 'subscription_count' }));
  assert.equal(dup.status, 200);
  assert.deepEqual(dup.json(), { channels: { [ch]: { subscription_count: 1 } } });
  assert.deepEqual(await c.nextMeaningful(), { event: 'dup', channel: ch, data: 'x' });
  await sendMarker(c);
  await h.expectOnlyMarker(c, 'marker');
});

test('HTTP-EVENTS-11 multi-channel publish including an encrypted channel -> 400; single encrypted channel OK', T, async () => {
  const enc = h.uid('private-encrypted-e11');
  const c = await listener(enc, 'e11-plain');
  assertError(await postEvents({ name: 'n', data: '{"nonce":"a","ciphertext":"b"}', channels: [enc, 'e11-plain'] }), 400);
  assertError(await postEvents({ name: 'n', data: '{"nonce":"a","ciphertext":"b"}', channels: [enc, h.uid('private-encrypted-e11b')] }), 400);
  await sendMarker(c);
  await h.expectOnlyMarker(c, 'marker');
  const one = await postEvents({ name: 'n', data: '{"nonce":"a","ciphertext":"b"}', channels: [enc] });
  assert.equal(one.status, 200, one.text);
  assert.deepEqual(await c.nextMeaningful(), { event: 'n', channel: enc, data: '{"nonce":"a","ciphertext":"b"}' });
  const single = await postEvents({ name: 'n2', data: '{"nonce":"c","ciphertext":"d"}', channel: enc });
  assert.equal(single.status, 200, single.text);
  assert.equal((await c.nextMeaningful()).event, 'n2');
});

test('HTTP-BATCH-1 POST /apps/{id}/batch_events {"batch":[…]} -> 200 {} and delivery', T, async () => {
  const a = h.uid('b1a');
  const b = h.uid('private-b1b');
  const c = await listener(a, b);
  const res = await h.sdkCall(h.sdk(ctx.server).triggerBatch([
    { channel: a, name: 'ev1', data: { a: 1 } },
    { channel: b, name: 'ev2', data: 'hello' },
  ]));
  assert.equal(res.status, 200);
  assert.deepEqual(res.json(), {});
  assert.deepEqual(await c.nextMeaningful(), { event: 'ev1', channel: a, data: '{"a":1}' });
  assert.deepEqual(await c.nextMeaningful(), { event: 'ev2', channel: b, data: 'hello' });
});

test('HTTP-BATCH-2 more than 10 items -> 400 "Batch too large (<n> > 10)"; nothing published', T, async () => {
  const ch = h.uid('b2');
  const c = await listener(ch);
  const item = (i) => ({ channel: ch, name: 'b', data: String(i) });
  assertError(await postBatch(Array.from({ length: 11 }, (_, i) => item(i))), 400, 'Batch too large (11 > 10)\n');
  assertError(await postBatch(Array.from({ length: 25 }, (_, i) => item(i))), 400, 'Batch too large (25 > 10)\n');
  await sendMarker(c);
  await h.expectOnlyMarker(c, 'marker');
  const ok = await postBatch(Array.from({ length: 10 }, (_, i) => item(i)));
  assert.equal(ok.status, 200);
  for (let i = 0; i < 10; i++) assert.equal((await c.nextMeaningful()).data, String(i));
  assertError(await postBatch([]), 400, 'Missing required parameter: batch\n');
  assertError(await h.sdkCall(h.sdk(ctx.server).post({ path: '/batch_events', body: {} })), 400, 'Missing required parameter: batch\n');
});

test('HTTP-BATCH-3 an item without singular "channel" -> 400 "Missing required parameter: channel"', T, async () => {
  const ch = h.uid('b3');
  const c = await listener(ch);
  assertError(await postBatch([{ channels: [ch], name: 'n', data: 'x' }]), 400, 'Missing required parameter: channel\n');
  assertError(await postBatch([{ channel: ch, name: 'ok', data: 'x' }, { name: 'n', data: 'x' }]), 400, 'Missing required parameter: channel\n');
  await sendMarker(c);
  await h.expectOnlyMarker(c, 'marker');
});

test('HTTP-BATCH-4 any item with info -> {"batch":[…]} aligned by index, {} for items without info', T, async () => {
  const pres = h.uid('presence-b4');
  const pub = h.uid('b4');
  const x = await ctx.pool.raw();
  await x.subscribeOk(pres, { app, channelData: JSON.stringify({ user_id: 'b4u' }) });
  const y = await ctx.pool.raw();
  await y.subscribeOk(pres, { app, channelData: JSON.stringify({ user_id: 'b4u' }) });
  await y.subscribeOk(pub);
  const res = await h.sdkCall(h.sdk(ctx.server).triggerBatch([
    { channel: pub, name: 'a', data: 'x' },
    { channel: pres, name: 'b', data: 'y', info: 'user_count,subscription_count' },
    { channel: pub, name: 'c', data: 'z', info: 'user_count' },
    { channel: pub, name: 'd', data: 'w', info: 'subscription_count' },
  ]));
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json(), { batch: [{}, { user_count: 1, subscription_count: 2 }, {}, { subscription_count: 1 }] });
});

test('HTTP-BATCH-5 whole batch validated before publishing; published in order; 413 for oversized item data', T, async () => {
  const ch = h.uid('b5');
  const c = await listener(ch);
  assertError(await postBatch([{ channel: ch, name: 'first', data: 'x' }, { channel: 'bad channel', name: 'n', data: 'x' }]), 400);
  assertError(await postBatch([{ channel: ch, name: 'first', data: 'x' }, { channel: ch, name: 'big', data: 'd'.repeat(10241) }]), 413);
  assertError(await postBatch([{ channel: ch, name: 'first', data: 'x' }, { channel: ch, name: 5, data: 'x' }]), 400);
  await sendMarker(c);
  await h.expectOnlyMarker(c, 'marker');
  const other = h.uid('b5o');
  const d = await listener(other);
  await c.subscribeOk(other);
  const items = Array.from({ length: 10 }, (_, i) => ({ channel: i % 2 ? ch : other, name: `ord${i}`, data: String(i) }));
  assert.equal((await postBatch(items)).status, 200);
  const got = [];
  for (let i = 0; i < 10; i++) got.push((await c.nextMeaningful()).event);
  assert.deepEqual(got, items.map((x) => x.name));
  const gotD = [];
  for (let i = 0; i < 5; i++) gotD.push((await d.nextMeaningful()).event);
  assert.deepEqual(gotD, ['ord0', 'ord2', 'ord4', 'ord6', 'ord8']);
  // encrypted channels are allowed in batches, one per item
  const enc = h.uid('private-encrypted-b5');
  const e = await listener(enc);
  const encRes = await postBatch([{ channel: enc, name: 'sealed', data: '{"nonce":"n","ciphertext":"c"}' }, { channel: ch, name: 'plain', data: 'p' }]);
  assert.equal(encRes.status, 200, encRes.text);
  assert.deepEqual(await e.nextMeaningful(), { event: 'sealed', channel: enc, data: '{"nonce":"n","ciphertext":"c"}' });
});
