'use strict';
// HOOK-QUEUE-1: README "`webhooks.queue_capacity` … pending webhooks per app target; overflow is
// counted and logged". With the receiver down, a target holds at most queue_capacity webhooks
// (the one being retried included); every further one is dropped, counted in
// herald_webhooks_total{outcome="dropped"} and logged, and the ones that fit are delivered, in
// order, once the receiver is back.

const { test } = require('node:test');
const h = require('../lib');
const ops = require('../lib/ops');
const { WebhookReceiver } = require('../lib/webhook_receiver');
const { assert } = h;

/** The server's log lines about a full webhook queue (colours removed). */
function overflowLines(server) {
  return server
    .output()
    .replace(/\x1b\[[0-9;]*m/g, '')
    .split('\n')
    .filter((l) => l.includes('webhook queue full'));
}

test('HOOK-QUEUE-1 a full webhook queue drops, counts and logs each overflowing webhook; the ones that fit arrive once the receiver answers', { timeout: 60000 }, async (t) => {
  const CAPACITY = 5;
  const EVENTS = 12;
  const recv = new WebhookReceiver();
  await recv.start();
  const url = recv.url('/hook');
  await recv.down(); // connections refused: the first webhook is retried, the rest wait behind it
  const server = await ops.startOps({
    env: {
      HERALD_WEBHOOKS_QUEUE_CAPACITY: String(CAPACITY),
      HERALD_DEFAULT_APP_WEBHOOKS: JSON.stringify([{ url, event_types: ['channel_occupied'] }]),
    },
  });
  const pool = new h.Pool(server);
  t.after(async () => {
    pool.closeAll();
    server.stop();
    await recv.close();
  });

  // one channel_occupied webhook per channel, in this order
  const c = await pool.raw({ server });
  const channels = [];
  for (let i = 0; i < EVENTS; i++) {
    const ch = h.uid(`hook-q${i}-`);
    await c.subscribeOk(ch);
    channels.push(ch);
  }
  const dropped = EVENTS - CAPACITY;
  const app = { app: 'app-id' };
  const s = await ops.waitMetrics(
    server,
    (x) => x.get('herald_webhooks_total', { ...app, outcome: 'dropped' }) >= dropped,
    10000,
    `${dropped} dropped webhooks`,
  );
  assert.equal(s.get('herald_webhooks_total', { ...app, outcome: 'dropped' }), dropped, s.lines('herald_webhooks_total'));
  assert.equal(s.get('herald_webhooks_total', { ...app, outcome: 'delivered' }), 0);
  await server.waitOutput(new RegExp(`(?:[\\s\\S]*?webhook queue full){${dropped}}`), 3000);
  const lines = overflowLines(server);
  assert.equal(lines.length, dropped, lines.join('\n'));
  for (const l of lines) {
    assert.match(l, /app[=:"\s]+app-id/, `the log line names the app: ${l}`);
    assert.ok(l.includes(url), `the log line names the target: ${l}`);
  }

  await recv.up();
  const got = await recv.waitEvents(() => true, { count: CAPACITY, ms: 20000, what: `the ${CAPACITY} webhooks that fit` });
  assert.deepEqual(
    got.map((e) => [e.name, e.channel]),
    channels.slice(0, CAPACITY).map((ch) => ['channel_occupied', ch]),
    'the webhooks that fit are the first ones, delivered in order',
  );
  recv.assertAllValid(assert);
  const end = await ops.waitMetrics(
    server,
    (x) => x.get('herald_webhooks_total', { ...app, outcome: 'delivered' }) === CAPACITY,
    5000,
    `${CAPACITY} delivered`,
  );
  assert.equal(end.get('herald_webhooks_total', { ...app, outcome: 'dropped' }), dropped, 'exactly the overflow was dropped');
  assert.equal(overflowLines(server).length, dropped, 'one log line per dropped webhook');
  // nothing else arrives: the dropped ones are gone for good
  const later = h.uid('hook-q-later-');
  await c.subscribeOk(later);
  await recv.waitEvents((e) => e.channel === later, { count: 1, ms: 5000 });
  assert.deepEqual(
    recv.events().map((e) => e.channel),
    [...channels.slice(0, CAPACITY), later],
  );
});
