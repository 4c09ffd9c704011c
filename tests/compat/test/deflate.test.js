'use strict';
// WSF-DEFLATE-*: permessage-deflate (RFC 7692). Negotiated when the client offers it and
// `server.websocket_compression` allows it; server messages from the threshold up go compressed
// (RSV1), smaller ones plain; compressed client messages (whole or fragmented) are inflated, to at
// most max_ws_message_bytes (a deflate bomb closes with 1009); with context takeover allowed,
// both sides keep their context. Checked with the `ws` package (a real client's inflater and
// compressor) and with raw sockets (to see RSV1 and the handshake's header).

const { test } = require('node:test');
const net = require('node:net');
const crypto = require('node:crypto');
const zlib = require('node:zlib');
const h = require('../lib');
const { assert } = h;

const ctx = h.harness({
  on: { server: { websocket_compression: 'on' } },
  threshold: {
    server: { websocket_compression: 300 },
    // Room for an event whose frame needs the 64-bit length form.
    apps: [{ ...h.DEFAULT_APP, limits: { max_event_data_bytes: 200000 } }],
  },
  takeover: { server: { websocket_compression: 'on', websocket_compression_context_takeover: true } },
});
const T = { timeout: 30000 };
const APP = h.DEFAULT_APP;
const PATH = '/app/app-key?protocol=7&client=js&version=8.6.0&flash=false';
const TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);
const OFFER = 'permessage-deflate; client_max_window_bits';

/** A compressed message as a client sends it: raw DEFLATE, the sync tail removed. */
function deflate(text) {
  const z = zlib.deflateRawSync(Buffer.from(text), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  assert.deepEqual(z.subarray(-4), TAIL);
  return z.subarray(0, -4);
}

const inflate = (payload) =>
  zlib.inflateRawSync(Buffer.concat([payload, TAIL]), { finishFlush: zlib.constants.Z_SYNC_FLUSH }).toString('utf8');

/** A masked client frame; `rsv1` marks the first frame of a compressed message. */
function frame(opcode, payload, { fin = true, rsv1 = false } = {}) {
  const p = Buffer.from(payload);
  const n = p.length;
  let ext = Buffer.alloc(0);
  if (n >= 126 && n < 65536) (ext = Buffer.alloc(2)).writeUInt16BE(n);
  else if (n >= 65536) (ext = Buffer.alloc(8)).writeBigUInt64BE(BigInt(n));
  const b0 = (fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | opcode;
  const b1 = 0x80 | (n < 126 ? n : n < 65536 ? 126 : 127);
  const key = crypto.randomBytes(4);
  const body = Buffer.alloc(n);
  for (let i = 0; i < n; i++) body[i] = p[i] ^ key[i % 4];
  return Buffer.concat([Buffer.from([b0, b1]), ext, key, body]);
}

/**
 * A raw client: sends the upgrade with `offer` (none when null), records the 101's headers,
 * then server frames as {rsv1, opcode, payload, text (inflated when compressed), json, code}.
 */
class Raw {
  constructor(server, offer = OFFER, { afterHttp = false } = {}) {
    this.sock = net.connect(server.port, '127.0.0.1');
    this.buf = Buffer.alloc(0);
    this.headers = null;
    this.frames = [];
    this.ended = false;
    this._waiters = [];
    const lines = [
      `GET ${PATH} HTTP/1.1`,
      'Host: 127.0.0.1',
      'Upgrade: websocket',
      'Connection: Upgrade',
      'Sec-WebSocket-Version: 13',
      `Sec-WebSocket-Key: ${crypto.randomBytes(16).toString('base64')}`,
    ];
    if (offer !== null) lines.push(`Sec-WebSocket-Extensions: ${offer}`);
    const upgrade = lines.join('\r\n') + '\r\n\r\n';
    // With `afterHttp`, a plain request goes first on the same connection (the upgrade then
    // reaches the HTTP router rather than the first-request fast path).
    this.httpFirst = afterHttp ? upgrade : null;
    this.sock.write(afterHttp ? 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' : upgrade);
    this.sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this._parse();
    });
    const end = () => {
      this.ended = true;
      this._notify();
    };
    this.sock.on('close', end);
    this.sock.on('error', end);
  }

  _parse() {
    if (this.httpFirst) {
      const i = this.buf.indexOf('\r\n\r\n');
      if (i < 0) return;
      const len = Number(/content-length: *(\d+)/i.exec(this.buf.subarray(0, i).toString('latin1'))[1]);
      if (this.buf.length < i + 4 + len) return;
      this.buf = this.buf.subarray(i + 4 + len);
      this.sock.write(this.httpFirst);
      this.httpFirst = null;
    }
    if (!this.headers) {
      const i = this.buf.indexOf('\r\n\r\n');
      if (i < 0) return;
      const [status, ...lines] = this.buf.subarray(0, i).toString('latin1').split('\r\n');
      assert.match(status, / 101 /);
      this.headers = {};
      for (const l of lines) {
        const c = l.indexOf(':');
        this.headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim();
      }
      this.buf = this.buf.subarray(i + 4);
    }
    for (;;) {
      const b = this.buf;
      if (b.length < 2) break;
      let len = b[1] & 0x7f;
      let at = 2;
      if (len === 126) {
        if (b.length < 4) break;
        len = b.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (b.length < 10) break;
        len = Number(b.readBigUInt64BE(2));
        at = 10;
      }
      if (b.length < at + len) break;
      const payload = Buffer.from(b.subarray(at, at + len));
      const f = { rsv1: (b[0] & 0x40) !== 0, opcode: b[0] & 0x0f, payload };
      if (f.opcode === 0x1) {
        f.text = f.rsv1 ? inflate(payload) : payload.toString('utf8');
        f.json = JSON.parse(f.text);
      }
      // (Each compressed message is inflated on its own: these clients are only used where the
      // server compresses without context takeover.)
      if (f.opcode === 0x8) f.code = payload.readUInt16BE(0);
      this.frames.push(f);
      this.buf = b.subarray(at + len);
    }
    this._notify();
  }

  _notify() {
    for (const w of this._waiters.slice()) w();
  }

  /** The first frame matching `pred`, waiting for it. */
  next(pred, what) {
    return h.withTimeout(
      new Promise((resolve) => {
        const run = () => {
          const f = this.frames.find(pred);
          if (f) {
            this._waiters = this._waiters.filter((w) => w !== run);
            resolve(f);
          }
        };
        this._waiters.push(run);
        run();
      }),
      5000,
      `${what}; got ${JSON.stringify(this.frames.map((f) => [f.rsv1, f.opcode, f.text || f.code]))}`,
    );
  }

  event(name, channel) {
    return this.next((f) => f.json && f.json.event === name && (!channel || f.json.channel === channel), name);
  }

  close() {
    return this.next((f) => f.opcode === 0x8, 'close frame');
  }

  async established() {
    const f = await this.event('pusher:connection_established');
    this.socketId = JSON.parse(f.json.data).socket_id;
    return f;
  }

  send(bytes) {
    this.sock.write(bytes);
  }

  /** Sends a JSON message compressed (in `parts` fragments). */
  sendCompressed(obj, parts = 1) {
    const z = deflate(JSON.stringify(obj));
    const size = Math.ceil(z.length / parts);
    const out = [];
    for (let i = 0; i < parts; i++) {
      const piece = z.subarray(i * size, (i + 1) * size);
      out.push(frame(i === 0 ? 0x1 : 0x0, piece, { fin: i === parts - 1, rsv1: i === 0 }));
    }
    this.send(Buffer.concat(out));
  }

  end() {
    this.sock.destroy();
  }
}

const raws = [];
function raw(server, offer, opts) {
  const r = new Raw(server, offer, opts);
  raws.push(r);
  return r;
}
require('node:test').afterEach(() => {
  for (const r of raws.splice(0)) r.end();
});

/** An event payload like a Laravel broadcast: a model with a few fields, `size` bytes or so. */
function order(i, size = 600) {
  const note = 'Deliver to the back door, ring twice. '.repeat(Math.ceil(size / 40));
  return {
    order: { id: 1000 + i, status: 'shipped', customer: { id: 77, name: 'Ada Lovelace' }, total: '129.90' },
    note: note.slice(0, Math.max(0, size - 150)),
  };
}

test('WSF-DEFLATE-1 negotiated when offered and enabled: no context takeover by default', T, async () => {
  const r = raw(ctx.servers.on);
  await r.established();
  assert.equal(
    r.headers['sec-websocket-extensions'],
    'permessage-deflate; server_no_context_takeover; client_no_context_takeover',
  );
  // The ws package agrees, and gets the handshake (compressed: "on" is every message).
  const c = await h.rawConnect(ctx.servers.on);
  assert.equal(c.ws.extensions, 'permessage-deflate');
  const params = c.ws._extensions['permessage-deflate'].params;
  assert.equal(params.server_no_context_takeover, true);
  assert.equal(params.client_no_context_takeover, true);
  assert.equal(r.frames[0].rsv1, true, 'the handshake message went compressed');
});

test('WSF-DEFLATE-9 an upgrade after a plain request on the same connection negotiates it too', T, async () => {
  const r = raw(ctx.servers.threshold, OFFER, { afterHttp: true });
  await r.established();
  assert.equal(
    r.headers['sec-websocket-extensions'],
    'permessage-deflate; server_no_context_takeover; client_no_context_takeover',
  );
  r.sendCompressed({ event: 'pusher:subscribe', data: { channel: 'kept-alive' } });
  await r.event('pusher_internal:subscription_succeeded', 'kept-alive');
  const data = order(9, 1500);
  await h.sdk(ctx.servers.threshold).trigger('kept-alive', 'big', data);
  const f = await r.event('big', 'kept-alive');
  assert.equal(f.rsv1, true);
  assert.deepEqual(JSON.parse(f.json.data), data);
  const off = raw(ctx.server, OFFER, { afterHttp: true });
  await off.established();
  assert.equal(off.headers['sec-websocket-extensions'], undefined);
});

test('WSF-DEFLATE-2 not negotiated when compression is off, not offered, or offered with what Herald cannot honour', T, async () => {
  const off = raw(ctx.server);
  await off.established();
  assert.equal(off.headers['sec-websocket-extensions'], undefined);
  assert.equal(off.frames[0].rsv1, false);
  const c = await h.rawConnect(ctx.server);
  assert.equal(c.ws.extensions, '');
  const none = raw(ctx.servers.on, null);
  await none.established();
  assert.equal(none.headers['sec-websocket-extensions'], undefined);
  // A smaller compression window than 32 KB, and broken offers: declined, the connection goes on.
  for (const offer of ['permessage-deflate; server_max_window_bits=10', 'permessage-deflate; nonsense', 'permessage-deflate; client_max_window_bits=99']) {
    const r = raw(ctx.servers.on, offer);
    await r.established();
    assert.equal(r.headers['sec-websocket-extensions'], undefined, offer);
    assert.equal(r.frames[0].rsv1, false, offer);
  }
  // The first acceptable offer of several wins.
  const two = raw(ctx.servers.on, 'permessage-deflate; server_max_window_bits=9, permessage-deflate; server_max_window_bits=15');
  await two.established();
  assert.equal(
    two.headers['sec-websocket-extensions'],
    'permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15',
  );
});

test('WSF-DEFLATE-3 events arrive intact; below the threshold they go uncompressed (RSV1 clear)', T, async () => {
  const server = ctx.servers.threshold;
  const r = raw(server);
  await r.established();
  assert.equal(r.frames[0].rsv1, false, 'the handshake is under 300 bytes');
  r.sendCompressed({ event: 'pusher:subscribe', data: { channel: 'orders' } });
  await r.event('pusher_internal:subscription_succeeded', 'orders');
  const c = await h.rawConnect(server);
  await c.subscribeOk('orders');
  const plain = await h.rawConnect(server, { wsOptions: { perMessageDeflate: false } });
  await plain.subscribeOk('orders');
  const sdk = h.sdk(server);
  const big = order(1, 2000);
  const small = { id: 2 };
  const huge = order(3, 70000);
  for (const [name, data] of [['big', big], ['small', small], ['huge', huge]]) {
    await sdk.trigger('orders', name, data);
  }
  for (const [name, data, compressed] of [['big', big, true], ['small', small, false], ['huge', huge, true]]) {
    const f = await r.event(name, 'orders');
    assert.equal(f.rsv1, compressed, name);
    assert.deepEqual(JSON.parse(f.json.data), data, name);
    if (compressed) assert.ok(f.payload.length < f.text.length / 3, `${name}: ${f.payload.length} of ${f.text.length}`);
    for (const client of [c, plain]) {
      const m = await client.nextEvent(name, 'orders');
      assert.deepEqual(JSON.parse(m.data), data, name);
    }
  }
});

test('WSF-DEFLATE-4 compressed client messages are accepted: subscribe, client events, pings', T, async () => {
  const server = ctx.servers.on;
  const channel = 'private-deflate';
  // ws compresses every message it sends here (threshold 0).
  const opts = { wsOptions: { perMessageDeflate: { threshold: 0 } } };
  const a = await h.rawConnect(server, opts);
  const b = await h.rawConnect(server, opts);
  await a.subscribeOk(channel, { app: APP });
  await b.subscribeOk(channel, { app: APP });
  const data = order(5, 800);
  a.send({ event: 'client-moved', channel, data });
  const got = await b.nextEvent('client-moved', channel);
  assert.deepEqual(got.data, data);
  // The same through a raw socket, where RSV1 is certain.
  const r = raw(server);
  await r.established();
  r.sendCompressed({ event: 'pusher:ping', data: {} });
  await r.event('pusher:pong');
  r.sendCompressed({ event: 'pusher:subscribe', data: { channel, auth: h.channelAuth(APP, r.socketId, channel) } });
  await r.event('pusher_internal:subscription_succeeded', channel);
  r.sendCompressed({ event: 'client-typing', channel, data: { who: 'raw' } });
  const typing = await b.nextEvent('client-typing', channel);
  assert.deepEqual(typing.data, { who: 'raw' });
});

test('WSF-DEFLATE-5 a deflate bomb (10 MB of zeros, 10 KB on the wire) is closed with 1009; the server stays healthy', T, async () => {
  const server = ctx.servers.on;
  const r = raw(server);
  await r.established();
  const bomb = `{"event":"client-x","channel":"private-a","data":"${'0'.repeat(10 << 20)}"}`;
  const z = deflate(bomb);
  assert.ok(z.length < 12000, `${z.length} bytes on the wire`);
  r.send(frame(0x1, z, { rsv1: true }));
  const close = await r.close();
  assert.equal(close.code, 1009);
  const err = await r.event('pusher:error');
  assert.equal(err.json.data.code, 1009);
  // Others still connect, subscribe and receive.
  const c = await h.rawConnect(server);
  await c.subscribeOk('after-bomb');
  await h.sdk(server).trigger('after-bomb', 'ok', { fine: true });
  assert.deepEqual(JSON.parse((await c.nextEvent('ok', 'after-bomb')).data), { fine: true });
  // Just over the limit inflated (65,536 by default) is refused the same way; at the limit is not.
  const over = raw(server);
  await over.established();
  const pad = (n) => `{"event":"pusher:ping","data":{},"x":"${'y'.repeat(n)}"}`;
  const base = pad(0).length;
  over.sendCompressed(JSON.parse(pad(65536 - base)));
  await over.event('pusher:pong');
  over.sendCompressed(JSON.parse(pad(65536 - base + 1)));
  assert.equal((await over.close()).code, 1009);
});

test('WSF-DEFLATE-6 a compressed message in fragments is inflated whole; RSV1 on a continuation is refused', T, async () => {
  const server = ctx.servers.on;
  const r = raw(server);
  await r.established();
  r.sendCompressed({ event: 'pusher:subscribe', data: { channel: 'fragments', pad: 'z'.repeat(3000) } }, 4);
  await r.event('pusher_internal:subscription_succeeded', 'fragments');
  // A fragmented uncompressed message on the same connection is fine too.
  const text = Buffer.from(JSON.stringify({ event: 'pusher:ping', data: {} }));
  r.send(Buffer.concat([frame(0x1, text.subarray(0, 5), { fin: false }), frame(0x0, text.subarray(5))]));
  await r.event('pusher:pong');
  const bad = raw(server);
  await bad.established();
  const z = deflate(JSON.stringify({ event: 'pusher:ping', data: {} }));
  bad.send(Buffer.concat([frame(0x1, z.subarray(0, 3), { fin: false }), frame(0x0, z.subarray(3), { rsv1: true })]));
  assert.equal((await bad.close()).code, 1002);
  // Broken compressed data: 1007.
  const broken = raw(server);
  await broken.established();
  broken.send(frame(0x1, Buffer.from([0xff, 0xff, 0xff, 0xff]), { rsv1: true }));
  assert.equal((await broken.close()).code, 1007);
  // RSV1 where compression was not negotiated: 1002.
  const off = raw(ctx.server);
  await off.established();
  off.send(frame(0x1, z, { rsv1: true }));
  assert.equal((await off.close()).code, 1002);
});

test('WSF-DEFLATE-7 with context takeover allowed, both sides keep their context and messages stay intact', T, async () => {
  const server = ctx.servers.takeover;
  const r = raw(server);
  await r.established();
  assert.equal(r.headers['sec-websocket-extensions'], 'permessage-deflate');
  // ws keeps its compression context across messages here (it was not told otherwise).
  const opts = { wsOptions: { perMessageDeflate: { threshold: 0 } } };
  const c = await h.rawConnect(server, opts);
  assert.equal(c.ws.extensions, 'permessage-deflate');
  for (const ch of ['t-1', 't-2', 't-3']) await c.subscribeOk(ch);
  const sdk = h.sdk(server);
  const sent = [];
  for (let i = 0; i < 20; i++) {
    const data = order(i, 500);
    sent.push(data);
    await sdk.trigger(`t-${(i % 3) + 1}`, 'shipped', data);
  }
  for (let i = 0; i < 20; i++) {
    const m = await c.nextEvent('shipped', `t-${(i % 3) + 1}`);
    assert.deepEqual(JSON.parse(m.data), sent[i], `event ${i}`);
  }
  // On the wire, later messages refer to earlier ones: the same stream of events takes far
  // fewer bytes than where every message is compressed on its own.
  const bytesFor = async (srv, channel) => {
    const client = await h.rawConnect(srv);
    await client.subscribeOk(channel);
    const before = client.ws._socket.bytesRead;
    const s = h.sdk(srv);
    for (let i = 0; i < 10; i++) await s.trigger(channel, 'shipped', order(i, 500));
    for (let i = 0; i < 10; i++) await client.nextEvent('shipped', channel);
    return client.ws._socket.bytesRead - before;
  };
  const alone = await bytesFor(ctx.servers.on, 'w-1');
  const kept = await bytesFor(server, 'w-2');
  assert.ok(kept < alone * 0.7, `with context takeover ${kept} bytes, without ${alone}`);
});

test('WSF-DEFLATE-8 the metrics count the messages and bytes that went out compressed', T, async () => {
  const ops = require('../lib/ops');
  const server = await ops.startOps({ env: { HERALD_SERVER_WEBSOCKET_COMPRESSION: '300' } });
  try {
    const app = { app: APP.id };
    const c = await h.rawConnect(server);
    await c.subscribeOk('metered');
    const plain = await h.rawConnect(server, { wsOptions: { perMessageDeflate: false } });
    await plain.subscribeOk('metered');
    const before = await ops.scrape(server);
    const sdk = h.sdk(server);
    for (let i = 0; i < 5; i++) await sdk.trigger('metered', 'shipped', order(i, 1000));
    await sdk.trigger('metered', 'tiny', { id: 1 });
    for (const client of [c, plain]) await client.nextEvent('tiny', 'metered');
    const s = await ops.waitMetrics(server, (m) => m.get('herald_ws_compressed_messages_sent_total', app) >= 5, 5000, 'compressed count');
    // 5 big events to the compressing client; the small one and the plain client's copies are not.
    assert.equal(s.get('herald_ws_compressed_messages_sent_total', app), 5);
    const zbytes = s.get('herald_ws_compressed_sent_bytes_total', app);
    const sent = s.get('herald_ws_sent_bytes_total', app) - before.get('herald_ws_sent_bytes_total', app);
    assert.ok(zbytes > 0 && zbytes * 4 < sent, `compressed ${zbytes} of ${sent} bytes sent`);
    c.close();
    plain.close();
  } finally {
    await server.stop();
  }
});
