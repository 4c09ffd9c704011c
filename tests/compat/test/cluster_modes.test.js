'use strict';
// Scale-out on the Redis deployments operators run (CLUSTER-MODE-*): three Herald nodes joined
// through Redis over TLS with an ACL user, through a primary behind Sentinels, and through a
// 3-primary Redis Cluster, each started by the test from Debian's packages (lib/engines.js).
// pusher-js clients on every node, the `pusher` SDK for publishes and reads. Faults are real: a
// Sentinel failover, a primary killed with kill -9, a Redis Cluster primary killed.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib');
const cl = require('../lib/cluster');
const engines = require('../lib/engines');

const T = { timeout: 90000 };

/** Three nodes on `engine`, torn down after the test. */
async function nodesOn(t, engine) {
  const c = await cl.startCluster({ redis: engine, count: 3 });
  t.after(() => c.stop());
  return c;
}

function js(c, i, member) {
  const extra = member ? { presenceDefault: { user_id: member, user_info: { name: member } } } : {};
  return c.pool.pusher({ server: c.nodes[i], ...extra });
}

/** An event published on node `via` reaches one subscriber on every node, exactly once. */
async function deliversEverywhere(c, via, label) {
  const ch = h.uid(`m-${label}`);
  const subs = [];
  for (let i = 0; i < c.nodes.length; i++) {
    const x = await js(c, i);
    await h.subscribeOk(x, ch);
    subs.push(x);
  }
  await c.api(via).trigger(ch, 'hello', { via });
  for (const x of subs) await cl.waitEvent(x, 'hello', ch, 5000);
  await c.api(via).trigger(ch, 'marker', {});
  for (const x of subs) {
    await cl.waitEvent(x, 'marker', ch, 5000);
    assert.equal(cl.count(x, 'hello', ch), 1, cl.describe(x));
  }
  return { ch, subs };
}

/** Delivery from `via` works again within `ms`: one probe event every 250 ms until all got one. */
async function deliveryResumes(c, via, subs, ch, ms, what) {
  let k = 0;
  await h.waitFor(
    async () => {
      await c
        .api(via)
        .trigger(ch, 'again', { k: ++k })
        .catch(() => {}); // 503 while the cluster has no primary: retried by the next probe
      await new Promise((r) => setTimeout(r, 250)); // pacing of the probes
      return subs.every((x) => cl.count(x, 'again', ch) > 0);
    },
    ms,
    what,
  );
  for (const x of subs) {
    const ks = cl.msgs(x, (m) => m.event === 'again').map((m) => m.data.k);
    assert.equal(new Set(ks).size, ks.length, `an 'again' event twice: ${ks.join(',')}`);
  }
}

/** Members on every node see each other; the API's roster is the same everywhere. */
async function presenceAcross(c, label) {
  const ch = `presence-${h.uid(label)}`;
  const m = [];
  for (let i = 0; i < c.nodes.length; i++) {
    const x = await js(c, i, `u${i + 1}`);
    await h.subscribeOk(x, ch);
    m.push(x);
  }
  const ids = c.nodes.map((_, i) => ({ id: `u${i + 1}` }));
  await h.waitFor(
    async () => {
      const all = await Promise.all(c.nodes.map((n) => cl.apiGet(n, `/channels/${ch}/users`)));
      return all.every((r) => JSON.stringify([...r.users].sort((a, b) => a.id.localeCompare(b.id))) === JSON.stringify(ids));
    },
    5000,
    `every node's roster of ${ch} lists u1..u${c.nodes.length}`,
  );
  // the first member hears every later one joining, once
  await h.waitFor(() => cl.count(m[0], 'pusher_internal:member_added', ch) === c.nodes.length - 1, 5000, 'member_added on n1');
  await c.api(0).trigger(ch, 'marker', {});
  for (const x of m) await cl.waitEvent(x, 'marker', ch, 5000);
  assert.equal(cl.count(m[0], 'pusher_internal:member_added', ch), c.nodes.length - 1, cl.describe(m[0]));
  return { ch, m };
}

test('CLUSTER-MODE-1 rediss:// with an ACL user and a CA file: delivery across 3 nodes and one presence roster', T, async (t) => {
  const r = await engines.startRedisTls();
  t.after(() => r.stop());
  const c = await nodesOn(t, r);
  await deliversEverywhere(c, 2, 'tls');
  await presenceAcross(c, 'tls');
});

test('CLUSTER-MODE-2 Sentinel: delivery and presence across 3 nodes; after SENTINEL FAILOVER and after kill -9 of the primary, delivery resumes within 10 s without restarting Herald', T, async (t) => {
  const s = await engines.startSentinel();
  t.after(() => s.stop());
  const c = await nodesOn(t, s);
  const { ch, subs } = await deliversEverywhere(c, 1, 'sentinel');
  await presenceAcross(c, 'sentinel');
  await s.failover();
  await deliveryResumes(c, 2, subs, ch, 10000, 'delivery from n3 after SENTINEL FAILOVER');
  const again = cl.count(subs[0], 'again', ch);
  await s.killPrimary();
  await h.waitFor(
    async () => {
      await c
        .api(0)
        .trigger(ch, 'after-kill', {})
        .catch(() => {});
      await new Promise((r) => setTimeout(r, 250)); // pacing of the probes
      return subs.every((x) => cl.count(x, 'after-kill', ch) > 0);
    },
    15000,
    'delivery from n1 after the primary was killed',
  );
  assert.ok(cl.count(subs[0], 'again', ch) >= again);
  // the store followed the primary too: API reads answer the whole cluster
  const info = await cl.apiGet(c.nodes[1], `/channels/${ch}`, { info: 'subscription_count' });
  assert.equal(info.subscription_count, 3, JSON.stringify(info));
});

test('CLUSTER-MODE-3 Redis Cluster (3 primaries, sharded pub/sub): delivery on channels of every primary across 3 nodes, one presence roster, the channel list across primaries; a primary killed, delivery and presence resume within 15 s', T, async (t) => {
  const rc = await engines.startRedisCluster();
  t.after(() => rc.stop());
  const c = await nodesOn(t, rc);
  // channels until every primary serves one (their pub/sub channels hash to its slots)
  const primaries = new Set();
  const runs = [];
  for (let i = 0; i < 40 && primaries.size < 3; i++) {
    const r = await deliversEverywhere(c, i % 3, `cl${i}`);
    const p = await rc.primaryOf(engines.keySlot(`${c.prefix}:c:{app-id:${r.ch}}`));
    if (p && !primaries.has(p.port)) {
      primaries.add(p.port);
      runs.push(r);
    }
  }
  assert.equal(primaries.size, 3, 'channels on all three primaries');
  // the store's keys of a channel share its slot (scripts run there), the app's channel list
  // gathers channels of every primary
  await presenceAcross(c, 'cluster');
  const listed = await cl.apiGet(c.nodes[2], '/channels', { info: 'subscription_count' });
  for (const r of runs) assert.deepEqual(listed.channels[r.ch], { subscription_count: 3 }, JSON.stringify(listed));
  const victimRun = runs[0];
  await rc.killPrimary({ slot: engines.keySlot(`${c.prefix}:c:{app-id:${victimRun.ch}}`) });
  for (const r of runs) {
    await deliveryResumes(c, 1, r.subs, r.ch, 15000, `delivery on ${r.ch} after its primary's failover`);
  }
  await presenceAcross(c, 'cluster-after');
});
