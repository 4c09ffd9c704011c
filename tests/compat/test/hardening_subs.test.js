'use strict';
// HARD-3, HARD-9: anonymous clients and channel state. A client churning subscriptions must not
// make every other subscriber of the channel receive a count frame per change, and anonymous
// clients together cannot make the server hold more subscriptions than server.max_subscriptions
// (README "Security"). The tests check the servers' open descriptors and RSS before and after.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const WebSocket = require('ws');
const Pusher = require('pusher');
const ops = require('../lib/ops');
const cl = require('../lib/cluster');
const { withTimeout, waitFor } = require('../lib/wait');

/** A raw WebSocket that records every frame with its arrival time, and the close. */
function wsClient(base) {
  const ws = new WebSocket(`${base}/app/app-key?protocol=7`);
  const c = { ws, frames: [], closed: null };
  c.established = new Promise((resolve) => {
    ws.on('message', (d) => {
      const f = JSON.parse(String(d));
      f.at = Date.now();
      c.frames.push(f);
      if (f.event === 'pusher:connection_established') resolve(f);
    });
  });
  c.closedP = new Promise((resolve) =>
    ws.on('close', (code) => {
      c.closed = { code };
      resolve(c.closed);
    }),
  );
  ws.on('error', () => {});
  c.send = (event, data) => ws.send(JSON.stringify({ event, data }));
  return c;
}

const isCount = (f) => f.event === 'pusher_internal:subscription_count';
const countOf = (f) => JSON.parse(f.data).subscription_count;

function rssKb(pid) {
  return Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
}

function api(server) {
  return new Pusher({ appId: 'app-id', key: 'app-key', secret: 'app-secret', host: '127.0.0.1', port: String(server.port), useTLS: false });
}

/**
 * 99 listeners (on `listenAt`) and one client (on `attackAt`) sending 10,000 subscribe and
 * unsubscribe frames (600 KB) to their channel; `truth()` reads the channel's count from the API.
 * Asserts the churner got 4301 past its rate and each listener a few count frames, the last one
 * true, and that a change after the flood reaches them promptly.
 */
async function churnOnListeners({ listenAt, attackAt, truth: readTruth, clients }) {
  const ch = 'hard9-room';
  const listeners = [];
  for (let i = 0; i < 99; i++) listeners.push(wsClient(listenAt));
  clients.push(...listeners);
  await withTimeout(Promise.all(listeners.map((c) => c.established)), 20000, '99 listeners connected');
  for (const c of listeners) c.send('pusher:subscribe', { channel: ch });
  const last = (c) => c.frames.filter(isCount).map(countOf).at(-1);
  await waitFor(() => listeners.every((c) => last(c) === 99), 20000, 'every listener told 99 subscribers');
  const before = listeners.map((c) => c.frames.length);

  // As fast as the socket takes them, then a ping: its pong says the server read them all.
  const attacker = wsClient(attackAt);
  clients.push(attacker);
  await withTimeout(attacker.established, 5000, 'the attacker connected');
  const sub = JSON.stringify({ event: 'pusher:subscribe', data: { channel: ch } });
  const unsub = JSON.stringify({ event: 'pusher:unsubscribe', data: { channel: ch } });
  const t0 = Date.now();
  for (let i = 0; i < 5000; i++) {
    attacker.ws.send(sub);
    attacker.ws.send(unsub);
  }
  attacker.send('pusher:ping', {});
  await waitFor(() => attacker.frames.some((f) => f.event === 'pusher:pong'), 30000, 'the pong after the flood');
  const limited = attacker.frames.filter((f) => f.event === 'pusher:error' && f.data.code === 4301);
  const accepted = attacker.frames.filter((f) => f.event === 'pusher_internal:subscription_succeeded').length;
  assert.ok(limited.length > 0, 'the churner was rate limited');
  assert.match(limited[0].data.message, /^Subscription to hard9-room rejected due to rate limit/);
  assert.ok(accepted >= 500 && accepted < 5000, `${accepted} subscribes accepted`);
  assert.equal(attacker.closed, null, '4301 does not close');

  // Every listener ends on the true count. The pong says the server read the flood, not that it
  // is done with it (through Redis the counts are still being written), so the API's count is
  // read until it has held for a second, and the listeners must agree with that settled value.
  let truth;
  let heldSince = Date.now();
  await waitFor(async () => {
    const now = await readTruth(ch);
    if (now !== truth) [truth, heldSince] = [now, Date.now()];
    return (truth === 99 || truth === 100) && Date.now() - heldSince >= 1000;
  }, 15000, 'the true count (99 or 100) from the API, unchanged for a second');
  // The flood's changes make at least one frame (at once, or held to its window's end).
  const since = (c, i) => c.frames.slice(before[i]).filter(isCount);
  await waitFor(
    () => listeners.every((c, i) => since(c, i).length > 0 && last(c) === truth),
    5000,
    `every listener's last count to be ${truth}`,
  );
  // A change after the flood (a listener leaves, so the channel stays under the 5 s throttle of
  // channels above 100): every other listener hears it, as its last count.
  listeners[0].send('pusher:unsubscribe', { channel: ch });
  await waitFor(() => listeners.slice(1).every((c) => last(c) === truth - 1), 5000, `every listener's last count to be ${truth - 1}`);

  // Frames from the flood's start to the last one received (the change after it included): at
  // most one per 250 ms window, plus the first (sent at once), whatever the machine's speed.
  const seen = listeners.slice(1).map((c, i) => since(c, i + 1));
  const lastAt = Math.max(...seen.flat().map((f) => f.at));
  const bound = 2 + Math.floor((lastAt - t0) / 250);
  const most = Math.max(...seen.map((x) => x.length));
  const total = seen.reduce((n, x) => n + x.length, 0);
  assert.ok(
    most <= bound && most <= 40,
    `a listener got ${most} count frames in ${lastAt - t0} ms (bound ${bound}); ${total} over 98 listeners for ${accepted * 2} changes`,
  );
}

test('HARD-9 one client churning subscribe/unsubscribe on a channel of 99 listeners: each listener gets a few count frames, the last one true; the churner gets 4301 past its rate', { timeout: 90000 }, async () => {
  const server = await ops.startOps({}); // the default app sends subscription counts
  const clients = [];
  try {
    const before = ops.resources(server.pid);
    await churnOnListeners({
      listenAt: server.wsBase,
      attackAt: server.wsBase,
      truth: async (ch) => (await (await api(server).get({ path: `/channels/${ch}`, params: { info: 'subscription_count' } })).json()).subscription_count,
      clients,
    });
    for (const c of clients) c.ws.terminate();
    http.globalAgent.destroy(); // the SDK's kept-alive connection
    // The churn leaves nothing but the listeners' subscriptions: the noise bound (megabytes kept
    // would show above it, a few hundred KB would not).
    await ops.resourcesBack(server.pid, before, { rssGrowthKb: ops.RSS_NOISE_KB, what: '10,000 subscribe/unsubscribe frames among 99 listeners' });
  } finally {
    for (const c of clients) c.ws.terminate();
    server.stop();
  }
});

test('HARD-9 the same through Redis: listeners on one node, the churner on another', { timeout: 120000 }, async () => {
  const redis = await cl.startRedis();
  const clients = [];
  let c;
  try {
    c = await cl.startCluster({ redis, count: 2 });
    const before = c.nodes.map((n) => ops.resources(n.proc.pid));
    await churnOnListeners({
      listenAt: c.nodes[1].wsBase,
      attackAt: c.nodes[0].wsBase,
      truth: async (ch) => (await cl.apiGet(c.nodes[1], `/channels/${ch}`, { info: 'subscription_count' })).subscription_count,
      clients,
    });
    for (const x of clients) x.ws.terminate();
    http.globalAgent.destroy(); // the SDK's kept-alive connection
    // Both nodes, as above (their Redis connections are in the baseline).
    for (const [i, n] of c.nodes.entries()) {
      await ops.resourcesBack(n.proc.pid, before[i], { rssGrowthKb: ops.RSS_NOISE_KB, what: `the churn through Redis (node ${i + 1})` });
    }
  } finally {
    for (const x of clients) x.ws.terminate();
    if (c) c.stop();
    redis.stop();
  }
});

test('HARD-3 past server.max_subscriptions subscribes get pusher:error 4300 and the connection stays; RSS and GET /channels stay bounded; counted', { timeout: 90000 }, async () => {
  const CAP = 2000;
  const server = await ops.startOps({ env: { HERALD_SERVER_MAX_SUBSCRIPTIONS: String(CAP) } });
  const clients = [];
  try {
    await ops.scrape(server); // the scrape's kept-alive connection is part of the baseline
    const before = ops.resources(server.pid);
    // 200 connections x 200 channels with 197-character names: 40,000 asked, 2,000 held.
    const CONNS = 200;
    const PER = 200;
    for (let i = 0; i < CONNS; i++) clients.push(wsClient(server.wsBase));
    await withTimeout(Promise.all(clients.map((c) => c.established)), 20000, 'connections');
    const rss0 = rssKb(server.proc.pid);
    const name = (c, j) => {
      const head = `hard3-${c}-${j}-`;
      return head + 'x'.repeat(197 - head.length);
    };
    const answers = (c) => c.frames.filter((f) => f.event === 'pusher_internal:subscription_succeeded' || f.event === 'pusher:error');
    clients.forEach((c, i) => {
      for (let j = 0; j < PER; j++) c.send('pusher:subscribe', { channel: name(i, j) });
    });
    await waitFor(() => clients.every((c) => answers(c).length === PER), 60000, 'an answer to every subscribe');
    const all = clients.flatMap(answers);
    const ok = all.filter((f) => f.event === 'pusher_internal:subscription_succeeded');
    const refused = all.filter((f) => f.event === 'pusher:error');
    assert.equal(ok.length, CAP);
    assert.equal(refused.length, CONNS * PER - CAP);
    for (const f of refused) {
      assert.equal(f.data.code, 4300);
      assert.match(f.data.message, /^Cannot subscribe to hard3-\d+-\d+-x+: the server holds its limit of 2000 subscriptions$/);
    }
    assert.ok(clients.every((c) => c.closed === null), 'no connection closed');

    // What the server holds and lists is what the cap allows.
    const list = await api(server).get({ path: '/channels' });
    const body = await list.text();
    assert.equal(Object.keys(JSON.parse(body).channels).length, CAP);
    assert.ok(body.length < CAP * 220, `GET /channels answered ${body.length} bytes`);
    const grown = rssKb(server.proc.pid) - rss0;
    // Uncapped, the 40,000 subscriptions would hold ~30 MiB (README: ~800 B each).
    assert.ok(grown < 8192, `RSS grew by ${grown} kB`);
    const m = await ops.scrape(server);
    assert.equal(m.get('herald_limit_rejections_total', { app: 'app-id', limit: 'max_subscriptions' }), CONNS * PER - CAP);

    // A place given back is a place taken again.
    const holder = clients.find((c) => c.frames.some((f) => f.event === 'pusher_internal:subscription_succeeded'));
    const held = holder.frames.find((f) => f.event === 'pusher_internal:subscription_succeeded').channel;
    holder.send('pusher:unsubscribe', { channel: held });
    const late = wsClient(server.wsBase);
    clients.push(late);
    await withTimeout(late.established, 5000, 'one more connection');
    await waitFor(
      async () => {
        const n = late.frames.length;
        late.send('pusher:subscribe', { channel: 'hard3-late' });
        await waitFor(() => late.frames.length > n, 3000, 'an answer');
        return late.frames.slice(n).some((f) => f.event === 'pusher_internal:subscription_succeeded');
      },
      5000,
      'a subscribe after one was given back',
    );
    for (const c of clients) c.ws.terminate();
    http.globalAgent.destroy(); // the SDK's kept-alive connection
    // The same bound as while they were held (8 MiB: uncapped, ~30 MiB), now that all is gone.
    await ops.resourcesBack(server.pid, before, { rssGrowthKb: 8192, what: '40,000 subscribes from 200 connections, 2,000 held' });
  } finally {
    for (const c of clients) c.ws.terminate();
    server.stop();
  }
});
