'use strict';
// One import for the test files: harness hooks, clients, signing, waiters and
// protocol-level assertions.

const assert = require('node:assert/strict');
const { before, after, afterEach } = require('node:test');
const server = require('./server');
const clients = require('./clients');
const raw = require('./raw');
const sign = require('./sign');
const wait = require('./wait');

// pusher-js (activity timer 120 s, faye-websocket close timer 30 s) and `ws`
// (close timer 30 s) leave long timers behind after a server-initiated close; they
// would keep each test file's process alive for up to 2 minutes after its last
// test. Long timers are therefore unref'd: they still fire while the process is
// alive but do not hold it open. No test waits on a timer that long.
const LONG_TIMER_MS = 20000;
const realSetTimeout = global.setTimeout;
global.setTimeout = function setTimeoutUnrefLong(fn, ms, ...args) {
  const t = realSetTimeout.call(this, fn, ms, ...args);
  if (typeof ms === 'number' && ms >= LONG_TIMER_MS && t && typeof t.unref === 'function') t.unref();
  return t;
};

/**
 * Registers node:test hooks that start one default server (and the named
 * configured ones) for the test file, close every client after each test and
 * kill the servers at the end.
 *
 *   const h = harness({ limits: { apps: [...], server: {...} } });
 *   h.server, h.servers.limits, h.pool
 */
function harness(extraConfigs = {}, { defaultServer = true } = {}) {
  const ctx = { server: null, servers: {}, pool: null, all: [] };
  before(async () => {
    if (defaultServer) {
      ctx.server = await server.startServer();
      ctx.all.push(ctx.server);
    }
    for (const [name, cfg] of Object.entries(extraConfigs)) {
      ctx.servers[name] = await server.startServer(cfg);
      ctx.all.push(ctx.servers[name]);
    }
    ctx.pool = new clients.Pool(ctx.server || Object.values(ctx.servers)[0]);
  });
  afterEach(() => {
    if (ctx.pool) ctx.pool.closeAll();
  });
  after(async () => {
    if (ctx.pool) ctx.pool.closeAll();
    for (const s of ctx.all) s.stop();
    // A server that crashed or exited on its own (even after the last test) fails the file.
    await server.checkExits();
  });
  return ctx;
}

/** Parses a frame's string data, asserting it IS a string (double-encoded). */
function stringData(frame) {
  assert.equal(typeof frame.data, 'string', `data of ${frame.event} must be a JSON string, got ${JSON.stringify(frame.data)}`);
  return JSON.parse(frame.data);
}

/**
 * Waits for the next pusher:error on a raw client and checks it:
 * exactly {event, data:{code, message}} with no channel member, data an object.
 * `message` may be a string (exact) or a RegExp; `prefix` a stable prefix.
 */
async function expectError(client, { code, message, prefix, ms } = {}) {
  const f = await client.next((m) => m.event === 'pusher:error', ms, 'pusher:error');
  assertErrorFrame(f, { code, message, prefix });
  return f;
}

function assertErrorFrame(f, { code, message, prefix } = {}) {
  assert.equal(f.event, 'pusher:error', `expected a pusher:error, got ${JSON.stringify(f)}`);
  assert.deepEqual(Object.keys(f).sort(), ['data', 'event'], `pusher:error frame members: ${JSON.stringify(f)}`);
  assert.equal(typeof f.data, 'object', `pusher:error data must be an object: ${JSON.stringify(f)}`);
  assert.notEqual(f.data, null);
  assert.deepEqual(Object.keys(f.data).sort(), ['code', 'message'], `pusher:error data members: ${JSON.stringify(f.data)}`);
  assert.ok(f.data.code === null || Number.isInteger(f.data.code), `code must be int or null: ${JSON.stringify(f.data)}`);
  assert.equal(typeof f.data.message, 'string');
  if (code !== undefined) assert.equal(f.data.code, code, `error code in ${JSON.stringify(f)}`);
  if (message instanceof RegExp) assert.match(f.data.message, message);
  else if (message !== undefined) assert.equal(f.data.message, message);
  if (prefix !== undefined) {
    assert.ok(f.data.message.startsWith(prefix), `error message ${JSON.stringify(f.data.message)} should start with ${JSON.stringify(prefix)}`);
  }
}

/** Frames that negative checks ignore by default (sent on every (un)subscribe
 * of the default app, which has subscription counting on). */
const NOISE = (m) => m && m.event === 'pusher_internal:subscription_count';

/**
 * Asserts that nothing but the sync pong arrives on a raw client: sends
 * pusher:ping and checks that the pong is the only frame received meanwhile
 * (frames matching `ignore` excepted).
 */
async function expectNothingMore(client, what = 'no frame', { ignore = NOISE } = {}) {
  const { between } = await client.sync();
  const rest = between.filter((m) => !ignore(m));
  assert.deepEqual(rest, [], `${what}: expected no frames before the marker pong, got ${JSON.stringify(rest)}`);
}

/**
 * Asserts that the next frame (frames matching `ignore` excepted) is the given
 * marker event — one published after the event that must not arrive.
 */
async function expectOnlyMarker(client, markerEvent, { ignore = NOISE, ms } = {}) {
  for (;;) {
    const f = await client.nextJson(ms, `marker ${markerEvent}`);
    if (ignore(f)) continue;
    assert.equal(f.event, markerEvent, `expected only the marker ${markerEvent} next, got ${JSON.stringify(f)}`);
    return f;
  }
}

/** Asserts a server-initiated close preceded by the matching pusher:error. */
async function expectErrorThenClose(client, code, reason, ms = 5000) {
  const closed = await client.waitClose(ms);
  assert.equal(closed.code, code, `close code (frames: ${client.describeFrames()}; closed ${JSON.stringify(closed)})`);
  if (reason !== undefined) assert.equal(closed.reason, reason, 'close reason');
  assert.ok(Buffer.byteLength(closed.reason, 'utf8') <= 123, 'close reason <= 123 bytes');
  const jsonFrames = client.frames.filter((f) => f.json);
  assert.ok(jsonFrames.length > 0, 'a pusher:error must precede the close');
  const last = jsonFrames[jsonFrames.length - 1].json;
  assertErrorFrame(last, { code, message: closed.reason });
  return { closed, error: last };
}

let uniq = 0;
/** A unique channel-safe name. */
function uid(prefix = 'c') {
  uniq += 1;
  return `${prefix}${process.pid}x${Date.now().toString(36)}x${uniq}`;
}

module.exports = {
  assert,
  harness,
  stringData,
  expectError,
  assertErrorFrame,
  expectNothingMore,
  expectOnlyMarker,
  expectErrorThenClose,
  NOISE,
  uid,
  ...server,
  ...clients,
  ...raw,
  ...sign,
  ...wait,
};
