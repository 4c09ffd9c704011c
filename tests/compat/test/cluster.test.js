'use strict';
// CLUSTER-*: scale-out through Redis, end to end. A real `redis-server` (started
// here on a free loopback port; `scripts/redis.sh start` installs it) and Herald
// nodes started with HERALD_ADAPTER=redis and a key prefix unique to each test:
// nodes n1..n3 hold the pusher-js clients, n4 has no clients and is the one the
// `pusher` SDK calls, so everything those clients see crossed Redis.
//
// Exactly-once checks count every frame a client received (client.__messages)
// after a marker published afterwards on the same path has arrived: the nodes
// relay in order, so anything sent twice would have arrived before the marker.
// Webhook exactly-once checks wait until the delay windows have passed, then for
// a marker webhook caused on EACH node (each node sends its own webhooks, in
// order), then compare the complete list. API reads are eventually consistent
// and are polled with a deadline.

const { test, before, after } = require('node:test');
const h = require('../lib');
const cl = require('../lib/cluster');
const { WebhookReceiver, startHerald, hookEnv, untilTime, ev } = require('../lib/webhook_receiver');

const { assert } = h;
const app = h.DEFAULT_APP;
const T = { timeout: 30000 };
const T_FAULT = { timeout: 60000 };
const DELAY = 200; // HERALD_WEBHOOKS_VACATE_DELAY_MS for webhook tests
const HOOK_TYPES = ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed'];
// The deadline for what the design promises within ~10 s (recovery after a Redis outage).
const FAULT_MS = 10000;
// Delivery after Redis comes back (the issue's bound).
const RESUME_MS = 5000;
// A dead node's share is reaped once its heartbeat key expires (cluster/redis: a beat every
// HEARTBEAT_EVERY = 2 s sets a key with HEARTBEAT_TTL_MS = 6 s; every live node checks its
// peers' keys on each of its own beats). The dead node's last beat came at most 2 s before the
// kill, so its key expires 4..6 s after it, and a live node sees that at its next beat, up to
// 2 s later: between 4 and 8 s after a kill -9 (README: "within about 8 seconds").
const REAP_MIN_MS = 4000;
const REAP_MAX_MS = 8000;
// The 8 s bound plus the reaping node's round trips to Redis and the delivery of what it
// decided, on a loaded machine.
const REAP_LATE_MS = 500;
// The 4 s bound less how long the dead node's last beat could have been held up before the
// kill (a starved process); a removal that did not wait for the expiry (e.g. on the dead
// node's closed connections) comes within a fraction of a second.
const REAP_EARLY_MS = 500;

let redis;
before(async () => {
  redis = await cl.startRedis();
});
after(() => {
  if (redis) redis.stop();
});

/**
 * A cluster of 4 nodes on `redisServer` (the file's Redis by default), torn down
 * after the test; with `hooks`, every node sends the default app's webhooks to one
 * receiver (c.recv).
 */
async function setup(t, { hooks = false, redisServer = redis, extraEnv = {} } = {}) {
  let recv = null;
  const env = { ...extraEnv };
  if (hooks) {
    recv = new WebhookReceiver();
    await recv.start();
    t.after(() => recv.close());
    Object.assign(env, hookEnv({ targets: [{ url: recv.url('/hook'), event_types: HOOK_TYPES }], vacateDelayMs: DELAY }));
  }
  const c = await cl.startCluster({ redis: redisServer, env });
  t.after(() => c.stop());
  c.recv = recv;
  return c;
}

/**
 * A connected pusher-js client on node i (0-based); `member` makes it a presence
 * member with that user id, `user` is the user data for signin().
 */
function js(c, i, { member, ...opts } = {}) {
  const extra = member === undefined ? {} : { presenceDefault: { user_id: member, user_info: { name: `n-${member}` } } };
  return c.pool.pusher({ server: c.nodes[i], ...extra, ...opts });
}

/** Sorted member ids of a pusher-js presence channel. */
function memberIds(channel) {
  const ids = [];
  channel.members.each((m) => ids.push(m.id));
  return ids.sort();
}

/** JSON with object keys sorted (answers compared whatever their key order). */
function canon(v) {
  if (Array.isArray(v)) return `[${v.map(canon).join(',')}]`;
  if (v && typeof v === 'object') return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canon(v[k])}`).join(',')}}`;
  return JSON.stringify(v);
}

/** Polls until every given node answers GET `path` with exactly `expected` (key order aside). */
async function expectEverywhere(nodes, path, params, expected, { ms = 8000, normalize = (x) => x } = {}) {
  let last;
  await h.waitFor(
    async () => {
      last = await Promise.all(nodes.map(async (n) => normalize(await cl.apiGet(n, path, params))));
      return last.every((v) => canon(v) === canon(expected));
    },
    ms,
    `GET ${path} ${JSON.stringify(params)} = ${JSON.stringify(expected)} on ${nodes.map((n) => n.label).join(',')}`,
  ).catch((e) => {
    throw new Error(`${e.message}\nanswers: ${nodes.map((n, i) => `${n.label}: ${JSON.stringify(last && last[i])}`).join('\n         ')}`);
  });
}
const sortUsers = (r) => ({ users: [...r.users].sort((a, b) => (a.id < b.id ? -1 : 1)) });

/** Webhook events (accepted, every node) on `channel`, as 'name[:user]' strings, sorted. */
function hookList(recv, channel) {
  return recv
    .events()
    .filter((e) => e.channel === channel)
    .map((e) => (e.user_id !== undefined ? `${e.name}:${e.user_id}` : e.name))
    .sort();
}

/**
 * Everything the given nodes could still send has arrived: waits `from + DELAY`
 * (delayed vacate/member_removed are due), then subscribes a fresh channel on each
 * node and waits for that node's channel_occupied (sent after its earlier webhooks).
 */
async function hooksSettled(c, nodeIdxs, from = Date.now()) {
  await untilTime(from + DELAY + 100);
  for (const i of nodeIdxs) {
    const mk = h.uid(`mk${i + 1}-`);
    const r = await c.pool.raw({ server: c.nodes[i] });
    await r.subscribeOk(mk);
    await c.recv.waitEvent(ev({ name: 'channel_occupied', channel: mk }), { ms: 8000, what: `marker webhook from ${c.nodes[i].label}` });
    r.close();
  }
}

// ------------------------------------------------------------ 1. delivery

test('CLUSTER-DELIVER-1 an API event on n4 reaches subscribers on n1-n3 exactly once; socket_id exclusion on any node; batch and deprecated routes', T, async (t) => {
  const c = await setup(t);
  const ch = h.uid('pub-d1');
  const a1 = await js(c, 0);
  const a2 = await js(c, 0);
  const b = await js(c, 1);
  const d = await js(c, 2);
  const all = { a1, a2, b, d };
  for (const x of Object.values(all)) await h.subscribeOk(x, ch);
  const api = c.api(3);

  await api.trigger(ch, 'e-all', { n: 1 });
  await api.trigger(ch, 'e-not-b', { n: 2 }, { socket_id: b.connection.socket_id }); // excluded socket on n2
  await api.trigger(ch, 'e-not-a1', { n: 3 }, { socket_id: a1.connection.socket_id }); // on n1, next to a2
  await api.trigger(ch, 'e-not-d', { n: 4 }, { socket_id: d.connection.socket_id }); // on n3
  await api.triggerBatch([{ channel: ch, name: 'e-batch', data: JSON.stringify({ n: 5 }) }]);
  const dep = await h.signedFetch(c.nodes[3].httpBase, {
    app,
    method: 'POST',
    path: `/apps/${app.id}/channels/${ch}/events`,
    params: { name: 'e-dep' },
    body: '{"via":"deprecated"}',
  });
  assert.equal(dep.status, 202, dep.text);
  const dep2 = await h.signedFetch(c.nodes[3].httpBase, {
    app,
    method: 'POST',
    path: `/apps/${app.id}/channels/${ch}/events`,
    params: { name: 'e-dep-not-d', socket_id: d.connection.socket_id },
    body: '{"via":"deprecated"}',
  });
  assert.equal(dep2.status, 202, dep2.text);
  await api.trigger(ch, 'marker', {});
  for (const [name, x] of Object.entries(all)) await cl.waitEvent(x, 'marker', ch, 5000).catch((e) => assert.fail(`${name}: ${e.message}`));

  const expected = {
    a1: { 'e-all': 1, 'e-not-b': 1, 'e-not-a1': 0, 'e-not-d': 1, 'e-batch': 1, 'e-dep': 1, 'e-dep-not-d': 1, marker: 1 },
    a2: { 'e-all': 1, 'e-not-b': 1, 'e-not-a1': 1, 'e-not-d': 1, 'e-batch': 1, 'e-dep': 1, 'e-dep-not-d': 1, marker: 1 },
    b: { 'e-all': 1, 'e-not-b': 0, 'e-not-a1': 1, 'e-not-d': 1, 'e-batch': 1, 'e-dep': 1, 'e-dep-not-d': 1, marker: 1 },
    d: { 'e-all': 1, 'e-not-b': 1, 'e-not-a1': 1, 'e-not-d': 0, 'e-batch': 1, 'e-dep': 1, 'e-dep-not-d': 0, marker: 1 },
  };
  const got = {};
  for (const [name, x] of Object.entries(all)) {
    got[name] = {};
    for (const e of Object.keys(expected[name])) got[name][e] = cl.count(x, e, ch);
  }
  assert.deepEqual(got, expected, `frames per client: ${JSON.stringify(Object.fromEntries(Object.entries(all).map(([k, x]) => [k, cl.describe(x)])))}`);
  for (const x of Object.values(all)) {
    assert.deepEqual(cl.msgs(x, (m) => m.event === 'e-all')[0].data, { n: 1 });
    assert.deepEqual(cl.msgs(x, (m) => m.event === 'e-batch')[0].data, { n: 5 });
    assert.deepEqual(cl.msgs(x, (m) => m.event === 'e-dep')[0].data, { via: 'deprecated' });
  }
});

test('CLUSTER-DELIVER-2 client events from n1 reach peers on n1, n2 and n3 once, never the sender', T, async (t) => {
  const c = await setup(t);
  const ch = h.uid('private-d2');
  const pch = h.uid('presence-d2');
  const sender = await js(c, 0, { member: 'sender' });
  const local = await js(c, 0, { member: 'local' });
  const p2 = await js(c, 1, { member: 'p2' });
  const p3 = await js(c, 2, { member: 'p3' });
  const all = { sender, local, p2, p3 };
  const chans = {};
  for (const [k, x] of Object.entries(all)) {
    chans[k] = await h.subscribeOk(x, ch);
    await h.subscribeOk(x, pch);
  }
  assert.ok(chans.sender.trigger('client-hello', { from: 'n1' }), 'pusher-js accepted the client event');
  const senderPresence = sender.channel(pch);
  assert.ok(senderPresence.trigger('client-pres', { from: 'n1' }));
  // marker through the same path: one more client event from the same sender
  assert.ok(chans.sender.trigger('client-marker', {}));
  for (const k of ['local', 'p2', 'p3']) await cl.waitEvent(all[k], 'client-marker', ch, 5000).catch((e) => assert.fail(`${k}: ${e.message}`));
  // the sender hears nothing of its own: a marker from the API (n4) arrives with nothing before it
  await c.api(3).trigger(ch, 'api-marker', {});
  await cl.waitEvent(sender, 'api-marker', ch, 5000);

  for (const k of ['local', 'p2', 'p3']) {
    assert.equal(cl.count(all[k], 'client-hello', ch), 1, `${k} client-hello: ${cl.describe(all[k])}`);
    assert.equal(cl.count(all[k], 'client-pres', pch), 1, `${k} client-pres: ${cl.describe(all[k])}`);
    assert.deepEqual(cl.msgs(all[k], (m) => m.event === 'client-hello')[0].data, { from: 'n1' });
    // presence client events carry the sender's user_id, on every node
    assert.equal(cl.msgs(all[k], (m) => m.event === 'client-pres')[0].user_id, 'sender', `${k}: ${cl.describe(all[k])}`);
  }
  for (const e of ['client-hello', 'client-pres', 'client-marker']) assert.equal(cl.count(sender, e), 0, `sender got its own ${e}: ${cl.describe(sender)}`);
});

test('CLUSTER-DELIVER-3 sendToUser on n4 reaches the signed-in user\'s connections on n2 and n3 once, nobody else', T, async (t) => {
  const c = await setup(t);
  const user = h.uid('u-s2u');
  const u2 = await js(c, 1, { user: { id: user } });
  const u3 = await js(c, 2, { user: { id: user } });
  const stranger = await js(c, 0, { user: { id: `${user}-other` } });
  for (const x of [u2, u3, stranger]) {
    x.signin();
    await h.waitFor(() => x.user.serverToUserChannel && x.user.serverToUserChannel.subscribed, 5000, 'server-to-user subscription');
  }
  const greeted = [u2, u3].map((x) => h.once(x.user, 'greeting', 5000, 'greeting via pusher-js user.bind'));
  const api = c.api(3);
  await api.sendToUser(user, 'greeting', { hello: 'you' });
  for (const g of greeted) assert.deepEqual(await g, { hello: 'you' });
  await api.sendToUser(user, 'marker', {});
  await api.sendToUser(`${user}-other`, 'marker', {});
  const own = `#server-to-user-${user}`;
  for (const x of [u2, u3]) {
    await cl.waitEvent(x, 'marker', own, 5000);
    assert.equal(cl.count(x, 'greeting', own), 1, cl.describe(x));
  }
  await cl.waitEvent(stranger, 'marker', `#server-to-user-${user}-other`, 5000);
  assert.equal(cl.count(stranger, 'greeting'), 0, cl.describe(stranger));
});

// ------------------------------------------------------------ 2. presence

test('CLUSTER-PRES-1 one roster: members on n1-n3 see each other; member_added/member_removed once per user', T, async (t) => {
  const c = await setup(t);
  const ch = h.uid('presence-r1');
  const users = (ids) => ({ users: ids.map((id) => ({ id })) });
  const c1 = await js(c, 0, { member: 'u1' });
  const s1 = await h.subscribeOk(c1, ch);
  assert.deepEqual(memberIds(s1), ['u1']);
  await expectEverywhere([c.nodes[3]], `/channels/${ch}/users`, {}, users(['u1']));

  const c2 = await js(c, 1, { member: 'u2' });
  const s2 = await h.subscribeOk(c2, ch);
  assert.deepEqual(memberIds(s2), ['u1', 'u2'], 'n2 subscriber sees the n1 member');
  assert.deepEqual(s2.members.get('u1').info, { name: 'n-u1' }, 'user_info of a member on another node');
  await cl.waitEvent(c1, 'pusher_internal:member_added', ch, 5000, (d) => d.user_id === 'u2');
  await expectEverywhere([c.nodes[3]], `/channels/${ch}/users`, {}, users(['u1', 'u2']));

  const c3 = await js(c, 2, { member: 'u3' });
  const s3 = await h.subscribeOk(c3, ch);
  assert.deepEqual(memberIds(s3), ['u1', 'u2', 'u3']);
  assert.equal(s3.members.count, 3);
  for (const x of [c1, c2]) await cl.waitEvent(x, 'pusher_internal:member_added', ch, 5000, (d) => d.user_id === 'u3');
  assert.deepEqual(memberIds(s1), ['u1', 'u2', 'u3']);
  assert.deepEqual(memberIds(s2), ['u1', 'u2', 'u3']);

  c2.disconnect();
  for (const x of [c1, c3]) await cl.waitEvent(x, 'pusher_internal:member_removed', ch, 5000, (d) => d.user_id === 'u2');
  await c.api(3).trigger(ch, 'marker', {});
  for (const x of [c1, c3]) await cl.waitEvent(x, 'marker', ch, 5000);
  assert.deepEqual(memberIds(s1), ['u1', 'u3']);
  assert.deepEqual(memberIds(s3), ['u1', 'u3']);

  const tally = (x) => ({
    added: cl.msgs(x, (m) => m.event === 'pusher_internal:member_added' && m.channel === ch).map((m) => m.data.user_id).sort(),
    removed: cl.msgs(x, (m) => m.event === 'pusher_internal:member_removed' && m.channel === ch).map((m) => m.data.user_id).sort(),
  });
  assert.deepEqual(tally(c1), { added: ['u2', 'u3'], removed: ['u2'] }, cl.describe(c1));
  assert.deepEqual(tally(c3), { added: [], removed: ['u2'] }, cl.describe(c3));
  await expectEverywhere(c.nodes, `/channels/${ch}/users`, {}, users(['u1', 'u3']), { normalize: sortUsers });
});

test('CLUSTER-PRES-2 a user connected on two nodes is one member; leaving one node removes nobody', T, async (t) => {
  const c = await setup(t);
  const ch = h.uid('presence-r2');
  const o = await js(c, 2, { member: 'observer' });
  const so = await h.subscribeOk(o, ch);
  await expectEverywhere([c.nodes[3]], `/channels/${ch}`, { info: 'user_count' }, { occupied: true, user_count: 1 });
  const d1 = await js(c, 0, { member: 'dup' });
  const sd1 = await h.subscribeOk(d1, ch);
  assert.deepEqual(memberIds(sd1), ['dup', 'observer']);
  await cl.waitEvent(o, 'pusher_internal:member_added', ch, 5000, (d) => d.user_id === 'dup');
  await expectEverywhere([c.nodes[3]], `/channels/${ch}`, { info: 'user_count,subscription_count' }, { occupied: true, user_count: 2, subscription_count: 2 });
  const d2 = await js(c, 1, { member: 'dup' });
  const sd2 = await h.subscribeOk(d2, ch);
  assert.deepEqual(memberIds(sd2), ['dup', 'observer']);
  assert.equal(sd2.members.count, 2);
  await expectEverywhere(c.nodes, `/channels/${ch}`, { info: 'user_count,subscription_count' }, { occupied: true, user_count: 2, subscription_count: 3 });

  d2.disconnect(); // dup still has its n1 connection
  await expectEverywhere(c.nodes, `/channels/${ch}`, { info: 'user_count,subscription_count' }, { occupied: true, user_count: 2, subscription_count: 2 });
  await c.api(3).trigger(ch, 'marker-1', {});
  for (const x of [o, d1]) await cl.waitEvent(x, 'marker-1', ch, 5000);
  assert.equal(cl.count(o, 'pusher_internal:member_added', ch), 1, `observer: ${cl.describe(o)}`);
  assert.equal(cl.count(o, 'pusher_internal:member_removed', ch), 0, `observer: ${cl.describe(o)}`);
  assert.equal(cl.count(d1, 'pusher_internal:member_removed', ch), 0, `dup@n1: ${cl.describe(d1)}`);
  assert.equal(cl.count(d1, 'pusher_internal:member_added', ch), 0, `dup@n1 must not hear its own second connection: ${cl.describe(d1)}`);
  assert.deepEqual(memberIds(so), ['dup', 'observer']);
  await expectEverywhere(c.nodes, `/channels/${ch}/users`, {}, { users: [{ id: 'dup' }, { id: 'observer' }] }, { normalize: sortUsers });

  d1.disconnect(); // the last connection of dup
  await cl.waitEvent(o, 'pusher_internal:member_removed', ch, 5000, (d) => d.user_id === 'dup');
  await c.api(3).trigger(ch, 'marker-2', {});
  await cl.waitEvent(o, 'marker-2', ch, 5000);
  assert.equal(cl.count(o, 'pusher_internal:member_removed', ch), 1, `observer: ${cl.describe(o)}`);
  assert.deepEqual(memberIds(so), ['observer']);
});

// ------------------------------------------------------------ 3. webhooks

test('CLUSTER-HOOK-1 webhooks once for the cluster: one channel_occupied, member_added per user, member_removed, one channel_vacated', T, async (t) => {
  const c = await setup(t, { hooks: true });
  const recv = c.recv;
  const pres = h.uid('presence-h1');
  const pub = h.uid('pub-h1');
  // presence: u1 on n1, u2 on n2 (and n1 again), u3 on n3; public: one subscriber per node
  const a = await js(c, 0, { member: 'u1' });
  await h.subscribeOk(a, pres);
  await recv.waitEvent(ev({ name: 'member_added', channel: pres, user_id: 'u1' }), { ms: 5000 });
  const b = await js(c, 1, { member: 'u2' });
  await h.subscribeOk(b, pres);
  const b2 = await js(c, 0, { member: 'u2' });
  await h.subscribeOk(b2, pres);
  const d = await js(c, 2, { member: 'u3' });
  await h.subscribeOk(d, pres);
  const pubs = [];
  for (const i of [0, 1, 2]) {
    const x = await js(c, i);
    await h.subscribeOk(x, pub);
    pubs.push(x);
  }
  await recv.waitEvents((e) => e.channel === pres && e.name === 'member_added', { count: 3, ms: 5000 });
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: pub }), { ms: 5000 });
  // the joins are in the cluster's state before anyone leaves: a join still on its way to Redis
  // when another node's last subscriber leaves is a later occupation of its own (each node's
  // webhook delay cancels a vacate and re-occupy only when both happen on that node)
  await expectEverywhere(c.nodes, `/channels/${pub}`, { info: 'subscription_count' }, { occupied: true, subscription_count: 3 });
  await expectEverywhere(c.nodes, `/channels/${pres}`, { info: 'subscription_count' }, { occupied: true, subscription_count: 4 });

  // everyone leaves, one node after another
  for (const x of [d, b, b2, a, ...pubs]) x.disconnect();
  await recv.waitEvent(ev({ name: 'channel_vacated', channel: pres }), { ms: 5000 });
  await recv.waitEvent(ev({ name: 'channel_vacated', channel: pub }), { ms: 5000 });
  await expectEverywhere(c.nodes, '/channels', { info: 'subscription_count', filter_by_prefix: 'p' }, { channels: {} });
  await hooksSettled(c, [0, 1, 2, 3]);

  recv.assertAllValid(assert);
  assert.deepEqual(
    hookList(recv, pres),
    ['channel_occupied', 'channel_vacated', 'member_added:u1', 'member_added:u2', 'member_added:u3', 'member_removed:u1', 'member_removed:u2', 'member_removed:u3'],
    `presence webhooks: ${recv.describe()}`,
  );
  assert.deepEqual(hookList(recv, pub), ['channel_occupied', 'channel_vacated'], `public webhooks: ${recv.describe()}`);
  // per channel, occupied before vacated; member_added before member_removed per user
  const order = recv.events().filter((e) => e.channel === pres).map((e) => (e.user_id ? `${e.name}:${e.user_id}` : e.name));
  assert.ok(order.indexOf('channel_occupied') < order.indexOf('channel_vacated'), order.join(' '));
  for (const u of ['u1', 'u2', 'u3']) assert.ok(order.indexOf(`member_added:${u}`) < order.indexOf(`member_removed:${u}`), order.join(' '));
});

// ------------------------------------------------------------ 4. API reads

test('CLUSTER-API-1 GET /channels, /channels/{c}, /users and deprecated /stats answer the cluster totals on n1-n4 alike', T, async (t) => {
  const c = await setup(t);
  const tag = h.uid('a1');
  const pub = `pub-${tag}`;
  const pres = `presence-${tag}`;
  const priv = `private-${tag}`;
  // pub: 2 on n1, 1 on n2, 1 on n3. presence: u1@n1, u2@n2, u2@n3, u3@n3. private: 1 on n2
  for (const i of [0, 0, 1, 2]) await h.subscribeOk(await js(c, i), pub);
  const pc = {};
  for (const [k, i, u] of [['u1', 0, 'u1'], ['u2a', 1, 'u2'], ['u2b', 2, 'u2'], ['u3', 2, 'u3']]) {
    pc[k] = await js(c, i, { member: u });
    await h.subscribeOk(pc[k], pres);
  }
  const privClient = await js(c, 1);
  await h.subscribeOk(privClient, priv);

  const expectAll = (path, params, expected, normalize) => expectEverywhere(c.nodes, path, params, expected, { normalize });
  await expectAll('/channels', { info: 'subscription_count' }, {
    channels: { [pres]: { subscription_count: 4 }, [priv]: { subscription_count: 1 }, [pub]: { subscription_count: 4 } },
  }, (r) => ({ channels: Object.fromEntries(Object.entries(r.channels).sort()) }));
  await expectAll('/channels', {}, { channels: { [pres]: {}, [priv]: {}, [pub]: {} } }, (r) => ({
    channels: Object.fromEntries(Object.entries(r.channels).sort()),
  }));
  await expectAll('/channels', { filter_by_prefix: 'presence-', info: 'user_count,subscription_count' }, {
    channels: { [pres]: { user_count: 3, subscription_count: 4 } },
  });
  await expectAll(`/channels/${pub}`, { info: 'subscription_count' }, { occupied: true, subscription_count: 4 });
  await expectAll(`/channels/${pres}`, { info: 'user_count,subscription_count' }, { occupied: true, user_count: 3, subscription_count: 4 });
  await expectAll(`/channels/${pres}/users`, {}, { users: [{ id: 'u1' }, { id: 'u2' }, { id: 'u3' }] }, sortUsers);
  await expectAll(`/channels/${pub}/stats`, {}, { occupied: true, connection_count: 4 });
  await expectAll(`/channels/${pres}/stats`, {}, { occupied: true, user_count: 3, connection_count: 4 });
  await expectAll(`/channels/${tag}-nobody`, { info: 'subscription_count' }, { occupied: false, subscription_count: 0 });

  // changes on one node show on all: u2 leaves n3 (still on n2), u3 leaves, the private channel empties
  pc.u2b.disconnect();
  pc.u3.disconnect();
  privClient.disconnect();
  await expectAll(`/channels/${pres}`, { info: 'user_count,subscription_count' }, { occupied: true, user_count: 2, subscription_count: 2 });
  await expectAll(`/channels/${pres}/users`, {}, { users: [{ id: 'u1' }, { id: 'u2' }] }, sortUsers);
  await expectAll(`/channels/${priv}`, { info: 'subscription_count' }, { occupied: false, subscription_count: 0 });
  await expectAll('/channels', { info: 'subscription_count' }, {
    channels: { [pres]: { subscription_count: 2 }, [pub]: { subscription_count: 4 } },
  }, (r) => ({ channels: Object.fromEntries(Object.entries(r.channels).sort()) }));
  await expectAll(`/channels/${pres}/stats`, {}, { occupied: true, user_count: 2, connection_count: 2 });
});

test('CLUSTER-API-4 API reads and presence subscribes share a node\'s Redis connection: 60 reads and 20 joins open at most one more', T, async (t) => {
  const c = await setup(t);
  const tag = h.uid('a4');
  const pres = `presence-${tag}`;
  const connectionsMade = async () => {
    const info = String(await cl.redisCommand(redis.port, 'INFO', 'stats'));
    return Number(/total_connections_received:(\d+)/.exec(info)[1]);
  };
  // One read first: the shared connection is made on first use.
  await cl.apiGet(c.nodes[0], '/channels', {});
  const before = await connectionsMade();
  const members = [];
  for (let i = 0; i < 20; i++) {
    const m = await js(c, 0, { member: `u${i}` });
    members.push(m);
    await h.subscribeOk(m, pres); // each join reads the roster from Redis
  }
  for (let i = 0; i < 20; i++) {
    await cl.apiGet(c.nodes[0], '/channels', { info: 'subscription_count' });
    await cl.apiGet(c.nodes[0], `/channels/${pres}`, { info: 'user_count' });
    await cl.apiGet(c.nodes[0], `/channels/${pres}/users`, {});
  }
  const after = await connectionsMade();
  // The reads above plus this INFO's own connection; one each would be 80 more.
  assert.ok(after - before <= 2, `${after - before} Redis connections made for 60 API reads and 20 presence joins`);
  const users = await cl.apiGet(c.nodes[0], `/channels/${pres}/users`, {});
  assert.equal(users.users.length, 20, 'the roster read on the shared connection is whole');
});

test('CLUSTER-API-2 cache channel: an event published on n4 is replayed to a late subscriber on n2', T, async (t) => {
  const c = await setup(t);
  const ch = h.uid('cache-x');
  const early = await js(c, 2);
  await h.subscribeOk(early, ch);
  await cl.waitMsg(early, (m) => m.event === 'pusher:cache_miss' && m.channel === ch, 5000, 'cache_miss for the first subscriber');
  await c.api(3).trigger(ch, 'cached', { v: 1 });
  await cl.waitEvent(early, 'cached', ch, 5000);
  // every node answers with it: the cluster's store keeps it for nodes without a subscriber
  await h.waitFor(
    async () => {
      const all = await Promise.all(c.nodes.map((n) => cl.apiGet(n, `/channels/${ch}`, { info: 'cache' })));
      return all.every((r) => r.cache && r.cache.data === '{"v":1}') ? all : false;
    },
    5000,
    'the cached event on every node',
  );
  // late subscribers on n2, n1 and n4 (the publishing node) get it replayed, no cache miss
  const lates = [];
  for (const i of [1, 0, 3]) {
    const late = await js(c, i);
    await h.subscribeOk(late, ch);
    const got = await cl.waitEvent(late, 'cached', ch, 5000);
    assert.deepEqual(got.data, { v: 1 });
    lates.push([c.nodes[i].label, late]);
  }
  await c.api(3).trigger(ch, 'marker', {}); // (it becomes the cached event: published after every subscription)
  for (const [label, late] of lates) {
    await cl.waitEvent(late, 'marker', ch, 5000);
    assert.equal(cl.count(late, 'cached', ch), 1, `${label}: ${cl.describe(late)}`);
    assert.equal(cl.count(late, 'pusher:cache_miss', ch), 0, `no cache miss for the late subscriber on ${label}: ${cl.describe(late)}`);
  }
  await cl.waitEvent(early, 'marker', ch, 5000);
  assert.equal(cl.count(early, 'cached', ch), 1, cl.describe(early));
});

test('CLUSTER-API-3 terminateUserConnections on n4 closes the user\'s connections on n1-n3 with 4009', T, async (t) => {
  const c = await setup(t);
  const user = h.uid('u-term');
  const raws = [];
  for (const i of [0, 1, 2]) {
    const r = await c.pool.raw({ server: c.nodes[i] });
    assert.equal((await r.signin(app, { id: user })).event, 'pusher:signin_success');
    raws.push(r);
  }
  const p = await js(c, 1, { user: { id: user } });
  p.signin();
  await h.withTimeout(p.user.signinDonePromise, 5000, 'pusher-js signin');
  const other = await c.pool.raw({ server: c.nodes[0] });
  assert.equal((await other.signin(app, { id: `${user}-other` })).event, 'pusher:signin_success');

  const res = await h.sdkCall(c.api(3).terminateUserConnections(user));
  assert.equal(res.status, 200, res.text);
  for (const r of raws) await h.expectErrorThenClose(r, 4009, 'Connection is unauthorized', 5000);
  await h.waitState(p, 'disconnected', 5000);
  const { pong } = await other.sync();
  assert.equal(pong.event, 'pusher:pong');
  assert.equal(other.closed, null, 'another user on the same node stays connected');
});

// ------------------------------------------------------------ 5. node failure

test('CLUSTER-FAULT-1 kill -9 of n2: member_removed to the others, counts drop, webhooks once, 4 to 8 s after', T_FAULT, async (t) => {
  const c = await setup(t, { hooks: true });
  const recv = c.recv;
  const tag = h.uid('f1');
  const pres = `presence-${tag}`;
  const onlyN2 = `only2-${tag}`; // empties when n2 dies
  const shared = `shared-${tag}`; // keeps its n1 subscriber
  const m1 = await js(c, 0, { member: 'u1' });
  const m2 = await js(c, 1, { member: 'u2' });
  const m3 = await js(c, 2, { member: 'u3' });
  for (const x of [m1, m2, m3]) await h.subscribeOk(x, pres);
  await h.subscribeOk(m2, onlyN2);
  await h.subscribeOk(m2, shared);
  await h.subscribeOk(m1, shared);
  await expectEverywhere(c.nodes, `/channels/${pres}`, { info: 'user_count,subscription_count' }, { occupied: true, user_count: 3, subscription_count: 3 });
  await expectEverywhere(c.nodes, `/channels/${shared}`, { info: 'subscription_count' }, { occupied: true, subscription_count: 2 });
  await recv.waitEvents((e) => e.channel === pres && e.name === 'member_added', { count: 3, ms: 5000 });
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: onlyN2 }), { ms: 5000 });

  const deadId = m2.connection.socket_id.split('.')[0]; // socket ids start with the node id
  // when each survivor's client hears of u2's removal, on the clock of `killedAt`
  const removedAt = new Map();
  for (const [label, x] of [['n1', m1], ['n3', m3]]) {
    x.connection.bind('message', (m) => {
      if (m.event === 'pusher_internal:member_removed' && m.channel === pres && !removedAt.has(label)) removedAt.set(label, performance.now());
    });
  }
  const killedAt = performance.now();
  const killedAtWall = Date.now(); // the webhook receiver stamps with Date.now()
  c.nodes[1].stop(); // SIGKILL
  await c.nodes[1].exited;
  for (const x of [m1, m3]) {
    // waits past the bound, so that a late removal is reported with its time
    await cl.waitEvent(x, 'pusher_internal:member_removed', pres, 2 * REAP_MAX_MS, (d) => d.user_id === 'u2').catch((e) => {
      throw new Error(`${e.message}\nnode logs:\n${c.logs((l) => /WARN|ERROR|dead node|Redis/.test(l))}`);
    });
  }
  for (const [label, at] of removedAt) {
    const after = at - killedAt;
    t.diagnostic(`member_removed on ${label} ${after.toFixed(0)} ms after the kill`);
    assert.ok(after >= REAP_MIN_MS - REAP_EARLY_MS, `member_removed ${after.toFixed(0)} ms after the kill: before the dead node's heartbeat could expire`);
    assert.ok(after <= REAP_MAX_MS + REAP_LATE_MS, `member_removed only ${after.toFixed(0)} ms after the kill (documented: about ${REAP_MAX_MS} ms)`);
  }
  assert.equal(removedAt.size, 2, 'both survivors heard of the removal');
  const reapedIn = Math.max(...removedAt.values()) - killedAt;
  const live = [c.nodes[0], c.nodes[2], c.nodes[3]];
  const sorted = (r) => ({ channels: Object.fromEntries(Object.entries(r.channels).sort()) });
  await expectEverywhere(live, `/channels/${pres}`, { info: 'user_count,subscription_count' }, { occupied: true, user_count: 2, subscription_count: 2 }, { ms: 2000 });
  await expectEverywhere(live, `/channels/${pres}/users`, {}, { users: [{ id: 'u1' }, { id: 'u3' }] }, { ms: 2000, normalize: sortUsers });
  await expectEverywhere(live, `/channels/${onlyN2}`, { info: 'subscription_count' }, { occupied: false, subscription_count: 0 }, { ms: 2000 });
  await expectEverywhere(live, '/channels', { info: 'subscription_count', filter_by_prefix: '' }, {
    channels: { [pres]: { subscription_count: 2 }, [shared]: { subscription_count: 1 } },
  }, { ms: 2000, normalize: sorted });
  // the reaping node's webhooks follow the removal after the vacate delay
  for (const e of [ev({ name: 'member_removed', channel: pres, user_id: 'u2' }), ev({ name: 'channel_vacated', channel: onlyN2 })]) {
    const hook = await recv.waitEvent(e, { ms: REAP_MAX_MS + REAP_LATE_MS + DELAY - reapedIn + 1000 });
    const after = hook._req.at - killedAtWall;
    t.diagnostic(`${hook.name} webhook ${after} ms after the kill`);
    assert.ok(after >= REAP_MIN_MS - REAP_EARLY_MS + DELAY, `${hook.name} webhook ${after} ms after the kill: before the heartbeat expiry and the vacate delay`);
    assert.ok(after <= REAP_MAX_MS + REAP_LATE_MS + DELAY, `${hook.name} webhook only ${after} ms after the kill`);
  }

  // the dead node left the node set (so no other node can reap it again), then every
  // surviving node's webhooks are in
  await h.waitFor(async () => !(await cl.redisCommand(redis.port, 'SMEMBERS', `${c.prefix}:nodes`)).some((sid) => sid.split('.')[0] === deadId), 5000, 'dead node out of the node set');
  await hooksSettled(c, [0, 2, 3]);
  await c.api(3).trigger(pres, 'marker', {});
  for (const x of [m1, m3]) {
    await cl.waitEvent(x, 'marker', pres, 5000);
    assert.equal(cl.count(x, 'pusher_internal:member_removed', pres), 1, cl.describe(x));
  }
  recv.assertAllValid(assert);
  assert.deepEqual(hookList(recv, pres), ['channel_occupied', 'member_added:u1', 'member_added:u2', 'member_added:u3', 'member_removed:u2'], recv.describe());
  assert.deepEqual(hookList(recv, onlyN2), ['channel_occupied', 'channel_vacated'], recv.describe());
  assert.deepEqual(hookList(recv, shared), ['channel_occupied'], recv.describe());
  assert.match(c.logs(), /removed a dead node's connections from the cluster/);
});

// ------------------------------------------------------------ 6. Redis outage

test('CLUSTER-FAULT-2 cluster.on_outage=local: Redis killed and restarted: local delivery and /readyz 200 while down, then cross-node delivery and full state again', T_FAULT, async (t) => {
  const r2 = await cl.startRedis();
  t.after(() => r2.stop());
  const c = await setup(t, { hooks: true, redisServer: r2, extraEnv: { HERALD_CLUSTER_ON_OUTAGE: 'local' } });
  const recv = c.recv;
  const tag = h.uid('f2');
  const pub = `pub-${tag}`;
  const pres = `presence-${tag}`;
  const x1 = await js(c, 0);
  const x1b = await js(c, 0);
  const x2 = await js(c, 1);
  const x3 = await js(c, 2);
  const xs = { x1, x1b, x2, x3 };
  for (const x of Object.values(xs)) await h.subscribeOk(x, pub);
  const m = [await js(c, 0, { member: 'u1' }), await js(c, 1, { member: 'u2' }), await js(c, 2, { member: 'u3' })];
  for (const x of m) await h.subscribeOk(x, pres);
  const full = async (ms) => {
    await expectEverywhere(c.nodes, `/channels/${pres}`, { info: 'user_count,subscription_count' }, { occupied: true, user_count: 3, subscription_count: 3 }, { ms });
    await expectEverywhere(c.nodes, `/channels/${pres}/users`, {}, { users: [{ id: 'u1' }, { id: 'u2' }, { id: 'u3' }] }, { ms, normalize: sortUsers });
    await expectEverywhere(c.nodes, `/channels/${pub}`, { info: 'subscription_count' }, { occupied: true, subscription_count: 4 }, { ms });
  };
  await full(5000);
  await recv.waitEvents((e) => e.channel === pres && e.name === 'member_added', { count: 3, ms: 5000 });
  const presMsgs = () => m.map((x) => cl.count(x, 'pusher_internal:member_added', pres) + cl.count(x, 'pusher_internal:member_removed', pres));
  const presBefore = presMsgs();

  // Checks from here on are recorded and the test goes on, so that one run reports
  // everything that is wrong around a Redis restart; the test fails at the end if anything was.
  const problems = [];
  const soft = async (what, fn) => {
    try {
      await fn();
    } catch (e) {
      problems.push(`${what}: ${e.message}`);
    }
  };

  // ---- Redis goes away
  await r2.kill();
  await h.waitFor(() => c.nodes.every((n) => /lost Redis/.test(n.output())), 5000, 'every node saw Redis go');
  assert.deepEqual(await Promise.all(c.nodes.map(cl.readyz)), [200, 200, 200, 200], '/readyz stays 200 with on_outage=local');
  await c.api(0).trigger(pub, 'during-1', { n: 1 });
  await c.api(0).trigger(pub, 'during-2', { n: 2 });
  for (const x of [x1, x1b]) {
    await cl.waitEvent(x, 'during-1', pub, 3000);
    await cl.waitEvent(x, 'during-2', pub, 3000);
  }
  // the API still answers, with this node's own counts (x1, x1b on n1)
  await soft('GET /channels/{c} on n1 while Redis is down', async () =>
    assert.deepEqual(await cl.apiGet(c.nodes[0], `/channels/${pub}`, { info: 'subscription_count' }), { occupied: true, subscription_count: 2 }),
  );
  const downFor = Date.now();

  // ---- Redis is back (empty) on the same port
  await r2.restart();
  const t0 = Date.now();
  // (readiness stayed up throughout: each node's log says when it is connected again)
  const reconnected = (n) => (n.output().match(/connected to Redis/g) || []).length >= 2;
  await h.waitFor(() => c.nodes.every(reconnected), FAULT_MS, 'every node connected to Redis again').catch((e) => {
    throw new Error(`${e.message}\nnode logs:\n${c.logs((l) => /WARN|ERROR|Redis|share/.test(l))}`);
  });
  const readyIn = Date.now() - t0;

  // 1. the first event published on n4 (which published nothing during the outage) once
  //    every node is connected again
  await c.api(3).trigger(pub, 'after-1', { n: 3 });
  const missed = [];
  await Promise.all(Object.entries(xs).map(([k, x]) => cl.waitEvent(x, 'after-1', pub, 3000).catch(() => missed.push(k))));
  missed.sort();
  if (missed.length) {
    problems.push(`the first event published on n4 after Redis came back (every node connected again ${readyIn} ms after the restart) never reached ${missed.join(', ')} (waited 3 s)`);
  }

  // 2. cross-node delivery works again within ~10 s of the restart: a new event from n4
  //    every 250 ms until every subscriber has one
  let k = 0;
  const gotAgain = (x) => cl.count(x, 'again', pub) > 0;
  await soft('cross-node delivery from n4 within ~10 s of the restart', () =>
    h.waitFor(
      async () => {
        if (Object.values(xs).every(gotAgain)) return true;
        await c.api(3).trigger(pub, 'again', { k: ++k });
        await new Promise((r) => setTimeout(r, 250)); // pacing of the probes
        return Object.values(xs).every(gotAgain);
      },
      Math.max(1000, FAULT_MS - (Date.now() - t0)),
      `an 'again' event on ${Object.keys(xs).join(',')}`,
    ),
  );
  const deliveredIn = Date.now() - t0;
  // 3. and from n1, the node that published during the outage: once this arrived, anything
  //    n1 had held back from the outage would have arrived before it
  await soft('cross-node delivery from n1', async () => {
    await c.api(0).trigger(pub, 'after-n1', { n: 4 });
    for (const [name, x] of Object.entries(xs)) await cl.waitEvent(x, 'after-n1', pub, 5000).catch((e) => assert.fail(`${name}: ${e.message}`));
  });

  // 4. the full cluster state is back in Redis (each node rewrote its share), read from every node
  await soft('API reads show the whole cluster again within ~10 s', () => full(Math.max(2000, FAULT_MS - (Date.now() - t0))));
  const stateIn = Date.now() - t0;

  // 5. events published while Redis was down reached local subscribers only
  for (const name of ['x2', 'x3']) {
    const late = ['during-1', 'during-2'].filter((e) => cl.count(xs[name], e, pub) > 0);
    if (late.length) {
      const at = cl.msgs(xs[name], (m) => m.event.startsWith('during-')).map((m) => m.event);
      problems.push(`${name} (on ${name === 'x2' ? 'n2' : 'n3'}) received ${at.join(', ')}, published on n1 while Redis was down, after Redis came back (expected: local subscribers only)`);
    }
  }
  for (const name of ['x1', 'x1b']) {
    const n = ['during-1', 'during-2', 'after-n1'].map((e) => cl.count(xs[name], e, pub));
    if (n.join() !== '1,1,1') problems.push(`${name} on n1 got during-1, during-2, after-n1 ${n.join(', ')} times (expected once each): ${cl.describe(xs[name])}`);
  }
  for (const [name, x] of Object.entries(xs)) {
    const ks = cl.msgs(x, (m) => m.event === 'again').map((m) => m.data.k);
    if (new Set(ks).size !== ks.length) problems.push(`${name} got an 'again' event twice: ${ks.join(',')}`);
  }

  // 6. the resynchronisation was quiet: no member_added/member_removed frames, no webhooks
  await soft('presence marker', async () => {
    await c.api(3).trigger(pres, 'marker', {});
    for (const x of m) await cl.waitEvent(x, 'marker', pres, 5000);
  });
  if (presMsgs().join() !== presBefore.join()) problems.push(`presence frames from the resynchronisation: ${m.map(cl.describe).join('\n')}`);
  await soft('marker webhooks from every node', () => hooksSettled(c, [0, 1, 2, 3], downFor));
  recv.assertAllValid(assert);
  const presHooks = hookList(recv, pres);
  const pubHooks = hookList(recv, pub);
  if (canon(presHooks) !== canon(['channel_occupied', 'member_added:u1', 'member_added:u2', 'member_added:u3'])) problems.push(`presence webhooks: ${presHooks.join(', ')}`);
  if (canon(pubHooks) !== canon(['channel_occupied'])) problems.push(`public channel webhooks: ${pubHooks.join(', ')}`);

  assert.deepEqual(
    problems,
    [],
    `after the Redis restart (all connected again after ${readyIn} ms, cross-node delivery after ${deliveredIn} ms with ${k} probe(s), full state after ${stateIn} ms):\n` +
      `${problems.join('\n')}\nnode logs:\n${c.logs((l) => /WARN|ERROR|Redis|share/.test(l))}`,
  );
});

test('CLUSTER-FAULT-3 default cluster.on_outage=reject: Redis stopped 10 s: publishes answer 503 and reach nobody, /readyz 503; within 5 s of the restart 200 and delivered everywhere, Herald not restarted', T_FAULT, async (t) => {
  const r3 = await cl.startRedis();
  t.after(() => r3.stop());
  const c = await setup(t, { redisServer: r3 });
  const pub = h.uid('f3');
  const x1 = await js(c, 0);
  const x2 = await js(c, 1);
  for (const x of [x1, x2]) await h.subscribeOk(x, pub);
  await r3.kill();
  const killedAt = Date.now();
  await cl.waitReadyz(c.nodes, 503, 5000, '/readyz 503 on every node while Redis is down');
  const err = await c
    .api(0)
    .trigger(pub, 'during', { n: 1 })
    .then(() => null, (e) => e);
  assert.ok(err, 'the publish during the outage was answered 200');
  assert.equal(err.status, 503, `status ${err.status}: ${err.body}`);
  assert.match(String(err.body), /retry/i, 'the 503 says the publish may be retried');
  await untilTime(killedAt + 10000);
  await r3.restart();
  const restartedAt = Date.now();
  await cl.waitReadyz(c.nodes, 200, RESUME_MS, '/readyz 200 on every node within 5 s of the restart');
  await h.waitFor(
    async () => {
      await c.api(0).trigger(pub, 'after', {}).catch(() => {}); // a 503 is retried by the next probe
      await new Promise((r) => setTimeout(r, 100)); // pacing of the probes
      return [x1, x2].every((x) => cl.count(x, 'after', pub) > 0);
    },
    Math.max(500, RESUME_MS - (Date.now() - restartedAt)),
    'an event published on n1 reaches n1 and n2 within 5 s of the restart',
  );
  t.diagnostic(`delivered again ${Date.now() - restartedAt} ms after the restart`);
  for (const x of [x1, x2]) assert.equal(cl.count(x, 'during', pub), 0, `the refused event was delivered: ${cl.describe(x)}`);
});

test('CLUSTER-ORDER-1 one order per channel: 200 awaited API publishes alternating between n1 and n2 arrive in publish order at subscribers on n1, n2 and n3', T, async (t) => {
  const c = await setup(t);
  const ch = h.uid('order');
  const subs = [await js(c, 0), await js(c, 1), await js(c, 2)];
  for (const x of subs) await h.subscribeOk(x, ch);
  const N = 200;
  for (let i = 0; i < N; i++) await c.api(i % 2).trigger(ch, 'seq', { i });
  for (const x of subs) {
    await h.waitFor(() => cl.count(x, 'seq', ch) >= N, 10000, `${N} events at a subscriber`);
    const got = cl.msgs(x, (m) => m.event === 'seq').map((m) => m.data.i);
    assert.deepEqual(got, [...Array(N).keys()], 'the publish order, once each');
  }
});

test('CLUSTER-FAULT-5 Redis stalled (SIGSTOP): a publish is answered 503, never 200; after SIGCONT publishes are answered 200 and delivered across nodes', T_FAULT, async (t) => {
  const r5 = await cl.startRedis();
  t.after(() => {
    try {
      r5.proc.kill('SIGCONT');
    } catch (_) {}
    return r5.stop();
  });
  const c = await setup(t, { redisServer: r5 });
  const ch = h.uid('f5');
  const x1 = await js(c, 0);
  const x2 = await js(c, 1);
  for (const x of [x1, x2]) await h.subscribeOk(x, ch);
  r5.proc.kill('SIGSTOP');
  const err = await c
    .api(0)
    .trigger(ch, 'stalled', {})
    .then(() => null, (e) => e);
  assert.ok(err, 'a publish while Redis was stalled was answered 200');
  assert.equal(err.status, 503, `status ${err.status}: ${err.body}`);
  r5.proc.kill('SIGCONT');
  await h.waitFor(
    async () => {
      await c
        .api(0)
        .trigger(ch, 'resumed', {})
        .catch(() => {}); // 503 until the node sees Redis again: the next probe retries
      await new Promise((r) => setTimeout(r, 250)); // pacing of the probes
      return [x1, x2].every((x) => cl.count(x, 'resumed', ch) > 0);
    },
    FAULT_MS,
    'publishes delivered on n1 and n2 after SIGCONT',
  );
});

test('CLUSTER-FAULT-4 n2 stalled 11 s (SIGSTOP) and resumed: the others remove its members and channels, then it announces them again; rosters, counts and webhooks agree on every node within 10 s', T_FAULT, async (t) => {
  const c = await setup(t, { hooks: true });
  const recv = c.recv;
  const tag = h.uid('f4');
  const pres = `presence-${tag}`;
  const onlyN2 = `only2-${tag}`; // vacated while n2 is stalled, occupied again after
  const m1 = await js(c, 0, { member: 'u1' });
  const m2 = await js(c, 1, { member: 'u2' });
  const m3 = await js(c, 2, { member: 'u3' });
  for (const x of [m1, m2, m3]) await h.subscribeOk(x, pres);
  await h.subscribeOk(m2, onlyN2);
  await expectEverywhere(c.nodes, `/channels/${pres}`, { info: 'user_count,subscription_count' }, { occupied: true, user_count: 3, subscription_count: 3 });
  await recv.waitEvents((e) => e.channel === pres && e.name === 'member_added', { count: 3, ms: 5000 });
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: onlyN2 }), { ms: 5000 });

  const n2 = c.nodes[1];
  t.after(() => {
    try {
      n2.proc.kill('SIGCONT');
    } catch (_) {}
  });
  n2.proc.kill('SIGSTOP');
  const stoppedAt = Date.now();
  // the silent node's heartbeat expires: the others take its members and channels out
  for (const x of [m1, m3]) await cl.waitEvent(x, 'pusher_internal:member_removed', pres, 2 * REAP_MAX_MS, (d) => d.user_id === 'u2');
  const live = [c.nodes[0], c.nodes[2], c.nodes[3]];
  await expectEverywhere(live, `/channels/${pres}`, { info: 'user_count,subscription_count' }, { occupied: true, user_count: 2, subscription_count: 2 }, { ms: 3000 });
  await expectEverywhere(live, `/channels/${onlyN2}`, { info: 'subscription_count' }, { occupied: false, subscription_count: 0 }, { ms: 3000 });
  // a member joins on n3 meanwhile
  const m4 = await js(c, 2, { member: 'u4' });
  await h.subscribeOk(m4, pres);
  await untilTime(stoppedAt + 11000);
  n2.proc.kill('SIGCONT');
  const resumedAt = Date.now();

  // within 10 s every node and every client agrees again
  const left = () => Math.max(1000, FAULT_MS - (Date.now() - resumedAt));
  const all = ['u1', 'u2', 'u3', 'u4'];
  await expectEverywhere(c.nodes, `/channels/${pres}`, { info: 'user_count,subscription_count' }, { occupied: true, user_count: 4, subscription_count: 4 }, { ms: left() });
  await expectEverywhere(c.nodes, `/channels/${pres}/users`, {}, { users: all.map((id) => ({ id })) }, { ms: left(), normalize: sortUsers });
  await expectEverywhere(c.nodes, `/channels/${onlyN2}`, { info: 'subscription_count' }, { occupied: true, subscription_count: 1 }, { ms: left() });
  for (const [name, x] of Object.entries({ m1, m2, m3, m4 })) {
    await h.waitFor(() => canon(memberIds(x.channel(pres))) === canon(all), left(), `${name}'s roster is ${all}`).catch((e) => {
      throw new Error(`${e.message}: ${memberIds(x.channel(pres))}\n${cl.describe(x)}\nnode logs:\n${c.logs((l) => /WARN|ERROR|share|dead/.test(l))}`);
    });
  }
  const convergedIn = Date.now() - resumedAt;
  t.diagnostic(`converged ${convergedIn} ms after SIGCONT`);
  // the events that say so: u2 removed once, then added again, on the other nodes
  await c.api(3).trigger(pres, 'marker', {});
  for (const x of [m1, m3, m4]) await cl.waitEvent(x, 'marker', pres, 5000);
  for (const x of [m1, m3]) {
    const about = cl.msgs(x, (m) => m.channel === pres && /member_(added|removed)/.test(m.event) && m.data.user_id === 'u2').map((m) => m.event.replace('pusher_internal:', ''));
    assert.deepEqual(about.slice(-2), ['member_removed', 'member_added'], cl.describe(x));
    assert.equal(cl.count(x, 'pusher_internal:member_removed', pres), 1, cl.describe(x));
  }
  assert.match(n2.output(), /other nodes removed this node's connections/);
  // webhooks: the removal and the return, once each
  await hooksSettled(c, [0, 1, 2, 3]);
  recv.assertAllValid(assert);
  assert.deepEqual(
    hookList(recv, pres),
    ['channel_occupied', 'member_added:u1', 'member_added:u2', 'member_added:u2', 'member_added:u3', 'member_added:u4', 'member_removed:u2'],
    recv.describe(),
  );
  assert.deepEqual(hookList(recv, onlyN2), ['channel_occupied', 'channel_occupied', 'channel_vacated'], recv.describe());
});

/** A counter from a node's /metrics (its metrics port is in its log). */
async function metric(node, name) {
  const m = /Herald metrics on ([0-9.]+):(\d+)/.exec(node.output());
  assert.ok(m, `${node.label} printed its metrics address`);
  const text = await (await fetch(`http://127.0.0.1:${m[2]}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `${name} in /metrics`);
  return Number(line.split(' ')[1]);
}

test('CLUSTER-FAULT-6 garbage on the broker\'s channels: no crash, counted in herald_cluster_unreadable_total, delivery goes on', T, async (t) => {
  const c = await setup(t);
  const ch = h.uid('garbage');
  const x2 = await js(c, 1);
  await h.subscribeOk(x2, ch);
  const topic = `${c.prefix}:c:{${app.id}:${ch}}`;
  const junk = ['not herald', '\u0000', 'E', '{"event":"fake","channel":"x","data":"{}"}', Buffer.alloc(4096, 0xff).toString('latin1')];
  for (const j of junk) assert.ok((await cl.redisCommand(redis.port, 'PUBLISH', topic, j)) >= 1, 'n2 subscribes the channel\'s topic');
  await c.api(3).trigger(ch, 'after', { ok: true });
  await cl.waitEvent(x2, 'after', ch, 5000);
  assert.equal(cl.msgs(x2, (m) => m.channel === ch && !m.event.startsWith('pusher') && m.event !== 'after').length, 0, cl.describe(x2));
  assert.equal(await metric(c.nodes[1], 'herald_cluster_unreadable_total'), junk.length);
  assert.ok(c.nodes[1].running(), 'n2 still runs');
});

test('CLUSTER-FAULT-7 a node with 5,000 channels and 300 presence members killed: reaped in small steps, no Redis command of 5 ms or more (SLOWLOG), counts right everywhere', T_FAULT, async (t) => {
  // 300 members: the reaper takes a dead node's members of a channel 100 at a time
  const c = await setup(t, { extraEnv: { HERALD_DEFAULT_APP_MAX_PRESENCE_MEMBERS: '1000' } });
  const tag = h.uid('f7');
  const pres = `presence-${tag}`;
  const N_CH = 5000;
  const N_MEMBERS = 300;
  const stay = await js(c, 0, { member: 'stays' });
  await h.subscribeOk(stay, pres);
  // (a connection holds at most 1,000 channels by default)
  for (let k = 0; k < N_CH / 1000; k++) {
    const many = await c.pool.raw({ server: c.nodes[1] });
    for (let i = k * 1000; i < (k + 1) * 1000; i++) many.subscribe(`${tag}-${i}`);
    await h.waitFor(() => many.events((m) => m.event === 'pusher_internal:subscription_succeeded').length === 1000, 30000, '1,000 subscriptions');
  }
  const members = [];
  for (let i = 0; i < N_MEMBERS; i++) {
    const r = await c.pool.raw({ server: c.nodes[1] });
    await r.subscribeOk(pres, { app, channelData: JSON.stringify({ user_id: `m${i}` }) });
    members.push(r);
  }
  await expectEverywhere([c.nodes[0]], `/channels/${pres}`, { info: 'user_count' }, { occupied: true, user_count: N_MEMBERS + 1 }, { ms: 10000 });
  await expectEverywhere([c.nodes[0]], `/channels/${tag}-${N_CH - 1}`, { info: 'subscription_count' }, { occupied: true, subscription_count: 1 }, { ms: 10000 });
  const slowlogWas = await cl.redisCommand(redis.port, 'CONFIG', 'GET', 'slowlog-log-slower-than');
  t.after(() => cl.redisCommand(redis.port, 'CONFIG', 'SET', 'slowlog-log-slower-than', slowlogWas[1]).catch(() => {}));
  await cl.redisCommand(redis.port, 'CONFIG', 'SET', 'slowlog-log-slower-than', '5000');
  await cl.redisCommand(redis.port, 'SLOWLOG', 'RESET');
  c.nodes[1].stop(); // SIGKILL
  await c.nodes[1].exited;
  const live = [c.nodes[0], c.nodes[2], c.nodes[3]];
  await h.waitFor(() => /removed a dead node's connections from the cluster/.test(c.logs()), 3 * REAP_MAX_MS, 'the reap finished');
  t.diagnostic(c.logs((l) => /removed a dead node/.test(l)).trim());
  const slow = await cl.redisCommand(redis.port, 'SLOWLOG', 'GET', '128');
  const shown = slow.map((e) => `${e[2]} µs: ${e[3].slice(0, 3).join(' ').slice(0, 80)}`);
  assert.deepEqual(shown, [], 'Redis commands of 5 ms or more during the reap');
  await expectEverywhere(live, `/channels/${pres}`, { info: 'user_count,subscription_count' }, { occupied: true, user_count: 1, subscription_count: 1 }, { ms: 2000 });
  await expectEverywhere(live, '/channels', { filter_by_prefix: tag }, { channels: {} }, { ms: 2000 });
  await h.waitFor(() => cl.count(stay, 'pusher_internal:member_removed', pres) === N_MEMBERS, 5000, `${N_MEMBERS} member_removed at the member that stayed`);
  await c.api(3).trigger(pres, 'marker', {});
  await cl.waitEvent(stay, 'marker', pres, 5000);
  assert.equal(cl.count(stay, 'pusher_internal:member_removed', pres), N_MEMBERS, 'each member removed once');
});

// ------------------------------------------------------------ 7. single node

test('CLUSTER-SINGLE-1 default (local) adapter: one node works with no Redis at all', T, async (t) => {
  const deadPort = await cl.freePort(); // nothing listens here: the local adapter must not care
  const s = await startHerald({ HERALD_REDIS_URL: `redis://127.0.0.1:${deadPort}` });
  const pool = new h.Pool(s);
  t.after(() => {
    pool.closeAll();
    s.stop();
  });
  s.label = 'single';
  assert.equal(await cl.readyz(s), 200);
  const ch = h.uid('presence-single');
  const a = await pool.pusher({ presenceDefault: { user_id: 'a' } });
  const b = await pool.pusher({ presenceDefault: { user_id: 'b' } });
  await h.subscribeOk(a, ch);
  const sb = await h.subscribeOk(b, ch);
  assert.deepEqual(memberIds(sb), ['a', 'b']);
  await cl.waitEvent(a, 'pusher_internal:member_added', ch, 3000, (d) => d.user_id === 'b');
  await h.sdk(s).trigger(ch, 'hello', { n: 1 }, { socket_id: b.connection.socket_id });
  await h.sdk(s).trigger(ch, 'marker', {});
  await cl.waitEvent(a, 'hello', ch, 3000);
  await cl.waitEvent(b, 'marker', ch, 3000);
  assert.equal(cl.count(b, 'hello', ch), 0);
  assert.deepEqual(await cl.apiGet(s, `/channels/${ch}`, { info: 'user_count,subscription_count' }), { occupied: true, user_count: 2, subscription_count: 2 });
  assert.doesNotMatch(s.output(), /Redis/i, 'the local adapter never talks to Redis');
});
