'use strict';
// OPS-RELOAD-*: SIGHUP re-reads the apps of the --config file without dropping
// connections; an invalid file is rejected (logged) and the current apps kept.

const fs = require('node:fs');
const { test } = require('node:test');
const h = require('../lib');
const ops = require('../lib/ops');
const { assert } = h;

const A = { id: 'hup-a', key: 'hup-a-key', secret: 'hup-a-secret' };
const B = { id: 'hup-b', key: 'hup-b-key', secret: 'hup-b-secret' };

/**
 * Connects a pusher-js client of `app`, retrying (a new client per try) until one
 * reaches `connected` or the deadline passes. Failed tries are disconnected.
 */
async function connectWithRetry(pool, server, app, ms = 5000) {
  const deadline = Date.now() + ms;
  const tries = [];
  for (;;) {
    const c = pool.pusherLazy({ server, app });
    const outcome = await h
      .withTimeout(
        new Promise((resolve) => {
          c.connection.bind('state_change', ({ current }) => {
            if (['connected', 'failed', 'unavailable', 'disconnected'].includes(current)) resolve(current);
          });
          c.connection.bind('error', (e) => resolve(`error ${JSON.stringify(e && e.error ? e.error : e)}`));
        }),
        Math.max(500, deadline - Date.now()),
        'pusher-js state',
      )
      .catch((e) => e.message);
    if (outcome === 'connected') return c;
    tries.push(outcome);
    c.disconnect();
    if (Date.now() > deadline) throw new Error(`no pusher-js client of ${app.id} connected within ${ms} ms; tries: ${JSON.stringify(tries.slice(-5))}`);
  }
}

/** Subscribes `client` to a fresh channel and checks that an SDK event of `app` arrives. */
async function roundTrip(server, client, app, tag) {
  const name = h.uid(`ops-hup-${tag}-`);
  const ch = await h.subscribeOk(client, name);
  const got = h.nextEvent(ch, 'ops-hup', 3000);
  const r = await h.sdkCall(() => h.sdk(server, app).trigger(name, 'ops-hup', { tag }));
  assert.equal(r.status, 200, `trigger for ${app.id}: ${r.text}`);
  const ev = await got;
  assert.deepEqual(ev.data, { tag });
}

test('OPS-RELOAD-1 SIGHUP adds an app without dropping connections; an invalid file keeps the old apps', { timeout: 60000 }, async (t) => {
  const configFile = ops.tmpPath('reload', '.toml');
  const server = await ops.startOps({ config: { apps: [A] }, configFile });
  const pool = new h.Pool(server);
  t.after(() => {
    pool.closeAll();
    server.stop();
    fs.rmSync(configFile, { force: true });
  });

  const a = await pool.pusher({ server, app: A });
  const aSocket = a.connection.socket_id;
  let aDropped = null;
  a.connection.bind('state_change', ({ previous, current }) => {
    if (!aDropped && current !== 'connected') aDropped = `${previous} -> ${current}`;
  });
  await roundTrip(server, a, A, 'a0');

  // B is unknown before the reload: a raw connection is refused with 4001
  const before = pool.rawOpen({ server, key: B.key });
  const closed = await before.waitClose(3000);
  assert.equal(closed.code, 4001, `app B before the reload: ${JSON.stringify(closed)}`);

  // rewrite with A and B, SIGHUP, and wait for a pusher-js client of B to connect
  ops.writeConfig(configFile, { apps: [A, B] });
  const mark = server.output().length;
  server.kill('SIGHUP');
  const b = await connectWithRetry(pool, server, B, 5000);
  await server.waitOutput(/configuration reloaded/, 3000, mark);
  await roundTrip(server, b, B, 'b1');

  // A's client stayed connected on the same socket and still gets events
  assert.equal(aDropped, null, `A's connection changed state during the reload: ${aDropped}`);
  assert.equal(a.connection.state, 'connected');
  assert.equal(a.connection.socket_id, aSocket, 'same socket id: the connection was not re-established');
  await roundTrip(server, a, A, 'a1');
  const s = await ops.scrape(server);
  assert.equal(s.get('herald_connections', { app: A.id }), 1, s.lines('herald_connections'));
  assert.equal(s.get('herald_connections_opened_total', { app: A.id }), 1, 'A never reconnected');

  // an invalid file: rejected, logged, the current apps (A and B) kept
  for (const [what, text] of [
    ['unknown key', '[server]\nbogus = 1\n'],
    ['TOML syntax error', '[[apps]\nid = "x"\n'],
    ['app without secret', '[[apps]]\nid = "only-id"\nkey = "only-key"\nsecret = ""\n'],
  ]) {
    fs.writeFileSync(configFile, text);
    const m = server.output().length;
    server.kill('SIGHUP');
    const line = await server.waitOutput(/reload rejected[^\n]*/, 3000, m);
    assert.ok(server.running(), `the server must survive an invalid reload (${what})`);
    const b2 = await pool.pusher({ server, app: B });
    await roundTrip(server, b2, B, `b-after-${what.replace(/\W+/g, '-')}`);
    assert.equal(a.connection.state, 'connected', `A after the rejected reload (${what}): ${line[0]}`);
    if (what === 'unknown key') assert.match(line[0], /bogus/, 'the log names the bad key');
  }
  assert.equal(aDropped, null, `A's connection changed state: ${aDropped}`);
  await roundTrip(server, a, A, 'a2');

  // removing an app by reload: B is refused afterwards (A kept)
  ops.writeConfig(configFile, { apps: [A] });
  const m2 = server.output().length;
  server.kill('SIGHUP');
  await server.waitOutput(/configuration reloaded/, 3000, m2);
  const gone = pool.rawOpen({ server, key: B.key });
  const goneClosed = await gone.waitClose(3000);
  assert.equal(goneClosed.code, 4001, `app B after being removed: ${JSON.stringify(goneClosed)}`);
  const r = await h.sdkCall(() => h.sdk(server, B).trigger('x', 'y', {}));
  assert.ok(r.status >= 400 && r.status < 500, `B's HTTP API after removal: ${r.status} ${r.text}`);
  await roundTrip(server, a, A, 'a3');
});

test('OPS-RELOAD-2 a reload applies changed app settings to open connections (no reconnect)', { timeout: 60000 }, async (t) => {
  const C = { id: 'hup-c', key: 'hup-c-key', secret: 'hup-c-secret', enable_client_messages: true };
  const configFile = ops.tmpPath('reload-settings', '.toml');
  const server = await ops.startOps({ config: { apps: [C] }, configFile });
  const pool = new h.Pool(server);
  t.after(() => {
    pool.closeAll();
    server.stop();
    fs.rmSync(configFile, { force: true });
  });
  const DISABLED = 'To send client events, you must enable this feature in the Settings page of your dashboard.';
  const name = h.uid('private-hup-');
  const sender = await pool.pusher({ server, app: C });
  const receiver = await pool.pusher({ server, app: C });
  const ids = [sender.connection.socket_id, receiver.connection.socket_id];
  const sent = await h.subscribeOk(sender, name);
  const heard = await h.subscribeOk(receiver, name);
  const received = [];
  heard.bind('client-x', (d) => received.push(d.n));
  const refusals = () => sender.__errors.filter((e) => e && e.data && e.data.message === DISABLED).length;

  /** Sends client-x with `n` until `done()` holds (settings are followed within a second). */
  async function sendUntil(n0, done, what) {
    const deadline = Date.now() + 5000;
    for (let n = n0; ; n++) {
      assert.ok(sent.trigger('client-x', { n }), 'pusher-js sent the client event');
      await new Promise((resolve) => setTimeout(resolve, 150));
      if (done()) return n;
      assert.ok(Date.now() < deadline, `${what} within 5 s (received ${JSON.stringify(received)}, errors ${JSON.stringify(sender.__errors)})`);
    }
  }

  await sendUntil(1, () => received.includes(1), 'the first client event relayed');
  ops.writeConfig(configFile, { apps: [{ ...C, enable_client_messages: false }] });
  let mark = server.output().length;
  server.kill('SIGHUP');
  await server.waitOutput(/configuration reloaded/, 3000, mark);
  await sendUntil(100, () => refusals() > 0, 'the open connection refusing client events');
  // From the first refusal on, nothing is relayed.
  const seen = refusals();
  assert.ok(sent.trigger('client-x', { n: 1000 }));
  await h.waitFor(() => refusals() > seen, 3000, 'the next client event refused too');
  const marker = h.nextEvent(heard, 'marker', 3000);
  const r = await h.sdkCall(() => h.sdk(server, C).trigger(name, 'marker', {}));
  assert.equal(r.status, 200, r.text);
  await marker; // published after the refused event: had it been relayed, it would be here by now
  assert.ok(!received.includes(1000), `relayed after the refusal: ${JSON.stringify(received)}`);

  // Enabled again: the same connections relay again.
  ops.writeConfig(configFile, { apps: [C] });
  mark = server.output().length;
  server.kill('SIGHUP');
  await server.waitOutput(/configuration reloaded/, 3000, mark);
  await sendUntil(2000, () => received.some((n) => n >= 2000), 'client events relayed again');
  assert.deepEqual([sender.connection.socket_id, receiver.connection.socket_id], ids, 'the same connections throughout');
  assert.equal(sender.connection.state, 'connected');
  assert.equal(receiver.connection.state, 'connected');
});

test('OPS-RELOAD-3 a reload that disables an app closes its open connections with 4003 at once; other apps stay', { timeout: 60000 }, async (t) => {
  const D = { id: 'hup-d', key: 'hup-d-key', secret: 'hup-d-secret' };
  const DISABLED = { code: 4003, message: 'Application disabled' };
  // A reload is applied to open connections when it is: within this margin of the SIGHUP.
  const BOUND_MS = 500;
  const configFile = ops.tmpPath('reload-disable', '.toml');
  const server = await ops.startOps({ config: { apps: [A, D] }, configFile });
  const pool = new h.Pool(server);
  t.after(() => {
    pool.closeAll();
    server.stop();
    fs.rmSync(configFile, { force: true });
  });
  const a = await pool.pusher({ server, app: A });
  const aSocket = a.connection.socket_id;
  const delays = [];
  for (let round = 1; round <= 3; round++) {
    const raws = await Promise.all([pool.raw({ server, key: D.key }), pool.raw({ server, key: D.key })]);
    const js = await connectWithRetry(pool, server, D, 5000);
    const jsErrors = [];
    js.connection.bind('error', (e) => jsErrors.push(e && e.error ? e.error : e));
    const jsLeft = new Promise((resolve) =>
      js.connection.bind('state_change', ({ current }) => {
        if (current !== 'connected') resolve({ current, at: Date.now() });
      }),
    );

    ops.writeConfig(configFile, { apps: [A, { ...D, enabled: false }] });
    const mark = server.output().length;
    const sentAt = Date.now();
    server.kill('SIGHUP');
    await server.waitOutput(/configuration reloaded/, 3000, mark);
    const problems = [];
    for (const c of raws) {
      const closed = await c.waitClose(3000);
      const last = c.frames[c.frames.length - 1];
      if (!last || !last.json || last.json.event !== 'pusher:error' || JSON.stringify(last.json.data) !== JSON.stringify(DISABLED)) {
        problems.push(`raw: last frame ${last ? last.text : '(none)'}`);
      }
      if (closed.code !== DISABLED.code || closed.reason !== DISABLED.message) problems.push(`raw: close ${JSON.stringify(closed)}`);
      delays.push(closed.at - sentAt);
      if (closed.at - sentAt > BOUND_MS) problems.push(`raw: closed ${closed.at - sentAt} ms after SIGHUP`);
    }
    // pusher-js sees the same 4003 and leaves the connected state
    const left = await h.withTimeout(jsLeft, 3000, 'pusher-js leaving connected');
    if (left.at - sentAt > BOUND_MS) problems.push(`pusher-js: left connected ${left.at - sentAt} ms after SIGHUP`);
    if (!jsErrors.some((e) => e && e.data && e.data.code === DISABLED.code)) problems.push(`pusher-js errors ${JSON.stringify(jsErrors)}`);
    js.disconnect();
    assert.deepEqual(problems, [], `round ${round}: delays ${JSON.stringify(delays)}`);
    assert.equal(a.connection.state, 'connected', "the other app's connection stays");
    assert.equal(a.connection.socket_id, aSocket);

    // enabled again: new connections of D are accepted
    ops.writeConfig(configFile, { apps: [A, D] });
    const m2 = server.output().length;
    server.kill('SIGHUP');
    await server.waitOutput(/configuration reloaded/, 3000, m2);
  }
  await roundTrip(server, a, A, 'after-disable');
  t.diagnostic(`4003 closes after SIGHUP: ${delays.join(', ')} ms`);
});
