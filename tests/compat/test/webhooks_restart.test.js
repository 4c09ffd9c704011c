'use strict';
// Webhooks across a graceful shutdown (hooks §4 delivery guarantee, server
// shutdown): on SIGTERM Herald closes connections with 4200, fires delayed
// webhooks at once, delivers until the shutdown deadline and spools what is
// left; the next start sends the spool first. Events come from pusher-js
// clients; the receiver validates every request with the `pusher` SDK.

const { test } = require('node:test');
const fs = require('node:fs');
const h = require('../lib');
const { WebhookReceiver, startHerald, hookEnv, tmpSpoolPath, ev, untilTime } = require('../lib/webhook_receiver');

const { assert } = h;

const NO_COUNT = ['channel_occupied', 'channel_vacated', 'member_added', 'member_removed', 'client_event', 'cache_miss'];

function canon(e) {
  const o = {};
  for (const k of Object.keys(e).sort()) o[k] = e[k];
  return JSON.stringify(o);
}
const bag = (list) => list.map(canon).sort();

function client(pool, user) {
  return pool.pusher(user === undefined ? {} : { presenceDefault: { user_id: user, user_info: {} } });
}

/** Receiver, spool path and cleanup of everything started through `track`. */
async function fixture(t) {
  const recv = new WebhookReceiver();
  await recv.start();
  const spool = tmpSpoolPath('restart');
  const servers = [];
  const pools = [];
  t.after(async () => {
    for (const p of pools) p.closeAll();
    for (const s of servers) s.stop();
    await recv.close();
    fs.rmSync(spool, { force: true });
  });
  return {
    recv,
    spool,
    async start(env) {
      const s = await startHerald(env);
      servers.push(s);
      const pool = new h.Pool(s);
      pools.push(pool);
      return { server: s, pool };
    },
  };
}

test('HOOK-DELIVERY-1 a restart with pending webhooks loses none: spooled at SIGTERM, sent first at the next start', { timeout: 60000 }, async (t) => {
  const fx = await fixture(t);
  const { recv } = fx;
  recv.setStatus(500); // nothing gets through before the restart
  const env = hookEnv({
    targets: [{ url: recv.url('/hook'), event_types: NO_COUNT }],
    vacateDelayMs: 60000, // removals/vacates can only come from the shutdown flush
    env: {
      HERALD_WEBHOOKS_SPOOL_FILE: fx.spool,
      HERALD_SERVER_SHUTDOWN_TIMEOUT_MS: '2000',
      HERALD_SERVER_DRAIN_WINDOW_MS: '100',
    },
  });
  const { server: s1, pool } = await fx.start(env);
  const a = await client(pool);
  const p = await client(pool, 'u1');
  const q = await client(pool, 'u2');
  const pubs = Array.from({ length: 5 }, (_, i) => h.uid(`pub-rs${i}`));
  const room = h.uid('presence-rs');
  for (const ch of pubs) await h.subscribeOk(a, ch);
  await h.subscribeOk(p, room);
  await h.subscribeOk(q, room);
  const relayed = [h.nextEvent(q.channel(room), 'client-one'), h.nextEvent(q.channel(room), 'client-two')];
  p.channel(room).trigger('client-one', { n: 1 });
  p.channel(room).trigger('client-two', { n: 2 });
  await Promise.all(relayed); // the server accepted both
  q.unsubscribe(room); // member_removed u2: delayed by 60 s, so pending at SIGTERM
  await h.waitFor(async () => {
    const r = await h.sdkCall(h.sdk(s1).get({ path: `/channels/${room}/users` }));
    return r.status === 200 && r.json().users.length === 1;
  }, 3000, 'u2 left on the server');
  const sp = p.connection.socket_id;
  const expected = [
    ...pubs.map((ch) => ({ name: 'channel_occupied', channel: ch })),
    { name: 'channel_occupied', channel: room },
    { name: 'member_added', channel: room, user_id: 'u1' },
    { name: 'member_added', channel: room, user_id: 'u2' },
    { name: 'client_event', channel: room, event: 'client-one', data: '{"n":1}', socket_id: sp, user_id: 'u1' },
    { name: 'client_event', channel: room, event: 'client-two', data: '{"n":2}', socket_id: sp, user_id: 'u1' },
    { name: 'member_removed', channel: room, user_id: 'u2' },
    // from the connections closed by the shutdown
    ...pubs.map((ch) => ({ name: 'channel_vacated', channel: ch })),
    { name: 'member_removed', channel: room, user_id: 'u1' },
    { name: 'channel_vacated', channel: room },
  ];
  await recv.waitRequests(() => true, { count: 1, ms: 3000, what: 'a first (failed) delivery attempt' });

  const tTerm = Date.now();
  const exit = await s1.terminate(15000);
  assert.ok(exit.ms <= 2000 + 500, `exited within the 2,000 ms shutdown deadline + 500 ms, counted from SIGTERM (took ${exit.ms} ms, ${JSON.stringify(exit)})`);
  assert.equal(exit.code, 0, `clean exit: ${JSON.stringify(exit)}\n${s1.output().slice(-3000)}`);
  assert.ok(fs.existsSync(fx.spool), `spool file written at ${fx.spool}\n${s1.output().slice(-3000)}`);
  assert.ok(recv.requests.every((r) => r.status === 500));
  assert.deepEqual(recv.accepted(), []);
  const failedBefore = recv.requests.slice();
  pool.closeAll(); // pusher-js would keep reconnecting to the old port

  recv.setStatus(200);
  const { server: s2, pool: pool2 } = await fx.start(env);
  await recv.until(() => recv.events().length >= expected.length, 15000, `${expected.length} spooled events after the restart`);
  assert.equal(fs.existsSync(fx.spool), false, 'spool file removed once loaded');
  // a new event on the new server arrives after the spooled ones
  const b = await client(pool2);
  const fresh = h.uid('pub-rs-new');
  await h.subscribeOk(b, fresh);
  const freshEv = await recv.waitEvent(ev({ name: 'channel_occupied', channel: fresh }), { ms: 5000 });
  const spooled = recv.events().filter((e) => e.channel !== fresh);
  assert.deepEqual(bag(spooled), bag(expected), `no event lost or duplicated across the restart: ${recv.describe()}`);
  for (const e of spooled) assert.ok(e._req.at <= freshEv._req.at, 'the spool is sent before new webhooks');
  // delayed events were fired at SIGTERM, not after their 60 s delay
  for (const e of spooled.filter((x) => x.name === 'channel_vacated' || x.name === 'member_removed')) {
    const tm = JSON.parse(e._req.text).time_ms;
    assert.ok(tm >= tTerm - 50 && tm <= tTerm + exit.ms, `${canon(e)} created at shutdown (time_ms ${tm - tTerm} ms after SIGTERM)`);
  }
  // retried bodies are resent byte for byte (same time_ms and signature)
  const acceptedBySig = new Map(recv.accepted().map((r) => [r.signature, r]));
  for (const r of failedBefore) {
    const ok = acceptedBySig.get(r.signature);
    assert.ok(ok, `body that failed before the restart was delivered after it: ${r.text}`);
    assert.ok(ok.raw.equals(r.raw));
  }
  assert.equal(acceptedBySig.size, recv.accepted().length, 'no body accepted twice');
  recv.assertAllValid(assert);
  s2.stop();
});

test('HOOK-DELAY-1 SIGTERM closes connections with 4200, fires delayed webhooks at once and delivers them before exiting', { timeout: 30000 }, async (t) => {
  const fx = await fixture(t);
  const { recv } = fx;
  const env = hookEnv({
    targets: [{ url: recv.url('/hook'), event_types: NO_COUNT }],
    vacateDelayMs: 60000,
    env: { HERALD_WEBHOOKS_SPOOL_FILE: fx.spool, HERALD_SERVER_SHUTDOWN_TIMEOUT_MS: '5000', HERALD_SERVER_DRAIN_WINDOW_MS: '100' },
  });
  const { server, pool } = await fx.start(env);
  const a = await client(pool);
  const p = await client(pool, 'u1');
  const pub = h.uid('pub-term');
  const room = h.uid('presence-term');
  await h.subscribeOk(a, pub);
  await h.subscribeOk(p, room);
  const watch = h.uid('pub-watch');
  const watcher = await pool.raw(); // a raw client to see the close code
  await watcher.subscribeOk(watch, {});
  await recv.waitEvent(ev({ name: 'member_added', channel: room }));
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: watch }));
  a.unsubscribe(pub); // its vacate is now pending for 60 s
  await h.waitFor(async () => {
    const r = await h.sdkCall(h.sdk(server).get({ path: `/channels/${pub}` }));
    return r.status === 200 && r.json().occupied === false;
  }, 3000, `${pub} empty on the server`);
  const tTerm = Date.now();
  const exitP = server.terminate(15000);
  const closed = await watcher.waitClose(5000);
  assert.equal(closed.code, 4200, `close code on shutdown: ${JSON.stringify(closed)}`);
  const exit = await exitP;
  const gone = [
    { name: 'channel_vacated', channel: pub },
    { name: 'member_removed', channel: room, user_id: 'u1' },
    { name: 'channel_vacated', channel: room },
    { name: 'channel_vacated', channel: watch },
  ];
  const exitAt = tTerm + exit.ms;
  for (const e of gone) {
    const got = recv.events().find(ev(e));
    assert.ok(got, `${canon(e)} delivered before the process exited: ${recv.describe()}`);
    assert.ok(got._req.at <= exitAt + 5 && got._req.at - tTerm < 5000, `${canon(e)} sent during the shutdown, not after 60 s`);
  }
  assert.deepEqual(
    recv.events().filter((e) => e.name === 'channel_vacated' || e.name === 'member_removed').map(canon).sort(),
    bag(gone),
    'each exactly once',
  );
  assert.equal(exit.code, 0, JSON.stringify(exit));
  assert.equal(fs.existsSync(fx.spool), false, 'nothing left to spool');
  recv.assertAllValid(assert);
});

test('HOOK-DELIVERY-1 spooled webhooks older than the retry window are not sent after a restart', { timeout: 30000 }, async (t) => {
  const WIN = 2;
  const fx = await fixture(t);
  const { recv } = fx;
  recv.setStatus(500);
  const env = hookEnv({
    targets: [{ url: recv.url('/hook'), event_types: ['channel_occupied'] }],
    vacateDelayMs: 60000,
    env: {
      HERALD_WEBHOOKS_SPOOL_FILE: fx.spool,
      HERALD_WEBHOOKS_RETRY_WINDOW_SECS: String(WIN),
      HERALD_SERVER_SHUTDOWN_TIMEOUT_MS: '500',
      HERALD_SERVER_DRAIN_WINDOW_MS: '50',
    },
  });
  const { server: s1, pool } = await fx.start(env);
  const a = await client(pool);
  const old = h.uid('pub-old');
  await h.subscribeOk(a, old);
  const [first] = await recv.waitRequests((r) => r.text.includes(old), { count: 1, ms: 3000 });
  const created = JSON.parse(first.text).time_ms;
  await s1.terminate(10000);
  pool.closeAll();
  assert.ok(fs.existsSync(fx.spool), `spool file written\n${s1.output().slice(-2000)}`);
  // let the retry window of the spooled webhook run out while the server is down
  await untilTime(created + WIN * 1000 + 300);
  recv.setStatus(200);
  const restartAt = Date.now();
  const { pool: pool2 } = await fx.start(env);
  const b = await client(pool2);
  const fresh = h.uid('pub-fresh');
  await h.subscribeOk(b, fresh);
  await recv.waitEvent(ev({ name: 'channel_occupied', channel: fresh }), { ms: 5000 });
  const late = recv.requests.filter((r) => r.text.includes(old) && r.at >= restartAt);
  assert.deepEqual(
    late.map((r) => ({ sentMsAfterCreation: r.at - created, body: r.text })),
    [],
    `no attempt later than ${WIN} s (the retry window) after creation, also after a restart (hooks §4, pusher-http-python rejects stale time_ms)`,
  );
  recv.assertAllValid(assert);
});
