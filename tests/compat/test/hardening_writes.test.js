'use strict';
// HARD-2: a connection whose outgoing data is blocked. Every write has a deadline (the write
// timeout, which is `server.pong_timeout`): a write the client takes no byte of for that long
// closes the connection as a slow consumer (pusher:error 4100 and close 4100, counted in
// herald_slow_consumer_disconnects_total); any close requested meanwhile (drain 4200, pong
// timeout 4201, app disabled 4003) ends a blocked write after the closing flush (2 s); answers to
// WebSocket pings wait in the ordered outbox, one per connection (README "Security"). The tests
// whose server outlives the abuse check its open descriptors and RSS before and after (the
// SIGTERM one ends the server).

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const WebSocket = require('ws');
const Pusher = require('pusher');
const ops = require('../lib/ops');
const { withTimeout, waitFor, pace } = require('../lib/wait');

const SLOW = { code: 4100, message: 'Over capacity: client is not reading its messages fast enough' };
const CLOSE_FLUSH_MS = 2000; // how long a closing connection may take to write its last frames
const PAD = 'x'.repeat(10000);
/**
 * What one connection's outbox may hold while it is open (README "Slow consumers": 4 MiB). The
 * allocator may keep those pages once the connection is gone, so a test that filled an outbox
 * allows that much RSS on top of ops.RSS_NOISE_KB.
 */
const OUTBOX_KB = 4096;

/** `count` masked WebSocket ping frames with 125-byte payloads (the largest a ping may carry). */
function pingFrames(count) {
  const mask = [0x12, 0x34, 0x56, 0x78];
  const one = Buffer.alloc(6 + 125);
  one[0] = 0x89; // FIN + ping
  one[1] = 0x80 | 125; // masked, 125 bytes
  Buffer.from(mask).copy(one, 2);
  for (let i = 0; i < 125; i++) one[6 + i] = (0x61 + (i % 26)) ^ mask[i % 4];
  return Buffer.concat(Array.from({ length: count }, () => one));
}
const PINGS = pingFrames(500); // 65.5 KB per write

/**
 * The SDK's connections: kept alive while a test publishes, closed (AGENT.destroy()) before its
 * server's descriptors are compared with their baseline.
 */
const AGENT = new http.Agent({ keepAlive: true });

function sdk(server) {
  return new Pusher({ appId: 'app-id', key: 'app-key', secret: 'app-secret', host: '127.0.0.1', port: String(server.port), useTLS: false, agent: AGENT });
}

/** A raw subscriber recording frames, `ev` events (by number), pongs, errors and the close. */
function subscriber(server, channel) {
  const ws = new WebSocket(`${server.wsBase}/app/app-key?protocol=7`);
  const state = { ws, frames: [], events: [], pongs: 0, errors: [], closed: null };
  const subscribed = new Promise((resolve, reject) => {
    ws.on('message', (data) => {
      const f = JSON.parse(String(data));
      state.frames.push(f);
      if (f.event === 'pusher:connection_established') {
        if (channel) ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel } }));
        else resolve();
      } else if (f.event === 'pusher_internal:subscription_succeeded') {
        resolve();
      } else if (f.event === 'ev') {
        state.events.push(Number(f.data.slice(0, f.data.indexOf(':'))));
      }
    });
    ws.on('pong', () => state.pongs++);
    ws.on('error', (e) => {
      // A malformed frame (a pong or close written into the middle of a frame) lands here.
      state.errors.push(String(e && e.message));
      reject(e);
    });
  });
  state.closedP = new Promise((resolve) =>
    ws.on('close', (code, reason) => {
      state.closed = { code, reason: String(reason), at: Date.now() };
      resolve(state.closed);
    }),
  );
  state.ready = withTimeout(subscribed, 5000, `connection${channel ? ` subscribed to ${channel}` : ''}`);
  return state;
}

/** Publishes `count` `ev` events numbered from `from`, ten per request. */
async function publish(api, channel, from, count) {
  for (let i = from; i < from + count; i += 10) {
    const batch = [];
    for (let j = i; j < Math.min(i + 10, from + count); j++) batch.push({ channel, name: 'ev', data: `${j}:${PAD}` });
    const res = await api.triggerBatch(batch);
    assert.equal(res.status, 200);
  }
}

/**
 * The kernel's queues of the loopback connection from client port `clientPort` to the server:
 * {serverTx: bytes the server wrote that the client's kernel has not acknowledged, clientRx:
 * bytes the client's kernel holds unread}.
 */
function tcpQueues(serverPort, clientPort) {
  const q = { serverTx: null, clientRx: null };
  for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 5) continue;
    const local = parseInt(f[1].split(':')[1], 16);
    const remote = parseInt(f[2].split(':')[1], 16);
    const [tx, rx] = f[4].split(':').map((x) => parseInt(x, 16));
    if (local === serverPort && remote === clientPort) q.serverTx = tx;
    if (local === clientPort && remote === serverPort) q.clientRx = rx;
  }
  return q;
}

/**
 * Stops `c` reading, then publishes 10 KB events until the server's write to it is blocked: the
 * kernel holds no more (the server's send queue did not grow over 3 requests) while the server
 * itself holds at least 500 KB it could not write. Publishing stops there, so what is queued
 * stays far below the 4 MiB outbox limit and only the write deadline or a close request can
 * end that write. Returns {published, inKernel}.
 */
async function stallWrites(server, c, channel) {
  const api = sdk(server);
  const port = c.ws._socket.localPort;
  c.ws._socket.pause();
  let published = 0;
  let lastTx = -1;
  let still = 0;
  while (published < 1500) {
    await publish(api, channel, published, 10);
    published += 10;
    const q = tcpQueues(server.port, port);
    const inKernel = q.serverTx + q.clientRx;
    if (q.serverTx === lastTx && published * PAD.length - inKernel >= 500000) {
      if (++still >= 3) return { published, inKernel };
    } else {
      [lastTx, still] = [q.serverTx, 0];
    }
  }
  throw new Error(`the server's writes to a client that reads nothing did not block within ${published} events (15 MB)`);
}

test('HARD-2 clients that ping and never read are closed within the write timeout once their pongs back up (4100, counted); descriptors back to baseline', { timeout: 150000 }, async (t) => {
  const WRITE_TIMEOUT_S = 2;
  const server = await ops.startOps({ env: { HERALD_SERVER_PONG_TIMEOUT: String(WRITE_TIMEOUT_S) } });
  t.after(() => server.stop());
  await ops.scrape(server); // the scrape's kept-alive connection is part of the baseline
  const before = ops.resources(server.pid);
  const N = 40;
  const clients = Array.from({ length: N }, () => subscriber(server, null));
  await Promise.all(clients.map((c) => c.ready));
  assert.ok(ops.resources(server.pid).fds >= before.fds + N, `${N} connections hold descriptors`);

  // Each client stops reading and sends pings as fast as the server reads them. The server
  // answers them, its pongs fill the socket buffers, its write blocks, it stops reading, and the
  // client's own writes stop draining. The server then has the write timeout to see no progress
  // and the closing flush to try its close frames: after the client's last drained write (which
  // comes after the server's write blocked) the connection must be gone within both.
  const deadline = Date.now() + 90000; // the test ends by itself if the server never closes
  const flood = (c) =>
    new Promise((resolve) => {
      const sock = c.ws._socket;
      sock.pause();
      const out = { lastDrain: Date.now(), closedAt: null, bytes: 0 };
      let timer = null;
      const done = () => {
        clearTimeout(timer);
        resolve(out);
      };
      sock.on('error', () => {}); // the server resets a connection it drops with unread input
      sock.on('close', () => {
        out.closedAt = Date.now();
        done();
      });
      timer = setTimeout(done, deadline - Date.now());
      const write = () => {
        while (!sock.destroyed && Date.now() < deadline) {
          out.bytes += PINGS.length;
          if (!sock.write(PINGS)) return; // wait for 'drain'
          out.lastDrain = Date.now();
        }
      };
      sock.on('drain', () => {
        out.lastDrain = Date.now();
        write();
      });
      write();
    });
  const t0 = Date.now();
  const results = await Promise.all(clients.map(flood));
  const open = results.filter((r) => r.closedAt === null).length;
  const late = results.filter((r) => r.closedAt !== null).map((r) => r.closedAt - r.lastDrain).sort((a, b) => a - b);
  const mb = results.reduce((a, r) => a + r.bytes, 0) / 1e6;
  const detail = `${mb.toFixed(0)} MB of pings sent in ${Date.now() - t0} ms; ${late.length} closed, ${late[0]}..${late[late.length - 1]} ms after their last drained write`;
  t.diagnostic(detail);
  assert.equal(open, 0, `${open} of ${N} pinging clients still open after 90 s (${detail})`);
  const bound = WRITE_TIMEOUT_S * 1000 + CLOSE_FLUSH_MS + 1000;
  assert.ok(late[late.length - 1] <= bound, `every client closed within the write timeout and the closing flush (${bound} ms): ${detail}`);

  const s = await ops.waitMetrics(server, (x) => x.get('herald_connections', { app: 'app-id' }) === 0, 5000, 'no connection left');
  assert.equal(s.get('herald_slow_consumer_disconnects_total', { app: 'app-id' }), N, 'each closed as a slow consumer');
  // No outbox filled (pongs wait one per connection): the noise bound. A pong kept per ping
  // read would be gigabytes.
  await ops.resourcesBack(server.pid, before, { rssGrowthKb: ops.RSS_NOISE_KB, ms: 5000, what: `${N} clients flooding pings` });
  assert.ok(server.running());
});

test('HARD-2 a client that stops reading after a few MB of events is closed with 4100 within the write timeout, its events whole and in order', { timeout: 90000 }, async (t) => {
  const WRITE_TIMEOUT_S = 2;
  const server = await ops.startOps({ env: { HERALD_SERVER_PONG_TIMEOUT: String(WRITE_TIMEOUT_S) } });
  t.after(() => server.stop());
  await ops.scrape(server); // the scrape's kept-alive connection is part of the baseline
  const before = ops.resources(server.pid);
  const channel = `hard2-${process.pid}-${Date.now()}`;
  const c = subscriber(server, channel);
  await c.ready;
  const api = sdk(server);
  // A few MB first, read as they come (the client's socket buffers grow as a reader's do).
  const t0 = Date.now();
  await publish(api, channel, 0, 300);
  await waitFor(() => c.events.length === 300, 10000, 'the first 300 events read');
  c.events.length = 0;
  const t1 = Date.now();
  const { published, inKernel } = await stallWrites(server, c, channel);
  t.diagnostic(`blocked after ${published} events, ${inKernel} bytes in the kernel (${t1 - t0} ms reading, ${Date.now() - t1} ms to block)`);
  const stoppedAt = Date.now();

  // The server decides when the write timeout passes with no byte taken; like a client that is
  // merely slow, this one reads again as soon as the decision shows, and has the closing flush to
  // take the frames the socket holds and the 4100 frames after them.
  let decidedAt = null;
  await withTimeout(
    (async () => {
      for (;;) {
        const s = await ops.scrape(server);
        if (s.get('herald_slow_consumer_disconnects_total', { app: 'app-id' }) === 1) {
          decidedAt = Date.now();
          c.ws._socket.resume();
          return;
        }
        await pace(10);
      }
    })(),
    15000,
    `a slow-consumer close of a blocked write (${published} events published, the last ${Date.now() - stoppedAt} ms ago)`,
  );
  // Slack for a loaded machine (scrapes every 10 ms); without a write deadline it never closes.
  assert.ok(decidedAt - stoppedAt <= WRITE_TIMEOUT_S * 1000 + 3000, `closed ${decidedAt - stoppedAt} ms after the last publish (write timeout ${WRITE_TIMEOUT_S} s)`);

  const closed = await withTimeout(c.closedP, 10000, 'the blocked client closed');
  const last = c.frames[c.frames.length - 1];
  assert.deepEqual(
    { errors: c.errors, last, closed: { code: closed.code, reason: closed.reason } },
    { errors: [], last: { event: 'pusher:error', data: SLOW }, closed: { code: SLOW.code, reason: SLOW.message } },
    `the end of the blocked connection (after ${c.events.length} of ${published} events)`,
  );
  assert.deepEqual(c.events, Array.from({ length: c.events.length }, (_, i) => i), 'events in order, none cut');
  assert.ok(c.events.length < published, `${c.events.length} of ${published} delivered before the close`);
  AGENT.destroy();
  // Its outbox held what the blocked write could not send; the events published (5 MB or more,
  // the 3 MB read first included) kept after the close would show above the bound.
  await ops.resourcesBack(server.pid, before, { rssGrowthKb: ops.RSS_NOISE_KB + OUTBOX_KB, what: `a blocked connection closed (${published} events of 10 KB published)` });
});

test('HARD-2 SIGTERM with a client whose write is blocked exits well before the shutdown deadline', { timeout: 90000 }, async (t) => {
  const SHUTDOWN_MS = 15000;
  // The default write timeout (30 s) is longer than the shutdown: only the drain's 4200 can end
  // the write.
  const server = await ops.startOps({ env: { HERALD_SERVER_DRAIN_WINDOW_MS: '500', HERALD_SERVER_SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_MS) } });
  t.after(() => server.stop());
  const channel = `hard2-term-${process.pid}-${Date.now()}`;
  const c = subscriber(server, channel);
  await c.ready;
  const api = sdk(server);
  await publish(api, channel, 0, 300);
  await waitFor(() => c.events.length === 300, 10000, 'the first 300 events read');
  const { published, inKernel } = await stallWrites(server, c, channel);
  t.diagnostic(`blocked after ${published} events, ${inKernel} bytes in the kernel`);

  const r = await server.terminate(SHUTDOWN_MS + 10000);
  assert.equal(r.code, 0, `exit after SIGTERM: ${JSON.stringify(r)}`);
  // The drain window, the closing flush for the blocked write, the closing flush for the
  // close frames, and three seconds for the rest of the shutdown on a loaded machine: still
  // half the deadline, which a blocked write without the drain's close would run into.
  const bound = 500 + 2 * CLOSE_FLUSH_MS + 3000;
  assert.ok(r.ms <= bound, `exit ${r.ms} ms after SIGTERM (at most ${bound} expected, deadline ${SHUTDOWN_MS})`);
  assert.ok(!/shutdown deadline reached/.test(server.output()), 'every connection finished closing');
});

test('HARD-2 a ping flood does not starve or break its own connection: all 400 events published meanwhile arrive, whole and in order', { timeout: 60000 }, async (t) => {
  const server = await ops.startOps({});
  t.after(() => server.stop());
  const before = ops.resources(server.pid);
  const channel = `hard2-flood-${process.pid}-${Date.now()}`;
  const c = subscriber(server, channel);
  await c.ready;
  const sock = c.ws._socket;
  // Pings as fast as the server takes them, from a client that reads in short turns (5 ms in
  // every 50), as one on a slow link would: the server's socket to it is often full.
  let flooding = true;
  let pingBytes = 0;
  const flood = (async () => {
    while (flooding && !sock.destroyed) {
      pingBytes += PINGS.length;
      if (!sock.write(PINGS)) await Promise.race([new Promise((r) => sock.once('drain', r)), c.closedP, pace(50)]);
    }
  })();
  const turns = (async () => {
    while (flooding && !sock.destroyed) {
      sock.pause();
      await pace(45);
      sock.resume();
      await pace(5);
    }
  })();
  try {
    await waitFor(() => c.pongs > 0, 5000, 'a pong during the flood');
    const api = sdk(server);
    const t0 = Date.now();
    // Spread over many reading turns, so that events meet the socket in every state.
    for (let i = 0; i < 400; i += 10) {
      await publish(api, channel, i, 10);
      await pace(40);
    }
    await waitFor(() => c.events.length >= 400 || c.closed || c.errors.length, 20000, `400 events during a ping flood (got ${c.events.length})`).catch(() => {});
    t.diagnostic(`${(pingBytes / 1e6).toFixed(1)} MB of pings, ${c.pongs} pongs, ${c.events.length} events in ${Date.now() - t0} ms`);
    assert.deepEqual(
      { errors: c.errors, closed: c.closed, events: c.events.length },
      { errors: [], closed: null, events: 400 },
      `events during a ping flood (${(pingBytes / 1e6).toFixed(1)} MB of pings, ${c.pongs} pongs, ${Date.now() - t0} ms)`,
    );
    assert.deepEqual(c.events, Array.from({ length: 400 }, (_, i) => i), 'in order, none missing');
  } finally {
    flooding = false;
    sock.resume();
    await Promise.all([flood, turns]);
  }
  assert.ok(server.running());
  c.ws.terminate();
  AGENT.destroy();
  // A client reading in short turns fills its outbox in between; a pong kept per ping read
  // (here some 100,000 of 125 bytes: over 12 MB) would show above the bound.
  await ops.resourcesBack(server.pid, before, { rssGrowthKb: ops.RSS_NOISE_KB + OUTBOX_KB, what: 'a ping flood during 400 events' });
});
