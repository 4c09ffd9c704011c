'use strict';
// E2E-*: end-to-end encrypted channels (private-encrypted-…).

const { test } = require('node:test');
const h = require('../lib');
const { assert } = h;

// encryption.md §2/§4 vectors
const MASTER_KEY = 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=';
const SEALED = '{"nonce":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH","ciphertext":"ZrsmvtN628hFj6VtlG8bby1MsZW/4ftOyCr5kbst+BJJcFk="}';

const ctx = h.harness({
  verbose: { env: { HERALD_LOG: 'trace' }, apps: [{ ...h.DEFAULT_APP }] },
});
const T = { timeout: 20000 };
const app = h.DEFAULT_APP;

function encClient(opts = {}) {
  return ctx.pool.pusher({ encrypted: true, masterKey: MASTER_KEY, ...opts });
}

test('E2E-1 private-encrypted- subscriptions verified exactly like private ones', T, async () => {
  const c = await ctx.pool.raw();
  const ch = h.uid('private-encrypted-e1');
  const ok = await c.subscribeOk(ch, { app });
  assert.deepEqual(ok, { event: 'pusher_internal:subscription_succeeded', channel: ch, data: '{}' });
  const ch2 = h.uid('private-encrypted-e1b');
  c.subscribe(ch2, { auth: `${app.key}:${'0'.repeat(64)}` });
  await h.expectError(c, { code: null, message: `Invalid signature: Expected HMAC SHA256 hex digest of ${c.socketId}:${ch2}, but got ${'0'.repeat(64)}` });
  c.subscribe(ch2);
  await h.expectError(c, { code: null, message: `Auth info required to subscribe to ${ch2}` });
  // the unmodified encryption build of pusher-js, authorized by the SDK (auth + shared_secret)
  const p = await encClient();
  const pch = await h.subscribeOk(p, h.uid('private-encrypted-e1js'));
  assert.equal(pch.subscribed, true);
});

test('E2E-2 shared_secret is never needed, never part of verification, never logged or echoed', T, async () => {
  const s = ctx.servers.verbose;
  const marker = `SHAREDSECRETMARKER${Date.now()}`;
  const c = await ctx.pool.raw({ server: s });
  const ch = h.uid('private-encrypted-e2');
  c.send({ event: 'pusher:subscribe', data: { auth: h.channelAuth(app, c.socketId, ch), channel: ch, shared_secret: marker } });
  assert.deepEqual(await c.nextMeaningful(), { event: 'pusher_internal:subscription_succeeded', channel: ch, data: '{}' });
  // a signature that covered the shared secret is wrong
  const ch2 = h.uid('private-encrypted-e2b');
  c.send({ event: 'pusher:subscribe', data: { auth: h.channelAuth(app, c.socketId, `${ch2}:${marker}`), channel: ch2, shared_secret: marker } });
  const err = await h.expectError(c, { code: null, prefix: 'Invalid signature' });
  assert.ok(!JSON.stringify(err).includes(marker), 'error does not echo the shared secret');
  assert.ok(!c.frames.some((f) => f.text.includes(marker)), 'no frame echoes the shared secret');
  // pusher-js end to end: works with the secret kept client-side
  const p = await encClient({ server: s });
  await h.subscribeOk(p, h.uid('private-encrypted-e2js'));
  const { pong } = await c.sync();
  assert.equal(pong.event, 'pusher:pong');
  assert.ok(!s.output().includes(marker), 'the shared secret appears in the server output');
  const sharedSecret = Buffer.from(h.sdk(s, app, { encryptionMasterKeyBase64: MASTER_KEY }).channelSharedSecret(ch)).toString('base64');
  assert.ok(!s.output().includes(sharedSecret));
});

test('E2E-3 encrypted payloads relayed byte-for-byte, never validated or decrypted', T, async () => {
  const ch = 'private-encrypted-foo'; // the channel of the documented vector
  const c = await ctx.pool.raw();
  await c.subscribeOk(ch, { app });
  const p = await encClient();
  const pch = await h.subscribeOk(p, ch);
  const decrypted = h.nextEvent(pch, 'my-event');
  const api = h.sdk(ctx.server);
  const res = await h.sdkCall(api.post({ path: '/events', body: { name: 'my-event', data: SEALED, channels: [ch] } }));
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(await c.nextMeaningful(), { event: 'my-event', channel: ch, data: SEALED });
  assert.deepEqual((await decrypted).data, { message: 'hello' }, 'pusher-js decrypts the documented vector');
  // SDK-encrypted publish decrypts in pusher-js
  const sdkEnc = h.sdk(ctx.server, app, { encryptionMasterKeyBase64: MASTER_KEY });
  const got = h.nextEvent(pch, 'secret-ev');
  assert.equal((await h.sdkCall(sdkEnc.trigger(ch, 'secret-ev', { deep: { n: 42 } }))).status, 200);
  assert.deepEqual((await got).data, { deep: { n: 42 } });
  const raw = await c.next((m) => m.event === 'secret-ev');
  const env = JSON.parse(raw.data);
  assert.deepEqual(Object.keys(env).sort(), ['ciphertext', 'nonce']);
  // malformed "ciphertext" is not the server's business
  for (const data of ['not encrypted at all', '{"nonce":"x"}', '']) {
    const r = await h.sdkCall(api.post({ path: '/events', body: { name: 'junk', data, channels: [ch] } }));
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(await c.next((m) => m.event === 'junk'), { event: 'junk', channel: ch, data });
  }
});

test('E2E-4 multi-channel publish with an encrypted channel -> 400; one-element channels or channel accepted', T, async () => {
  const ch = h.uid('private-encrypted-e4');
  const c = await ctx.pool.raw();
  await c.subscribeOk(ch, { app });
  const api = h.sdk(ctx.server);
  const multi = await h.sdkCall(api.post({ path: '/events', body: { name: 'x', data: SEALED, channels: [ch, 'public-e4'] } }));
  assert.equal(multi.status, 400, multi.text);
  assert.ok(multi.text.endsWith('\n'));
  const one = await h.sdkCall(api.post({ path: '/events', body: { name: 'one', data: SEALED, channels: [ch] } }));
  assert.equal(one.status, 200);
  const single = await h.sdkCall(api.post({ path: '/events', body: { name: 'single', data: SEALED, channel: ch } }));
  assert.equal(single.status, 200);
  const batch = await h.sdkCall(api.post({ path: '/batch_events', body: { batch: [{ channel: ch, name: 'batched', data: SEALED }] } }));
  assert.equal(batch.status, 200);
  const names = [];
  for (let i = 0; i < 3; i++) names.push((await c.nextMeaningful()).event);
  assert.deepEqual(names, ['one', 'single', 'batched']);
  await h.expectNothingMore(c, 'the refused multi-channel publish delivered nothing');
});

test('E2E-5 client events on encrypted channels are refused and relayed to nobody; pusher-js refuses to send them', T, async () => {
  // pusher-js throws UnsupportedFeature on trigger() for an encrypted channel; the server refuses
  // them too, so no member can put clear text on a channel whose readers expect ciphertext.
  const ch = h.uid('private-encrypted-e5');
  const a = await ctx.pool.raw();
  const b = await ctx.pool.raw();
  await a.subscribeOk(ch, { app });
  await b.subscribeOk(ch, { app });
  const refused = { code: null, message: 'Client event rejected - client events are not supported on encrypted channels' };
  a.send({ event: 'client-plain', channel: ch, data: { text: 'in clear' } });
  await h.expectError(a, refused);
  a.send({ event: 'client-sealed', channel: ch, data: SEALED });
  await h.expectError(a, refused);
  await h.expectNothingMore(b, 'nothing relayed on the encrypted channel');
  const p = await encClient();
  const pch = await h.subscribeOk(p, h.uid('private-encrypted-e5js'));
  assert.throws(() => pch.trigger('client-x', { a: 1 }), /not currently supported for encrypted channels/);
});

test('E2E-6 pusher: / pusher_internal: events on encrypted channels are sent unencrypted', T, async () => {
  const cch = h.uid('private-encrypted-cache-e6');
  const a = await ctx.pool.raw();
  a.subscribe(cch, { auth: h.channelAuth(app, a.socketId, cch) });
  assert.deepEqual(await a.nextJson(), { event: 'pusher_internal:subscription_succeeded', channel: cch, data: '{}' });
  assert.deepEqual(await a.nextEvent('pusher:cache_miss'), { event: 'pusher:cache_miss', channel: cch });
  assert.deepEqual(h.stringData(await a.nextEvent('pusher_internal:subscription_count', cch)), { subscription_count: 1 });
  // pusher-js (encryption build) handles them without trying to decrypt
  const p = await encClient();
  const pch = p.subscribe(cch);
  const miss = h.nextEvent(pch, 'pusher:cache_miss');
  const count = h.nextEvent(pch, 'pusher:subscription_count');
  await h.withTimeout(new Promise((r) => pch.bind('pusher:subscription_succeeded', r)), 3000, 'encrypted subscription');
  await miss;
  assert.deepEqual((await count).data, { subscription_count: 2 });
  assert.equal(pch.subscriptionCount, 2);
});
