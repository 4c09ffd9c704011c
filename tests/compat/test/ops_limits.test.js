'use strict';
// OPS-LIMIT-*: every per-app and server limit is enforced with its documented code,
// and the refusals that have a `limit` label are counted in
// herald_limit_rejections_total{app,limit}.

const { test, before, after, afterEach } = require('node:test');
const h = require('../lib');
const ops = require('../lib/ops');
const { assert } = h;

const mk = (name, limits, extra = {}) => ({ id: `lim-${name}`, key: `lim-${name}-key`, secret: `lim-${name}-secret`, limits, ...extra });
const APPS = {
  conn: mk('conn', { max_connections: 2 }),
  rate: mk('rate', { client_event_rate: 2 }),
  api: mk('api', { api_requests_per_second: 3 }),
  pres: mk('pres', { max_presence_members: 2 }),
  chans: mk('chans', { max_channels_per_connection: 2 }),
  subs: mk('subs', { max_channels_per_connection: 4, subscription_rate: 2 }),
  size: mk('size', { max_event_data_bytes: 100, max_channel_name_length: 30, max_event_name_length: 20 }),
  plain: mk('plain', {}),
};
const SERVER_LIMITS = { max_ws_message_bytes: 2048, max_request_body_bytes: 4096 };

const T = { timeout: 30000 };
let server;
let pool;

before(async () => {
  server = await ops.startOps({ config: { server: SERVER_LIMITS, apps: Object.values(APPS) } });
  pool = new h.Pool(server);
});
afterEach(() => pool && pool.closeAll());
after(() => server && server.stop());

const raw = (app, opts = {}) => pool.raw({ server, key: app.key, ...opts });
const api = (app) => h.sdk(server, app);

/** herald_limit_rejections_total for one app and limit, once it equals `n`. */
async function rejections(app, limit, n) {
  const s = await ops.waitMetrics(
    server,
    (x) => x.get('herald_limit_rejections_total', { app: app.id, limit }) === n,
    3000,
    `herald_limit_rejections_total{app="${app.id}",limit="${limit}"} == ${n}`,
  );
  return s;
}

/**
 * A connection attempt that ends in either connection_established (the client) or the quota
 * refusal, pusher:error 4004 then close 4004 (null; counted in `refusals`).
 */
async function tryConnect(app, refusals) {
  const c = pool.rawOpen({ server, key: app.key });
  await c._until(() => c.frames.length > 0 || c.closed, 3000, 'first frame or close');
  const first = c.frames[0];
  if (first && first.json && first.json.event === 'pusher:connection_established') {
    c.socketId = JSON.parse(first.json.data).socket_id;
    return c;
  }
  await h.expectErrorThenClose(c, 4004, 'Application is over connection quota', 3000);
  refusals.n += 1;
  return null;
}

test('OPS-LIMIT-1 max_connections: pusher:error 4004 then close 4004, counted', T, async () => {
  const app = APPS.conn;
  const a = await raw(app);
  await raw(app);
  const third = pool.rawOpen({ server, key: app.key });
  const { closed } = await h.expectErrorThenClose(third, 4004, 'Application is over connection quota');
  assert.equal(closed.code, 4004);
  const s = await rejections(app, 'max_connections', 1);
  assert.equal(s.get('herald_connections', { app: app.id }), 2, s.lines('herald_connections'));
  // a slot frees up when a connection leaves (attempts until the server has seen it go are
  // refused, and counted, like the first)
  a.close();
  const refusals = { n: 0 };
  const again = await h.waitFor(() => tryConnect(app, refusals), 5000, 'a connection once one left');
  assert.ok(again.socketId);
  await rejections(app, 'max_connections', 1 + refusals.n);
});

test('OPS-LIMIT-2 client_event_rate: pusher:error 4301, the connection stays, counted', T, async (t) => {
  const app = APPS.rate;
  const RATE = app.limits.client_event_rate; // a bucket of 2, full on connect, refilled at 2/s
  const ch = h.uid('private-ops-rate-');
  const sender = await raw(app);
  await sender.subscribeOk(ch, { app });
  const listener = await raw(app);
  await listener.subscribeOk(ch, { app });
  const SENT = 8;
  const t0 = performance.now();
  for (let i = 0; i < SENT; i++) sender.send({ event: 'client-ops', channel: ch, data: { i } });
  const { between } = await sender.sync();
  const elapsed = performance.now() - t0; // encloses the server's handling of the burst
  const errors = between.filter((m) => m && m.event === 'pusher:error');
  const other = between.filter((m) => !(m && m.event === 'pusher:error') && !h.NOISE(m));
  assert.deepEqual(other, [], 'only rate-limit errors reach the sender');
  for (const e of errors) h.assertErrorFrame(e, { code: 4301, message: 'Client event rejected due to rate limit' });
  const accepted = SENT - errors.length;
  const most = h.bucketMax(RATE, RATE, elapsed);
  t.diagnostic(`accepted ${accepted} of ${SENT}, burst ${elapsed.toFixed(1)} ms`);
  assert.ok(accepted >= RATE && accepted <= most, `accepted ${accepted} of ${SENT} sent in ${elapsed.toFixed(1)} ms at ${RATE}/s: expected ${RATE}..${most}: ${JSON.stringify(between)}`);
  assert.equal(sender.closed, null, 'the connection stays open');
  // the listener gets exactly the accepted ones, the full bucket's first
  const got = [];
  for (let k = 0; k < accepted; k++) got.push((await listener.nextEvent('client-ops', ch)).data.i);
  assert.deepEqual(got.slice(0, RATE), [...Array(RATE).keys()], `relayed ${JSON.stringify(got)}`);
  await h.expectNothingMore(listener, 'no refused client event relayed');
  await rejections(app, 'client_event_rate', errors.length);
  // the sender can still subscribe and send once tokens are back
  const ok = await h.waitFor(
    async () => {
      sender.send({ event: 'client-ops', channel: ch, data: { late: true } });
      const r = await sender.sync();
      return r.between.some((m) => m && m.event === 'pusher:error') ? false : true;
    },
    3000,
    'a client event accepted after the bucket refilled',
  );
  assert.ok(ok);
});

test('OPS-LIMIT-3 api_requests_per_second: HTTP 429, counted by limit and in http_requests_total', T, async (t) => {
  const app = APPS.api;
  const RATE = app.limits.api_requests_per_second; // a bucket of 3, full at the app's first request
  const sdk = api(app);
  const N = 12;
  const t0 = performance.now();
  const results = await Promise.all(Array.from({ length: N }, (_, i) => h.sdkCall(() => sdk.trigger('ops-api', 'ev', { i }))));
  const elapsed = performance.now() - t0; // encloses the server's handling of every request
  const statuses = results.map((r) => r.status);
  const refused = results.filter((r) => r.status === 429);
  assert.ok(statuses.every((s) => s === 200 || s === 429), JSON.stringify(statuses));
  const accepted = N - refused.length;
  const most = h.bucketMax(RATE, RATE, elapsed);
  t.diagnostic(`accepted ${accepted} of ${N}, burst ${elapsed.toFixed(1)} ms`);
  assert.ok(accepted >= RATE && accepted <= most, `${accepted} of ${N} requests sent in ${elapsed.toFixed(1)} ms at ${RATE}/s got 200: expected ${RATE}..${most}: ${JSON.stringify(statuses)}`);
  assert.match(refused[0].text, /Too many requests/i);
  const s = await rejections(app, 'api_requests_per_second', refused.length);
  assert.equal(s.get('herald_http_requests_total', { app: app.id, route: 'events', status: '429' }), refused.length, s.lines('herald_http_requests_total'));
  assert.equal(s.get('herald_http_requests_total', { app: app.id, route: 'events', status: '200' }), N - refused.length);
  // other apps are not limited by this app's bucket
  const other = await h.sdkCall(() => api(APPS.plain).trigger('ops-api', 'ev', {}));
  assert.equal(other.status, 200);
  // the bucket refills
  await h.waitFor(async () => (await h.sdkCall(() => sdk.trigger('ops-api', 'ev', {}))).status === 200, 3000, 'a 200 after the refill');
});

test('OPS-LIMIT-4 max_presence_members: the member over the limit is refused, counted', T, async () => {
  const app = APPS.pres;
  const ch = h.uid('presence-ops-');
  const members = [];
  for (const id of ['u1', 'u2']) {
    const c = await raw(app);
    await c.subscribeOk(ch, { app, channelData: JSON.stringify({ user_id: id }) });
    members.push(c);
  }
  await members[0].sync(); // consume member_added for u2
  const third = await raw(app);
  const cd = JSON.stringify({ user_id: 'u3' });
  third.send({ event: 'pusher:subscribe', data: { channel: ch, auth: h.channelAuth(app, third.socketId, ch, cd), channel_data: cd } });
  const err = await third.next((m) => m.event === 'pusher:error' || m.event === 'pusher_internal:subscription_succeeded', 3000, 'presence refusal');
  assert.equal(err.event, 'pusher:error', JSON.stringify(err));
  assert.match(err.data.message, /full|max 2/i, JSON.stringify(err));
  await rejections(app, 'max_presence_members', 1);
  const users = await h.sdkCall(() => api(app).get({ path: `/channels/${ch}/users` }));
  assert.deepEqual(users.json().users.map((u) => u.id).sort(), ['u1', 'u2']);
  // members see no member_added for the refused user
  await h.expectNothingMore(members[0], 'no member_added for the refused user');
  // a second connection of an existing member is not a new member
  const again = await raw(app);
  await again.subscribeOk(ch, { app, channelData: JSON.stringify({ user_id: 'u1' }) });
  const s = await ops.scrape(server);
  assert.equal(s.get('herald_limit_rejections_total', { app: app.id, limit: 'max_presence_members' }), 1);
});

test('OPS-LIMIT-5 max_channels_per_connection: the extra subscription is refused, counted', T, async () => {
  const app = APPS.chans;
  const c = await raw(app);
  const names = [h.uid('ops-c1-'), h.uid('ops-c2-'), h.uid('ops-c3-')];
  await c.subscribeOk(names[0]);
  await c.subscribeOk(names[1]);
  c.subscribe(names[2]);
  await h.expectError(c, { message: /at most 2 channels/ });
  await rejections(app, 'max_channels_per_connection', 1);
  const s = await ops.scrape(server);
  assert.equal(s.get('herald_subscriptions', { app: app.id }), 2);
  // unsubscribing frees a slot
  c.unsubscribe(names[0]);
  await c.subscribeOk(names[2]);
});

test('OPS-LIMIT-10 subscription_rate: subscribes and unsubscribes beyond the burst get 4301, the connection stays, counted', T, async () => {
  // Burst = max_channels_per_connection (4), then 2 a second: of 8 frames sent at once, exactly
  // the bucket plus what refilled during the burst is accepted.
  const app = APPS.subs;
  const c = await raw(app);
  const names = Array.from({ length: 4 }, (_, i) => h.uid(`ops-s${i}-`));
  const t0 = Date.now();
  for (const n of names) c.subscribe(n);
  for (const n of names) c.unsubscribe(n);
  await c.sync();
  const elapsed = Date.now() - t0;
  const refused = c.frames.filter((f) => f.json && f.json.event === 'pusher:error');
  const accepted = 8 - refused.length;
  assert.ok(accepted >= 4 && accepted <= h.bucketMax(4, 2, elapsed), `${accepted} of 8 accepted in ${elapsed} ms`);
  for (const f of refused) {
    assert.equal(f.json.data.code, 4301);
    assert.match(f.json.data.message, /rejected due to rate limit: at most 2 subscribes and unsubscribes per second/);
  }
  await rejections(app, 'subscription_rate', refused.length);
  assert.equal(c.closed, null, 'the connection stays');
  // The bucket refills at the rate: one more after half a second (the unsubscribes were
  // refused, so the four channels are still held; free one).
  await new Promise((r) => setTimeout(r, 600));
  const errorsBefore = refused.length;
  c.unsubscribe(names[0]);
  await c.sync();
  assert.equal(c.frames.filter((f) => f.json && f.json.event === 'pusher:error').length, errorsBefore, 'the unsubscribe was taken');
  const s = await ops.scrape(server);
  assert.equal(s.get('herald_subscriptions', { app: app.id }), 3);
});

test('OPS-LIMIT-6 max_event_data_bytes: HTTP 413 and a client-event error', T, async () => {
  const app = APPS.size;
  const sdk = api(app);
  const okR = await h.sdkCall(() => sdk.trigger('ops-size', 'ev', 'x'.repeat(100)));
  assert.equal(okR.status, 200, `exactly 100 bytes is allowed: ${okR.text}`);
  const big = await h.sdkCall(() => sdk.trigger('ops-size', 'ev', 'x'.repeat(101)));
  assert.equal(big.status, 413, big.text);
  assert.match(big.text, /too large/i);
  const s = await ops.waitMetrics(server, (x) => x.get('herald_http_requests_total', { app: app.id, route: 'events', status: '413' }) === 1, 3000, '413 counted');
  assert.ok(s);
  const ch = 'private-ops-size'; // within max_channel_name_length 30
  const c = await raw(app);
  await c.subscribeOk(ch, { app });
  c.send({ event: 'client-big', channel: ch, data: 'y'.repeat(200) });
  await h.expectError(c, { message: /data larger than 100 bytes/ });
});

test('OPS-LIMIT-7 max_channel_name_length and max_event_name_length: refused over the limit, accepted at it', T, async () => {
  const app = APPS.size;
  const sdk = api(app);
  const at = 'c'.repeat(30);
  const over = 'c'.repeat(31);
  assert.equal((await h.sdkCall(() => sdk.trigger(at, 'ev', {}))).status, 200);
  const longCh = await h.sdkCall(() => sdk.trigger(over, 'ev', {}));
  assert.equal(longCh.status, 400, longCh.text);
  assert.match(longCh.text, /channel name/i);
  const c = await raw(app);
  await c.subscribeOk(at);
  c.subscribe(over);
  await h.expectError(c, { prefix: `Invalid channel name '${over}'` });
  assert.equal((await h.sdkCall(() => sdk.trigger('ops-ev', 'e'.repeat(20), {}))).status, 200);
  const longEv = await h.sdkCall(() => sdk.trigger('ops-ev', 'e'.repeat(21), {}));
  assert.equal(longEv.status, 400, longEv.text);
  assert.match(longEv.text, /Event name too long \(max 20\)/);
});

test('OPS-LIMIT-8 server max_ws_message_bytes: an oversized frame closes with 1009', T, async () => {
  const app = APPS.plain;
  const c = await raw(app);
  // under the limit: a normal (if useless) frame is fine
  c.send({ event: 'pusher:ping', data: { pad: 'p'.repeat(1500) } });
  await c.next((m) => m.event === 'pusher:pong', 3000, 'pong for a 1.5 KB frame');
  c.sendRaw(JSON.stringify({ event: 'pusher:ping', data: { pad: 'p'.repeat(3000) } }));
  const closed = await c.waitClose(3000);
  assert.equal(closed.code, 1009, `close after a 3 KB frame with max_ws_message_bytes 2048: ${JSON.stringify(closed)}; frames ${c.describeFrames()}`);
});

test('OPS-LIMIT-9 server max_request_body_bytes: HTTP 413 and counted in http_requests_total', T, async () => {
  const app = APPS.plain;
  const body = { name: 'ev', channels: ['ops-body'], data: 'z'.repeat(5000) };
  const r = await h.signedFetch(server.httpBase, { app, method: 'POST', path: `/apps/${app.id}/events`, body });
  assert.equal(r.status, 413, r.text);
  assert.match(r.text, /too large/i);
  const small = await h.signedFetch(server.httpBase, { app, method: 'POST', path: `/apps/${app.id}/events`, body: { ...body, data: 'z'.repeat(100) } });
  assert.equal(small.status, 200, small.text);
  // every answered API request is counted by route and status, refusals included
  const s = await ops.scrape(server);
  assert.equal(
    s.get('herald_http_requests_total', { app: app.id, route: 'events', status: '413' }),
    1,
    `a 413 for an oversized body must be counted in herald_http_requests_total{app="${app.id}",route="events",status="413"}:\n${s.lines('herald_http_requests_total')}`,
  );
});
