'use strict';
// OPS-TLS-*: the server port speaks TLS for wss:// and https:// when
// HERALD_TLS_CERT_FILE / HERALD_TLS_KEY_FILE are set (self-signed certificate).

const fs = require('node:fs');
const tls = require('node:tls');
const { test } = require('node:test');
const h = require('../lib');
const ops = require('../lib/ops');
const { assert } = h;

test('OPS-TLS-1 pusher-js over wss:// receives an event triggered over https:// with the SDK', { timeout: 60000 }, async (t) => {
  const { cert, key } = ops.selfSignedCert();
  const server = await ops.startOps({ tls: true, env: { HERALD_TLS_CERT_FILE: cert, HERALD_TLS_KEY_FILE: key } });
  const channel = h.uid('ops-tls-');
  const child = ops.childPusher({ port: server.port, channel });
  t.after(() => {
    child.kill();
    server.stop();
    fs.rmSync(cert, { force: true });
    fs.rmSync(key, { force: true });
  });

  // the certificate served is ours
  const peer = await h.withTimeout(
    new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port: server.port, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] }, () => {
        const c = s.getPeerCertificate();
        s.end();
        resolve(c);
      });
      s.on('error', reject);
    }),
    5000,
    'TLS handshake',
  );
  assert.equal(peer.subject.CN, 'localhost');

  await child.waitLine((l) => l.type === 'subscribed', 10000, 'pusher-js subscribed over wss://');
  const connected = child.lines.find((l) => l.type === 'state' && l.current === 'connected');
  assert.ok(connected && /^\d+\.\d+$/.test(connected.socket_id), `connected over wss: ${JSON.stringify(child.lines)}`);

  const api = ops.tlsSdk(server);
  const r = await h.sdkCall(() => api.trigger(channel, 'ops-tls-ev', { secure: true }));
  assert.equal(r.status, 200, `trigger over https: ${r.text}`);
  const ev = await child.waitLine((l) => l.type === 'event' && l.event === 'ops-tls-ev', 5000, 'event over wss://');
  assert.deepEqual(ev.data, { secure: true });

  // the HTTP API answers over https with the channel's subscription count
  const info = await h.sdkCall(() => api.get({ path: `/channels/${channel}`, params: { info: 'subscription_count' } }));
  assert.equal(info.status, 200, info.text);
  assert.equal(info.json().subscription_count, 1);

  // health over https on the server port, plain HTTP on the metrics port
  const hz = await ops.httpGet(`${server.httpBase}/healthz`, { insecure: true });
  assert.equal(hz.status, 200, `https /healthz: ${hz.text}`);
  const mz = await ops.httpGet(`${server.metricsBase}/readyz`);
  assert.equal(mz.status, 200);

  // a client that checks certificates refuses the self-signed one
  const strict = await ops.httpGet(`${server.httpBase}/healthz`);
  assert.equal(strict.status, 0, `a verifying client must fail on the self-signed certificate: ${JSON.stringify(strict)}`);
  // and plain http:// on the TLS port gets no HTTP answer
  const plain = await ops.httpGet(`http://127.0.0.1:${server.port}/healthz`);
  assert.notEqual(plain.status, 200, `plain http on the TLS port: ${JSON.stringify(plain)}`);
  // the CLI reaches it with --insecure
  const cliOut = await ops.cli(['trigger', channel, 'ops-tls-cli', '{"via":"cli"}', '--url', server.httpBase, '--insecure']);
  assert.equal(cliOut.status, 0, cliOut.out);
  const ev2 = await child.waitLine((l) => l.type === 'event' && l.event === 'ops-tls-cli', 5000, 'CLI event over wss://');
  assert.deepEqual(ev2.data, { via: 'cli' });
});

test('OPS-TLS-2 a missing or mismatched certificate stops startup, and fails check-config, with a message naming the file', { timeout: 30000 }, async (t) => {
  const { cert, key } = ops.selfSignedCert();
  const other = ops.selfSignedCert();
  t.after(() => {
    for (const f of [cert, key, other.cert, other.key]) fs.rmSync(f, { force: true });
  });
  const missing = ops.tmpPath('no-such-cert', '.pem');
  const r1 = await ops.cli(['check-config'], { env: { HERALD_TLS_CERT_FILE: cert } });
  assert.equal(r1.status, 2, `only the cert set: ${r1.out}`);
  assert.match(r1.out, /key_file/, r1.out);
  // The server must exit with status 2 and a message naming the file, and must not
  // announce "Herald listening on" (scripts and supervisors take it as "up").
  const announced = [];
  for (const [what, env, re] of [
    ['missing cert file', { HERALD_TLS_CERT_FILE: missing, HERALD_TLS_KEY_FILE: key }, new RegExp(`cert_file ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`)],
    ['key of another certificate', { HERALD_TLS_CERT_FILE: cert, HERALD_TLS_KEY_FILE: other.key }, /cert_file and tls\.key_file do not form a valid pair/],
    ['a key file that is not PEM', { HERALD_TLS_CERT_FILE: cert, HERALD_TLS_KEY_FILE: __filename }, /key_file/],
  ]) {
    const full = { HERALD_HOST: '127.0.0.1', HERALD_PORT: '0', HERALD_WEBHOOKS_SPOOL_FILE: ops.tmpPath('spool'), ...env };
    const r = await ops.cli([], { env: full, timeout: 10000 });
    assert.equal(r.status, 2, `${what}: exit status (signal ${r.signal}); output:\n${r.out}`);
    assert.match(r.stderr, re, `${what}: the error names the setting and file`);
    if (/Herald listening on/.test(r.stdout)) announced.push(`${what}: stdout ${JSON.stringify(r.stdout)}`);
    // check-config runs the same checks: it refuses with the same message, never "valid".
    const c = await ops.cli(['check-config'], { env: full });
    assert.equal(c.status, 2, `${what}: check-config exit status; output:\n${c.out}`);
    assert.equal(c.stderr, r.stderr, `${what}: check-config and serve give the same message`);
  }
  assert.deepEqual(announced, [], 'a server that cannot load its TLS files must fail before printing "Herald listening on"');
});

// ---------------------------------------------------------------------------------------------
// The TLS layer itself (the server's own, on rustls's unbuffered API): large frames and bursts,
// a client that stops reading, a drain, TLS 1.2, records that arrive a byte at a time, and
// handshakes that never finish.

const https = require('node:https');
const net = require('node:net');
const { withTimeout, waitFor } = require('../lib/wait');

async function tlsServer(t, opts = {}) {
  const { cert, key } = ops.selfSignedCert();
  const server = await ops.startOps({ tls: true, ...opts, env: { HERALD_TLS_CERT_FILE: cert, HERALD_TLS_KEY_FILE: key, ...(opts.env || {}) } });
  t.after(() => {
    server.stop();
    fs.rmSync(cert, { force: true });
    fs.rmSync(key, { force: true });
  });
  return server;
}

/** A raw wss:// subscriber to `channel` through `port` (a proxy's maybe). */
function wssSubscriber(port, channel) {
  return ops.bulkSubscriber(`wss://127.0.0.1:${port}`, channel, { rejectUnauthorized: false, perMessageDeflate: false });
}

async function triggerBulk(api, channel, from, count) {
  const pad = 'x'.repeat(10000);
  const batch = [];
  for (let j = from; j < from + count; j++) batch.push({ channel, name: 'bulk', data: `${j}:${pad}` });
  const res = await h.sdkCall(() => api.triggerBatch(batch));
  assert.equal(res.status, 200, res.text);
}

test('OPS-TLS-3 over wss://, bursts of 10 KB events arrive whole and in order, and a client that stops reading is closed with 4100 while a reader loses nothing', { timeout: 120000 }, async (t) => {
  const server = await tlsServer(t);
  const api = ops.tlsSdk(server);
  const channel = h.uid('tls-bulk-');
  const reader = wssSubscriber(server.port, channel);
  const stalled = wssSubscriber(server.port, channel);
  t.after(() => {
    reader.ws.terminate();
    stalled.ws.terminate();
  });
  await Promise.all([reader.subscribed, stalled.subscribed]);

  // A burst both read: batches queue up behind each other, so the server writes them in large
  // pieces (many TLS records per write).
  for (let i = 0; i < 200; i += 10) await triggerBulk(api, channel, i, 10);
  await waitFor(() => reader.events.length >= 200 && stalled.events.length >= 200, 20000, 'both readers receiving the burst');

  // Then one stops reading: its TLS socket and the server's outbox fill, and it is closed as a
  // slow consumer; it reads again once the decision is counted, to see how the connection ends.
  const stall = ops.stallUntilSlowConsumer(server, stalled.ws._socket);
  let sent = 200;
  for (; sent < 2700 && !stall.decided(); sent += 10) await triggerBulk(api, channel, sent, 10);
  await withTimeout(stall.done, 15000, `one slow-consumer disconnect after ${sent} events`);

  const closed = await withTimeout(stalled.closedP, 10000, 'the stalled client to be closed');
  const last = stalled.frames[stalled.frames.length - 1];
  assert.deepEqual(
    { errors: stalled.errors, last, closed },
    {
      errors: [],
      last: { event: 'pusher:error', data: { code: 4100, message: 'Over capacity: client is not reading its messages fast enough' } },
      closed: { code: 4100, reason: 'Over capacity: client is not reading its messages fast enough' },
    },
    `the end of the stalled wss connection after ${stalled.events.length} events`,
  );
  assert.deepEqual(stalled.events, Array.from({ length: stalled.events.length }, (_, i) => i), 'events before the close in order, whole');
  await waitFor(() => reader.events.length >= sent, 30000, `the reader receiving all ${sent} events`);
  assert.deepEqual(reader.events, Array.from({ length: sent }, (_, i) => i));
  assert.deepEqual(reader.errors, []);
  assert.equal(reader.closed, null, 'the reader stays connected');
});

test('OPS-TLS-4 a drain closes wss:// clients with 4200 after the events accepted before it', { timeout: 60000 }, async (t) => {
  const server = await tlsServer(t, { env: { HERALD_SERVER_DRAIN_WINDOW_MS: '500' } });
  const api = ops.tlsSdk(server);
  const channel = h.uid('tls-drain-');
  const subs = [wssSubscriber(server.port, channel), wssSubscriber(server.port, channel)];
  await Promise.all(subs.map((s) => s.subscribed));
  await triggerBulk(api, channel, 0, 10);
  await waitFor(() => subs.every((s) => s.events.length === 10), 10000, 'the events before the drain');
  server.kill('SIGTERM');
  const closed = await withTimeout(Promise.all(subs.map((s) => s.closedP)), 20000, 'the drain closing both');
  for (const s of subs) {
    assert.deepEqual(s.errors, []);
    assert.equal(s.frames[s.frames.length - 1].event, 'pusher:error');
    assert.equal(s.frames[s.frames.length - 1].data.code, 4200);
  }
  assert.deepEqual(closed.map((c) => c.code), [4200, 4200]);
});

/** A TCP proxy to `port` that passes the client's bytes on one at a time (TLS records then arrive in pieces). */
async function tricklingProxy(t, port) {
  const sockets = new Set();
  const proxy = net.createServer((from) => {
    const to = net.connect(port, '127.0.0.1');
    to.setNoDelay(true);
    sockets.add(from).add(to);
    let queue = Promise.resolve();
    from.on('data', (chunk) => {
      from.pause();
      queue = queue.then(async () => {
        for (const b of chunk) {
          if (to.destroyed) return;
          to.write(Buffer.from([b]));
          await new Promise((r) => setImmediate(r));
        }
        from.resume();
      });
    });
    to.on('data', (d) => from.write(d));
    const end = () => {
      from.destroy();
      to.destroy();
    };
    from.on('close', end).on('error', end);
    to.on('close', end).on('error', end);
  });
  await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const s of sockets) s.destroy();
    proxy.close();
  });
  return proxy.address().port;
}

test('OPS-TLS-5 TLS 1.2 clients, records arriving a byte at a time, and handshakes that never finish or are not TLS', { timeout: 60000 }, async (t) => {
  const server = await tlsServer(t);
  const api = ops.tlsSdk(server);

  // TLS 1.2 and 1.3 both served
  for (const maxVersion of ['TLSv1.2', 'TLSv1.3']) {
    const r = await new Promise((resolve, reject) => {
      const req = https.get({ host: '127.0.0.1', port: server.port, path: '/healthz', rejectUnauthorized: false, maxVersion, agent: false }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode, protocol: res.socket.getProtocol ? res.socket.getProtocol() : null, body }));
      });
      req.on('error', reject);
    });
    assert.equal(r.status, 200, `${maxVersion}: ${r.body}`);
    assert.equal(r.protocol, maxVersion);
  }

  // Handshakes left unfinished and bytes that are no TLS at all
  const hanging = [];
  for (let i = 0; i < 10; i++) {
    const s = net.connect(server.port, '127.0.0.1');
    s.on('error', () => {});
    s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])); // a ClientHello's first bytes, then nothing
    hanging.push(s);
  }
  t.after(() => hanging.forEach((s) => s.destroy()));
  const garbage = await Promise.all(
    Array.from({ length: 10 }, () =>
      withTimeout(
        new Promise((resolve) => {
          const s = net.connect(server.port, '127.0.0.1', () => s.write(Buffer.from('\x17\x03\x03\x00\x05hello, not TLS\r\n')));
          s.on('error', () => {});
          s.on('close', () => resolve('closed'));
        }),
        10000,
        'the server closing a connection that sent no TLS',
      ),
    ),
  );
  assert.deepEqual(new Set(garbage), new Set(['closed']));

  // A wss:// subscriber whose bytes reach the server one at a time still subscribes and receives
  const viaPort = await tricklingProxy(t, server.port);
  const channel = h.uid('tls-trickle-');
  const sub = wssSubscriber(viaPort, channel);
  t.after(() => sub.ws.terminate());
  await withTimeout(sub.subscribed, 20000, 'subscription through the trickling proxy');
  await triggerBulk(api, channel, 0, 3);
  await waitFor(() => sub.events.length === 3, 10000, 'events through the trickling proxy');
  assert.deepEqual(sub.events, [0, 1, 2]);
  assert.deepEqual(sub.errors, []);
  // and the server is healthy throughout
  const hz = await ops.httpGet(`${server.httpBase}/healthz`, { insecure: true });
  assert.equal(hz.status, 200);
});

test('OPS-TLS-6 pusher-js over https:// with only the HTTP fallback transports (xhr_streaming, xhr_polling) subscribes and receives', { timeout: 60000 }, async (t) => {
  const server = await tlsServer(t);
  const api = ops.tlsSdk(server);
  for (const transport of ['xhr_streaming', 'xhr_polling']) {
    const channel = h.uid(`tls-${transport}-`);
    const child = ops.childPusher({ port: server.port, channel, transports: [transport] });
    t.after(() => child.kill());
    await child.waitLine((l) => l.type === 'subscribed', 15000, `pusher-js subscribed over https ${transport}`);
    const r = await h.sdkCall(() => api.trigger(channel, 'over-https', { transport }));
    assert.equal(r.status, 200, r.text);
    const ev = await child.waitLine((l) => l.type === 'event' && l.event === 'over-https', 10000, `event over https ${transport}`);
    assert.deepEqual(ev.data, { transport });
    const s = await ops.scrape(server);
    assert.equal(s.get('herald_fallback_sessions', { app: 'app-id', transport }), 1, `one ${transport} session counted`);
  }
});
