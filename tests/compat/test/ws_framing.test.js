'use strict';
// WSF-*: RFC 6455 framing as Herald's own WebSocket layer speaks it, on raw TCP sockets
// (fragmentation, control frames, protocol errors and their close codes, bytes that come
// with the upgrade request, byte-by-byte delivery, the close handshake, upgrades after
// plain HTTP on a keep-alive connection, refused upgrades and the size limit).

const { test, afterEach } = require('node:test');
const net = require('node:net');
const crypto = require('node:crypto');
const h = require('../lib');
const { assert } = h;

const ctx = h.harness({
  small: {
    server: { max_ws_message_bytes: 1024 },
    apps: [{ id: 'app-id', key: 'app-key', secret: 'app-secret' }],
  },
});
const T = { timeout: 20000 };
const WS_PATH = '/app/app-key?protocol=7&client=js&version=8.6.0&flash=false';
const OP = { CONT: 0x0, TEXT: 0x1, BIN: 0x2, CLOSE: 0x8, PING: 0x9, PONG: 0xa };
const PING_MSG = '{"event":"pusher:ping","data":{}}';
const PONG = { event: 'pusher:pong', data: '{}' };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- frame helpers -------------------------------------------------------------------------

/** A client frame: masked unless `mask: false`; `rsv` is the 3 reserved bits (0-7). */
function frame(opcode, payload = '', { fin = true, mask = true, rsv = 0 } = {}) {
  const p = Buffer.from(payload);
  const n = p.length;
  let ext = Buffer.alloc(0);
  if (n >= 126 && n < 65536) (ext = Buffer.alloc(2)).writeUInt16BE(n);
  else if (n >= 65536) (ext = Buffer.alloc(8)).writeBigUInt64BE(BigInt(n));
  const b0 = (fin ? 0x80 : 0) | (rsv << 4) | opcode;
  const b1 = (mask ? 0x80 : 0) | (n < 126 ? n : n < 65536 ? 126 : 127);
  const key = mask ? crypto.randomBytes(4) : Buffer.alloc(0);
  const body = Buffer.alloc(n);
  for (let i = 0; i < n; i++) body[i] = mask ? p[i] ^ key[i % 4] : p[i];
  return Buffer.concat([Buffer.from([b0, b1]), ext, key, body]);
}

/** Close frame payload: status code then reason. */
const closePayload = (code, reason = '') => Buffer.concat([Buffer.from([code >> 8, code & 0xff]), Buffer.from(reason)]);

/** Splits `buf` into server frames; returns the frames and the incomplete rest. */
function parseFrames(buf) {
  const frames = [];
  let at = 0;
  for (;;) {
    if (buf.length - at < 2) break;
    const b0 = buf[at];
    const b1 = buf[at + 1];
    let len = b1 & 0x7f;
    let hl = 2;
    if (len === 126) {
      if (buf.length - at < 4) break;
      len = buf.readUInt16BE(at + 2);
      hl = 4;
    } else if (len === 127) {
      if (buf.length - at < 10) break;
      len = Number(buf.readBigUInt64BE(at + 2));
      hl = 10;
    }
    const masked = (b1 & 0x80) !== 0;
    if (masked) hl += 4;
    if (buf.length - at < hl + len) break;
    const payload = Buffer.from(buf.subarray(at + hl, at + hl + len));
    if (masked) for (let i = 0; i < len; i++) payload[i] ^= buf[at + hl - 4 + (i % 4)];
    const f = { fin: (b0 & 0x80) !== 0, rsv: (b0 >> 4) & 7, opcode: b0 & 0x0f, masked, payload };
    if (f.opcode === OP.TEXT) {
      f.text = payload.toString('utf8');
      try {
        f.json = JSON.parse(f.text);
      } catch (_) {
        /* not JSON */
      }
    }
    if (f.opcode === OP.CLOSE && len >= 2) {
      f.code = payload.readUInt16BE(0);
      f.reason = payload.subarray(2).toString('utf8');
    }
    frames.push(f);
    at += hl + len;
  }
  return { frames, rest: buf.subarray(at) };
}

function upgradeRequest(path = WS_PATH, { omitKey = false, keepAlive = false } = {}) {
  const key = crypto.randomBytes(16).toString('base64');
  const lines = [
    `GET ${path} HTTP/1.1`,
    'Host: 127.0.0.1',
    'Upgrade: websocket',
    `Connection: ${keepAlive ? 'keep-alive, ' : ''}Upgrade`,
    'Sec-WebSocket-Version: 13',
  ];
  if (!omitKey) lines.push(`Sec-WebSocket-Key: ${key}`);
  const accept = crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  return { text: lines.join('\r\n') + '\r\n\r\n', accept };
}

/** A raw TCP client that reads HTTP responses until a 101, then WebSocket frames. */
class Wire {
  constructor(server) {
    this.sock = net.connect(server.port, '127.0.0.1');
    this.sock.setNoDelay(true);
    this.buf = Buffer.alloc(0);
    this.responses = []; // HTTP answers: {status, headers, body}
    this.upgrade = null; // the 101 answer
    this.frames = [];
    this.ended = false;
    this._cursor = 0;
    this._respCursor = 0;
    this._waiters = [];
    this.connected = new Promise((resolve, reject) => {
      this.sock.once('connect', resolve);
      this.sock.once('error', reject);
    });
    this.sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      this._parse();
    });
    const end = () => {
      this.ended = true;
      this._parse();
    };
    this.sock.on('end', end);
    this.sock.on('close', end);
    this.sock.on('error', (e) => {
      this.error = e;
    });
    wires.push(this);
  }

  _parse() {
    while (!this.upgrade) {
      const i = this.buf.indexOf('\r\n\r\n');
      if (i < 0) break;
      const [statusLine, ...lines] = this.buf.subarray(0, i).toString('latin1').split('\r\n');
      const status = Number(statusLine.split(' ')[1]);
      const headers = {};
      for (const l of lines) {
        const c = l.indexOf(':');
        headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim();
      }
      if (status === 101) {
        this.upgrade = { status, headers };
        this.buf = this.buf.subarray(i + 4);
        break;
      }
      const cl = headers['content-length'];
      let bodyLen;
      if (cl !== undefined) bodyLen = Number(cl);
      else if (this.ended) bodyLen = this.buf.length - i - 4;
      else break;
      if (this.buf.length < i + 4 + bodyLen) break;
      this.responses.push({ status, headers, body: this.buf.subarray(i + 4, i + 4 + bodyLen).toString('utf8') });
      this.buf = this.buf.subarray(i + 4 + bodyLen);
    }
    if (this.upgrade) {
      const { frames, rest } = parseFrames(this.buf);
      this.frames.push(...frames);
      this.buf = rest;
    }
    for (const w of this._waiters.slice()) w();
  }

  describe() {
    const fs = this.frames.map((f) =>
      f.opcode === OP.TEXT ? f.text : f.opcode === OP.CLOSE ? `<close ${f.code} ${f.reason}>` : `<op ${f.opcode} ${f.payload.toString('hex')}>`,
    );
    return `frames: ${fs.join(' | ') || '(none)'}; responses: ${JSON.stringify(this.responses)}; ended: ${this.ended}`;
  }

  /** Resolves with check()'s first truthy value (re-checked on input and on end). */
  until(check, ms = 3000, what = 'condition') {
    return h.withTimeout(
      new Promise((resolve) => {
        const run = () => {
          const v = check();
          if (v) {
            this._waiters = this._waiters.filter((w) => w !== run);
            resolve(v);
          }
        };
        this._waiters.push(run);
        run();
      }),
      ms,
      `${what}; ${this.describe()}`,
    );
  }

  write(data) {
    return new Promise((resolve, reject) => this.sock.write(data, (e) => (e ? reject(e) : resolve())));
  }

  /** Next unconsumed frame matching `pred` (earlier non-matching frames stay unconsumed). */
  next(pred, ms, what = 'frame') {
    return this.until(
      () => {
        for (let i = this._cursor; i < this.frames.length; i++) {
          const f = this.frames[i];
          if (!f.consumed && pred(f)) {
            f.consumed = true;
            return f;
          }
        }
        if (this.ended) throw new Error(`connection ended while waiting for ${what}; ${this.describe()}`);
        return null;
      },
      ms,
      what,
    );
  }

  /** The next unconsumed frame, whatever it is. */
  nextFrame(ms, what = 'next frame') {
    return this.next(() => true, ms, what);
  }

  nextEvent(event, ms) {
    return this.next((f) => f.json && f.json.event === event, ms, `event ${event}`);
  }

  closeFrame(ms) {
    return this.next((f) => f.opcode === OP.CLOSE, ms, 'close frame');
  }

  response(ms) {
    return this.until(() => this.responses[this._respCursor] && this.responses[this._respCursor++], ms, 'HTTP response');
  }

  ends(ms = 3000) {
    return this.until(() => this.ended, ms, 'TCP connection end');
  }

  unconsumed() {
    return this.frames.filter((f) => !f.consumed);
  }

  destroy() {
    this.sock.destroy();
  }
}

const wires = [];
afterEach(() => {
  for (const w of wires.splice(0)) w.destroy();
});

/** Opens a WebSocket on a raw socket; `withRequest` is written in the same write as the head. */
async function wsOpen(server, { withRequest, established = true } = {}) {
  const w = new Wire(server);
  await w.connected;
  const req = upgradeRequest();
  await w.write(withRequest ? Buffer.concat([Buffer.from(req.text), withRequest]) : req.text);
  await w.until(() => w.upgrade, 3000, '101 Switching Protocols');
  assert.equal(w.upgrade.headers['sec-websocket-accept'], req.accept, 'Sec-WebSocket-Accept');
  if (established) {
    const f = await w.nextFrame(3000, 'connection_established');
    assert.equal(f.json && f.json.event, 'pusher:connection_established', `first frame: ${w.describe()}`);
  }
  return w;
}

/** Sends a pusher:ping and expects pusher:pong as the next frame: nothing else came before. */
async function expectPongNext(w, what) {
  await w.write(frame(OP.TEXT, PING_MSG));
  const f = await w.nextFrame(3000, `pusher:pong (${what})`);
  assert.deepEqual(f.json, PONG, `${what}: expected only the pong, ${w.describe()}`);
  assert.equal(f.fin, true);
  assert.equal(f.masked, false, 'server frames are not masked');
}

/** Expects the server's close frame with `code` (and `reason`), nothing else first, then TCP end. */
async function expectClose(w, code, reason, what) {
  const f = await w.nextFrame(3000, `close ${code} (${what})`);
  assert.equal(f.opcode, OP.CLOSE, `${what}: expected a close frame first, ${w.describe()}`);
  assert.equal(f.code, code, `${what}: close status, ${w.describe()}`);
  if (reason !== undefined) assert.equal(f.reason, reason, `${what}: close reason`);
  assert.ok(f.payload.length <= 125, 'control frame payload <= 125 bytes');
  // Complete the closing handshake: the server then drops the TCP connection.
  await w.write(frame(OP.CLOSE, closePayload(code))).catch(() => {});
  await w.ends(3000);
  return f;
}

// ---- tests -----------------------------------------------------------------------------------

test('WSF-1 a text message in fragments (text FIN=0, continuations, final continuation) is one message', T, async () => {
  const w = await wsOpen(ctx.server);
  // pusher:ping split in four, each fragment in its own TCP write, with a 2-byte UTF-8
  // character cut between two fragments (only the whole message must be UTF-8)
  const msg = Buffer.from('{"event":"pusher:ping","data":{"x":"é"}}');
  const cut = msg.indexOf(0xc3) + 1;
  const parts = [msg.subarray(0, 5), msg.subarray(5, cut), msg.subarray(cut, cut + 2), msg.subarray(cut + 2)];
  assert.equal(Buffer.concat(parts).toString(), msg.toString());
  await w.write(frame(OP.TEXT, parts[0], { fin: false }));
  await sleep(5);
  await w.write(frame(OP.CONT, parts[1], { fin: false }));
  await sleep(5);
  await w.write(frame(OP.CONT, parts[2], { fin: false }));
  await sleep(5);
  assert.deepEqual(w.unconsumed(), [], 'nothing answered before the final fragment');
  await w.write(frame(OP.CONT, parts[3]));
  const f = await w.nextFrame(3000, 'pong for the fragmented ping');
  assert.deepEqual(f.json, PONG, w.describe());
  // an empty first fragment and an empty final continuation, all in one write
  const sub = Buffer.from(JSON.stringify({ event: 'pusher:subscribe', data: { auth: '', channel: 'wsf1-frag' } }));
  await w.write(
    Buffer.concat([
      frame(OP.TEXT, '', { fin: false }),
      frame(OP.CONT, sub.subarray(0, 20), { fin: false }),
      frame(OP.CONT, sub.subarray(20), { fin: false }),
      frame(OP.CONT, ''),
    ]),
  );
  const ok = await w.nextEvent('pusher_internal:subscription_succeeded');
  assert.equal(ok.json.channel, 'wsf1-frag');
  assert.equal(w.ended, false);
});

test('WSF-2 a ping between fragments is answered with a pong and the message still completes', T, async () => {
  const w = await wsOpen(ctx.server);
  const msg = Buffer.from(PING_MSG);
  await w.write(frame(OP.TEXT, msg.subarray(0, 10), { fin: false }));
  await w.write(frame(OP.PING, 'mid-message'));
  const pong = await w.nextFrame(3000, 'WebSocket pong for the interleaved ping');
  assert.equal(pong.opcode, OP.PONG, `expected a pong frame, ${w.describe()}`);
  assert.equal(pong.payload.toString(), 'mid-message', 'pong echoes the ping payload');
  assert.equal(pong.fin, true);
  await w.write(frame(OP.CONT, msg.subarray(10, 20), { fin: false }));
  // a pong from the client in the middle is ignored
  await w.write(frame(OP.PONG, 'unsolicited'));
  await w.write(frame(OP.CONT, msg.subarray(20)));
  const f = await w.nextFrame(3000, 'pusher:pong after the fragments');
  assert.deepEqual(f.json, PONG);
  // ping and fragments in one TCP write: pong first, then the message's reply
  await w.write(
    Buffer.concat([frame(OP.TEXT, msg.subarray(0, 3), { fin: false }), frame(OP.PING, 'p2'), frame(OP.CONT, msg.subarray(3))]),
  );
  const p2 = await w.nextFrame(3000, 'pong p2');
  assert.equal(p2.opcode, OP.PONG);
  assert.equal(p2.payload.toString(), 'p2');
  assert.deepEqual((await w.nextFrame(3000, 'pusher:pong')).json, PONG);
});

test('WSF-3 an unmasked client frame -> close 1002', T, async () => {
  const w = await wsOpen(ctx.server);
  await w.write(frame(OP.TEXT, PING_MSG, { mask: false }));
  await expectClose(w, 1002, 'Client frames must be masked', 'unmasked text');
  // a masked frame is fine before, an unmasked ping (control frame) is refused as well
  const w2 = await wsOpen(ctx.server);
  await expectPongNext(w2, 'masked ping first');
  await w2.write(frame(OP.PING, 'x', { mask: false }));
  await expectClose(w2, 1002, 'Client frames must be masked', 'unmasked ping');
});

test('WSF-4 a text message that is not UTF-8 -> close 1007 (single frame and fragmented)', T, async () => {
  const w = await wsOpen(ctx.server);
  await w.write(frame(OP.TEXT, Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d])));
  await expectClose(w, 1007, 'Text message is not valid UTF-8', 'single frame');
  // a multi-byte character left incomplete at the end of a fragmented message
  const w2 = await wsOpen(ctx.server);
  await w2.write(frame(OP.TEXT, '{"event":"pusher:ping","data":"', { fin: false }));
  await w2.write(frame(OP.CONT, Buffer.from([0x22, 0x7d, 0xc3])));
  await expectClose(w2, 1007, 'Text message is not valid UTF-8', 'fragmented');
});

test('WSF-5 a continuation frame with no message started -> close 1002', T, async () => {
  const w = await wsOpen(ctx.server);
  await expectPongNext(w, 'before');
  await w.write(frame(OP.CONT, PING_MSG));
  await expectClose(w, 1002, 'Unexpected continuation frame or interleaved message', 'lone continuation');
  // also after a fragmented message has completed
  const w2 = await wsOpen(ctx.server);
  await w2.write(Buffer.concat([frame(OP.TEXT, PING_MSG.slice(0, 8), { fin: false }), frame(OP.CONT, PING_MSG.slice(8))]));
  assert.deepEqual((await w2.nextFrame(3000, 'pong')).json, PONG);
  await w2.write(frame(OP.CONT, '', { fin: true }));
  await expectClose(w2, 1002, 'Unexpected continuation frame or interleaved message', 'continuation after the end');
});

test('WSF-6 a new text/binary frame inside a fragmented message -> close 1002', T, async () => {
  for (const op of [OP.TEXT, OP.BIN]) {
    const w = await wsOpen(ctx.server);
    await w.write(frame(OP.TEXT, PING_MSG.slice(0, 8), { fin: false }));
    await w.write(frame(op, PING_MSG));
    await expectClose(w, 1002, 'Unexpected continuation frame or interleaved message', `opcode ${op} inside a message`);
  }
});

test('WSF-7 reserved bits set (RSV1, RSV2, RSV3) -> close 1002', T, async () => {
  for (const rsv of [4, 2, 1]) {
    const w = await wsOpen(ctx.server);
    await w.write(frame(OP.TEXT, PING_MSG, { rsv }));
    await expectClose(w, 1002, 'Reserved bits set without an extension', `rsv ${rsv}`);
  }
});

test('WSF-8 an unknown opcode (0x3, 0x7, 0xB, 0xF) -> close 1002', T, async () => {
  for (const op of [0x3, 0x7, 0xb, 0xf]) {
    const w = await wsOpen(ctx.server);
    await w.write(frame(op, 'x'));
    await expectClose(w, 1002, 'Unknown opcode', `opcode ${op}`);
  }
});

test('WSF-9 a fragmented or oversized (>125 bytes) control frame -> close 1002', T, async () => {
  const reason = 'Control frames must be final and at most 125 bytes';
  const w = await wsOpen(ctx.server);
  await w.write(frame(OP.PING, 'x', { fin: false }));
  await expectClose(w, 1002, reason, 'ping with FIN=0');
  const w2 = await wsOpen(ctx.server);
  await w2.write(frame(OP.PING, 'y'.repeat(126)));
  await expectClose(w2, 1002, reason, 'ping of 126 bytes');
  // 125 bytes is the largest allowed: echoed in full
  const w3 = await wsOpen(ctx.server);
  await w3.write(frame(OP.PING, 'z'.repeat(125)));
  const p = await w3.nextFrame(3000, 'pong of 125 bytes');
  assert.equal(p.opcode, OP.PONG);
  assert.equal(p.payload.toString(), 'z'.repeat(125));
});

test('WSF-10 a binary frame holding UTF-8 JSON is handled like text; binary that is not UTF-8 is ignored', T, async () => {
  const w = await wsOpen(ctx.server);
  await w.write(frame(OP.BIN, PING_MSG));
  const f = await w.nextFrame(3000, 'pong for a binary ping');
  assert.deepEqual(f.json, PONG);
  assert.equal(f.opcode, OP.TEXT, 'replies are text frames');
  // fragmented binary, too
  await w.write(Buffer.concat([frame(OP.BIN, PING_MSG.slice(0, 4), { fin: false }), frame(OP.CONT, PING_MSG.slice(4))]));
  assert.deepEqual((await w.nextFrame(3000, 'pong for a fragmented binary ping')).json, PONG);
  await w.write(frame(OP.BIN, Buffer.from([0xff, 0xfe, 0x00, 0x80, 0xc3])));
  await expectPongNext(w, 'after a non-UTF-8 binary frame (no error, no close)');
  assert.equal(w.ended, false);
});

test('WSF-11 frame bytes sent in the same TCP write as the upgrade request are processed', T, async () => {
  const w = await wsOpen(ctx.server, {
    withRequest: Buffer.concat([frame(OP.TEXT, PING_MSG), frame(OP.PING, 'early')]),
    established: false,
  });
  const first = await w.nextFrame(3000, 'connection_established');
  assert.equal(first.json && first.json.event, 'pusher:connection_established', `first frame: ${w.describe()}`);
  const rest = await w.until(() => w.frames.length >= 3 && w.frames.slice(1, 3), 3000, 'pusher:pong and pong');
  const pong = rest.find((f) => f.json);
  assert.deepEqual(pong && pong.json, PONG, w.describe());
  const wsPong = rest.find((f) => f.opcode === OP.PONG);
  assert.equal(wsPong && wsPong.payload.toString(), 'early', w.describe());
  rest.forEach((f) => (f.consumed = true));
  await expectPongNext(w, 'later');
});

test('WSF-12 a frame delivered one byte per TCP write is parsed', T, async () => {
  const w = await wsOpen(ctx.server);
  const bytes = frame(OP.TEXT, JSON.stringify({ event: 'pusher:subscribe', data: { auth: '', channel: 'wsf12-bytes' } }));
  for (let i = 0; i < bytes.length; i++) {
    await w.write(bytes.subarray(i, i + 1));
    await sleep(1);
    if (i === bytes.length - 2) assert.deepEqual(w.unconsumed(), [], 'no answer before the last byte');
  }
  const f = await w.nextFrame(3000, 'subscription_succeeded');
  assert.deepEqual(f.json, { event: 'pusher_internal:subscription_succeeded', channel: 'wsf12-bytes', data: '{}' });
  // and a 16-bit-length frame (126..65535 bytes) byte by byte through its header
  const pad = frame(OP.TEXT, JSON.stringify({ event: 'pusher:ping', data: { pad: 'p'.repeat(300) } }));
  for (let i = 0; i < 10; i++) {
    await w.write(pad.subarray(i, i + 1));
    await new Promise((r) => setImmediate(r));
  }
  await w.write(pad.subarray(10));
  const pong = await w.next((x) => !(x.json && x.json.event === 'pusher_internal:subscription_count'), 3000, 'pong');
  assert.deepEqual(pong.json, PONG, w.describe());
});

test('WSF-13 a client close 1000 is answered with close 1000, then the server ends the TCP connection', T, async () => {
  const w = await wsOpen(ctx.server);
  await w.write(frame(OP.CLOSE, closePayload(1000, 'bye')));
  const f = await w.nextFrame(3000, 'close answer');
  assert.equal(f.opcode, OP.CLOSE, w.describe());
  assert.equal(f.code, 1000);
  assert.equal(f.fin, true);
  assert.equal(f.masked, false);
  // the server closes the connection without waiting for anything more from the client
  await w.ends(1500);
  // a close with another status (4000-4999 range, application) is echoed too
  const w2 = await wsOpen(ctx.server);
  await w2.write(frame(OP.CLOSE, closePayload(4321)));
  const f2 = await w2.nextFrame(3000, 'close answer');
  assert.equal(f2.code, 4321);
  await w2.ends(1500);
});

test('WSF-17 close frames that break RFC 6455 (status 999, 1005, 1006, 1015, 2999, 5000; a one-byte payload) -> 1002; a reason that is not UTF-8 -> 1007', T, async () => {
  const cases = [
    ...[999, 1005, 1006, 1015, 2999, 5000].map((code) => [closePayload(code), 1002, `status ${code}`]),
    [Buffer.from([0x03]), 1002, 'a one-byte payload'],
    [Buffer.concat([closePayload(1000), Buffer.from([0xff, 0xfe])]), 1007, 'a reason that is not UTF-8'],
    [Buffer.alloc(0), 1000, 'no status at all'],
    [closePayload(3000, 'done'), 3000, 'a registered status (3000-3999)'],
  ];
  for (const [payload, code, what] of cases) {
    const w = await wsOpen(ctx.server);
    await w.write(frame(OP.CLOSE, payload));
    const f = await w.nextFrame(3000, `close answer to ${what}`);
    assert.equal(f.opcode, OP.CLOSE, `${what}: ${w.describe()}`);
    assert.equal(f.code, code, `${what}: answered with ${f.code}`);
    await w.ends(1500);
  }
});

test('WSF-14 an upgrade after a plain HTTP request on the same keep-alive connection gets 101 and a session', T, async () => {
  const w = new Wire(ctx.server);
  await w.connected;
  await w.write('GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n');
  const r = await w.response(3000);
  assert.equal(r.status, 200);
  assert.equal(r.body, 'ok\n');
  assert.equal(w.ended, false, 'keep-alive connection stays open');
  const req = upgradeRequest();
  await w.write(req.text);
  await w.until(() => w.upgrade, 3000, '101 on the reused connection');
  assert.equal(w.upgrade.headers['sec-websocket-accept'], req.accept);
  assert.match(w.upgrade.headers.upgrade || '', /^websocket$/i);
  const f = await w.nextFrame(3000, 'connection_established');
  assert.equal(f.json && f.json.event, 'pusher:connection_established', w.describe());
  const sid = JSON.parse(f.json.data).socket_id;
  assert.match(sid, /^\d+\.\d+$/);
  // the session works: frames in, frames out, fragmentation, and the close handshake
  await expectPongNext(w, 'on the hyper-upgraded stream');
  await w.write(Buffer.concat([frame(OP.TEXT, PING_MSG.slice(0, 9), { fin: false }), frame(OP.CONT, PING_MSG.slice(9))]));
  assert.deepEqual((await w.nextFrame(3000, 'pong for fragments')).json, PONG);
  await w.write(frame(OP.TEXT, PING_MSG, { mask: false }));
  await expectClose(w, 1002, 'Client frames must be masked', 'unmasked on the hyper-upgraded stream');
});

test('WSF-15 an upgrade without Sec-WebSocket-Key gets 400, as does a plain GET of the WebSocket endpoint', T, async () => {
  const body = 'This is the WebSocket endpoint: connect with a WebSocket client\n';
  const w = new Wire(ctx.server);
  await w.connected;
  await w.write(upgradeRequest(WS_PATH, { omitKey: true }).text);
  const r = await w.response(3000);
  assert.equal(r.status, 400, `expected 400 for an upgrade without a key: ${JSON.stringify(r)}`);
  assert.equal(w.upgrade, null);
  assert.equal(r.body, body);
  // a key that is not 24 characters long is refused the same way
  const w2 = new Wire(ctx.server);
  await w2.connected;
  await w2.write(upgradeRequest(WS_PATH).text.replace(/Sec-WebSocket-Key: .*\r\n/, 'Sec-WebSocket-Key: c2hvcnQ=\r\n'));
  const r2 = await w2.response(3000);
  assert.equal(r2.status, 400);
  assert.equal(w2.upgrade, null);
  // plain GET
  const res = await fetch(`${ctx.server.httpBase}/app/app-key?protocol=7`);
  assert.equal(res.status, 400);
  assert.equal(await res.text(), body);
  assert.match(res.headers.get('content-type') || '', /^text\/plain/);
});

test('WSF-16 a fragmented message over max_ws_message_bytes -> pusher:error 1009 then close 1009', T, async () => {
  const small = ctx.servers.small; // max_ws_message_bytes = 1024
  const msg = (n) => Buffer.from(JSON.stringify({ event: 'pusher:ping', data: { pad: 'x'.repeat(n) } }));
  // under the limit in total: fine
  const ok = await wsOpen(small);
  const m1 = msg(900);
  await ok.write(
    Buffer.concat([frame(OP.TEXT, m1.subarray(0, 400), { fin: false }), frame(OP.CONT, m1.subarray(400, 800), { fin: false }), frame(OP.CONT, m1.subarray(800))]),
  );
  assert.deepEqual((await ok.nextFrame(3000, 'pong under the limit')).json, PONG);
  // every fragment under the limit, the total over it
  const w = await wsOpen(small);
  const m2 = msg(1100);
  assert.ok(m2.length > 1024);
  await w.write(frame(OP.TEXT, m2.subarray(0, 500), { fin: false }));
  await w.write(frame(OP.CONT, m2.subarray(500, 1000), { fin: false }));
  await w.write(frame(OP.CONT, m2.subarray(1000)));
  const err = await w.nextFrame(3000, 'pusher:error 1009');
  h.assertErrorFrame(err.json || { text: err.text }, { code: 1009, message: 'Message too big' });
  await expectClose(w, 1009, 'Message too big', 'fragmented message too big');
  // the limit applies before the last fragment: the message is refused once it is exceeded
  const w2 = await wsOpen(small);
  await w2.write(frame(OP.TEXT, m2.subarray(0, 600), { fin: false }));
  await w2.write(frame(OP.CONT, m2.subarray(600, 1100), { fin: false }));
  const err2 = await w2.nextFrame(3000, 'pusher:error 1009 before the final fragment');
  h.assertErrorFrame(err2.json || { text: err2.text }, { code: 1009, message: 'Message too big' });
  await expectClose(w2, 1009, 'Message too big', 'limit exceeded mid-message');
});
