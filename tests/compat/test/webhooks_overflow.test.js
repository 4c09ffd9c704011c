'use strict';
// HOOK-QUEUE-1: README "`webhooks.queue_capacity` … pending webhooks per app target (waiting,
// retrying and being sent); overflow is counted in herald_webhooks_total{outcome="dropped"} and
// logged at most once per 10 s per target, with the count". With the receiver down, a target
// holds at most queue_capacity webhooks; every further one is dropped and counted exactly, the
// log carries the count in one line for the first drop and one more for the rest of the burst
// (not a line per drop), and the ones that fit are delivered once the receiver is back.

const { test } = require('node:test');
const h = require('../lib');
const ops = require('../lib/ops');
const { WebhookReceiver } = require('../lib/webhook_receiver');
const { assert } = h;

/** README: at most one overflow line per target per this interval. */
const REPORT_INTERVAL_MS = 10000;
/** Margin for a loaded machine. */
const MARGIN_MS = 2000;

/** The server's log lines about a full webhook queue (colours removed). */
function overflowLines(server) {
  return server
    .output()
    .replace(/\x1b\[[0-9;]*m/g, '')
    .split('\n')
    .filter((l) => l.includes('webhook queue full'));
}

/** The dropped count a line reports. */
function droppedIn(line) {
  const m = /dropped["=:\s]+(\d+)/.exec(line);
  assert.ok(m, `the line carries the dropped count: ${line}`);
  return Number(m[1]);
}

test('HOOK-QUEUE-1 a full webhook queue drops and counts every overflowing webhook, logs the count at most once per 10 s, and delivers the ones that fit once the receiver answers', { timeout: 60000 }, async (t) => {
  const CAPACITY = 5;
  const EVENTS = 60;
  const recv = new WebhookReceiver();
  await recv.start();
  const url = recv.url('/hook');
  await recv.down(); // connections refused: every webhook that fits keeps retrying
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

  // one channel_occupied webhook per channel, in this order, in one burst
  const c = await pool.raw({ server });
  const channels = [];
  const t0 = Date.now();
  for (let i = 0; i < EVENTS; i++) {
    const ch = h.uid(`hook-q${i}-`);
    await c.subscribeOk(ch);
    channels.push(ch);
  }
  const burstMs = Date.now() - t0;
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
  // The first drop is logged at once; the rest of the burst in one line once the interval is over.
  await h.waitFor(
    () => overflowLines(server).reduce((n, l) => n + droppedIn(l), 0) === dropped,
    REPORT_INTERVAL_MS + MARGIN_MS,
    `log lines accounting for all ${dropped} drops: ${overflowLines(server).join('\n')}`,
  );
  const lines = overflowLines(server);
  if (burstMs < REPORT_INTERVAL_MS) {
    assert.deepEqual(lines.map(droppedIn), [1, dropped - 1], `one line for the first drop, one for the rest: ${lines.join('\n')}`);
  }
  for (const l of lines) {
    assert.match(l, /app[=:"\s]+app-id/, `the log line names the app: ${l}`);
    assert.ok(l.includes(url), `the log line names the target: ${l}`);
  }

  await recv.up();
  const got = await recv.waitEvents(() => true, { count: CAPACITY, ms: 20000, what: `the ${CAPACITY} webhooks that fit` });
  // Each channel has its own order; across channels, retries arrive as their back-off allows.
  assert.deepEqual(
    got.map((e) => `${e.name} ${e.channel}`).sort(),
    channels.slice(0, CAPACITY).map((ch) => `channel_occupied ${ch}`).sort(),
    'the webhooks that fit are the first ones',
  );
  recv.assertAllValid(assert);
  const end = await ops.waitMetrics(
    server,
    (x) => x.get('herald_webhooks_total', { ...app, outcome: 'delivered' }) === CAPACITY,
    5000,
    `${CAPACITY} delivered`,
  );
  assert.equal(end.get('herald_webhooks_total', { ...app, outcome: 'dropped' }), dropped, 'exactly the overflow was dropped');
  assert.equal(overflowLines(server).length, lines.length, 'no further overflow lines');
  // nothing else arrives: the dropped ones are gone for good
  const later = h.uid('hook-q-later-');
  await c.subscribeOk(later);
  await recv.waitEvents((e) => e.channel === later, { count: 1, ms: 5000 });
  const all = recv.events().map((e) => e.channel);
  assert.equal(all.length, CAPACITY + 1, JSON.stringify(all));
  assert.equal(all[CAPACITY], later);
});
