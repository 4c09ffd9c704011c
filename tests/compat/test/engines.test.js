'use strict';
// ENGINES-1…3: lib/engines.js starts what it says, and its fault helpers do what they say,
// so that the scale-out tests built on it fail for Herald's faults only.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const { startRedisTls, startSentinel, startRedisCluster, keySlot, redisCli } = require('../lib/engines');

test('ENGINES-1 startRedisTls: TLS only, the ACL user logs in, others do not', async () => {
  const r = await startRedisTls({ aclUser: 'herald', password: 'tls-pw-9' });
  try {
    assert.equal(r.url, `rediss://herald:tls-pw-9@127.0.0.1:${r.port}`);
    assert.deepEqual(Object.keys(r.env).sort(), ['HERALD_REDIS_CA_FILE', 'HERALD_REDIS_URL']);
    assert.equal(await r.cli('ACL', 'WHOAMI'), 'herald');
    await assert.rejects(redisCli(r.port, { caFile: r.caFile }, 'PING'), /NOAUTH|WRONGPASS|ERR/);
    await assert.rejects(redisCli(r.port, { user: 'herald', password: 'tls-pw-9' }, 'PING'));
  } finally {
    r.stop();
  }
});

test('ENGINES-2 startSentinel: failover() and killPrimary() each move the primary', async () => {
  // Two sets at once: after a failover the old primary takes seconds to rejoin as a replica.
  const [a, b] = await Promise.all([startSentinel(), startSentinel()]);
  try {
    assert.equal(a.urls.length, 3);
    assert.equal(a.env.HERALD_REDIS_MODE, 'sentinel');
    assert.equal(a.env.HERALD_REDIS_SENTINEL_MASTER, a.master);
    const [firstA, firstB] = await Promise.all([a.primaryPort(), b.primaryPort()]);
    const [nextA, nextB] = await Promise.all([a.failover(), b.killPrimary()]);
    assert.notEqual(nextA, firstA);
    assert.notEqual(nextB, firstB);
    assert.equal(await a.primaryPort(), nextA);
    assert.equal(await b.nodes.find((n) => n.port === nextB).cli('ROLE').then((r) => r.split('\n')[0]), 'master');
  } finally {
    a.stop();
    b.stop();
  }
});

test('ENGINES-3 startRedisCluster: six nodes, and killPrimary() hands a slot to the replica', async () => {
  assert.equal(keySlot('foo'), 12182);
  assert.equal(keySlot('{user1000}.following'), keySlot('user1000'));
  const c = await startRedisCluster();
  try {
    assert.equal(c.urls.length, 6);
    assert.equal(c.env.HERALD_REDIS_MODE, 'cluster');
    const slot = keySlot('engines-test');
    const before = await c.primaryOf(slot);
    assert.equal(await before.cli('CLUSTER', 'KEYSLOT', 'engines-test'), String(slot));
    const { killed, promoted } = await c.killPrimary({ slot });
    assert.equal(killed, before.port);
    assert.equal((await c.primaryOf(slot)).port, promoted);
  } finally {
    c.stop();
  }
});
