'use strict';
// Scale-out test support (CLUSTER-*):
//
//  * startRedis — a real `redis-server` on a free loopback port (no persistence,
//    not daemonized), which a test can kill -9 and restart on the same port.
//  * redisCommand — a minimal RESP client, to look at the adapter's keys.
//  * startCluster — N Herald nodes joined through one Redis (HERALD_ADAPTER=redis,
//    a prefix unique to the test), each ready (/readyz 200) and each receiving
//    the other nodes' deliveries (checked with a warm-up channel).
//  * frame helpers for pusher-js clients: every decoded message a client saw is
//    in client.__messages (lib/clients.js); waitMsg awaits one, count counts them.

const net = require('node:net');
const fs = require('node:fs');
const { spawn, execFileSync } = require('node:child_process');
const { startHerald } = require('./webhook_receiver');
const { Pool, sdk, sdkCall } = require('./clients');
const { rawConnect } = require('./raw');
const { withTimeout, waitFor } = require('./wait');

/** A free TCP port on 127.0.0.1 (the listener is closed before returning). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Throws a clear error when redis-server is not installed. */
function requireRedisServer() {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'ignore' });
  } catch (_) {
    throw new Error('redis-server is not on PATH: run `scripts/redis.sh start` (installs Debian\'s redis-server)');
  }
}

// ---------------------------------------------------------------- RESP client

function encodeCommand(args) {
  let out = `*${args.length}\r\n`;
  for (const a of args) {
    const s = Buffer.from(String(a), 'utf8');
    out += `$${s.length}\r\n${s.toString('utf8')}\r\n`;
  }
  return out;
}

/** Parses one RESP reply from buf at offset; returns [value, nextOffset] or null if incomplete. */
function parseReply(buf, off = 0) {
  const eol = buf.indexOf('\r\n', off);
  if (eol < 0) return null;
  const type = String.fromCharCode(buf[off]);
  const line = buf.toString('utf8', off + 1, eol);
  const next = eol + 2;
  switch (type) {
    case '+':
      return [line, next];
    case '-':
      return [new Error(line), next];
    case ':':
      return [Number(line), next];
    case '$': {
      const n = Number(line);
      if (n < 0) return [null, next];
      if (buf.length < next + n + 2) return null;
      return [buf.toString('utf8', next, next + n), next + n + 2];
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return [null, next];
      const arr = [];
      let p = next;
      for (let i = 0; i < n; i++) {
        const r = parseReply(buf, p);
        if (!r) return null;
        arr.push(r[0]);
        p = r[1];
      }
      return [arr, p];
    }
    default:
      throw new Error(`unexpected RESP type ${JSON.stringify(type)}`);
  }
}

/** Runs one command on 127.0.0.1:port and resolves with its reply (rejects on a RESP error). */
function redisCommand(port, ...args) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const sock = net.connect(port, '127.0.0.1');
      let buf = Buffer.alloc(0);
      sock.on('connect', () => sock.write(encodeCommand(args)));
      sock.on('data', (d) => {
        buf = Buffer.concat([buf, d]);
        let r;
        try {
          r = parseReply(buf);
        } catch (e) {
          sock.destroy();
          reject(e);
          return;
        }
        if (!r) return;
        sock.destroy();
        if (r[0] instanceof Error) reject(r[0]);
        else resolve(r[0]);
      });
      sock.on('error', reject);
    }),
    2000,
    `redis ${args.join(' ')} on port ${port}`,
  );
}

// ------------------------------------------------------------------- Redis

/**
 * Starts `redis-server --port P --bind 127.0.0.1 --save '' --appendonly no` (P free
 * unless given) and waits until it answers PING. Resolves to
 * { port, url, output(), kill() (SIGKILL, awaits exit), restart() (same port), stop() }.
 */
async function startRedis({ port } = {}) {
  requireRedisServer();
  const r = { port: port || (await freePort()), proc: null, log: '' };
  r.url = `redis://127.0.0.1:${r.port}`;

  async function spawnOnce() {
    const proc = spawn('redis-server', ['--port', String(r.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    r.proc = proc;
    const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
    proc.exited = exited;
    for (const s of [proc.stdout, proc.stderr]) {
      s.setEncoding('utf8');
      s.on('data', (d) => {
        r.log += d;
        if (r.log.length > 1 << 18) r.log = r.log.slice(-(1 << 17));
      });
    }
    let gone = null;
    exited.then((e) => (gone = e));
    await waitFor(
      async () => {
        if (gone) throw new Error(`redis-server exited (${JSON.stringify(gone)}): ${r.log.slice(-2000)}`);
        return (await redisCommand(r.port, 'PING')) === 'PONG';
      },
      10000,
      `redis-server on port ${r.port} to answer PING`,
    );
    if (gone) throw new Error(`redis-server exited (${JSON.stringify(gone)}): ${r.log.slice(-2000)}`);
  }

  r.running = () => !!r.proc && r.proc.exitCode === null && r.proc.signalCode === null;
  r.output = () => r.log;
  /** kill -9 and wait for the process to be gone. */
  r.kill = async () => {
    if (!r.running()) return;
    r.proc.kill('SIGKILL');
    await withTimeout(r.proc.exited, 5000, 'redis-server exit after SIGKILL');
  };
  /** A new, empty redis-server on the same port (retries while the port is still held). */
  r.restart = async () => {
    await r.kill();
    const deadline = Date.now() + 10000;
    for (;;) {
      try {
        await spawnOnce();
        return;
      } catch (e) {
        if (r.running()) r.proc.kill('SIGKILL');
        if (Date.now() > deadline) throw e;
        await new Promise((res) => setTimeout(res, 200));
      }
    }
  };
  r.stop = () => {
    if (r.running()) r.proc.kill('SIGKILL');
  };
  await spawnOnce();
  return r;
}

// ------------------------------------------------------------------- Herald

/** Status of GET /readyz on a node's main port (0 when it does not answer). */
async function readyz(node) {
  try {
    const res = await fetch(`${node.httpBase}/readyz`);
    await res.text();
    return res.status;
  } catch (_) {
    return 0;
  }
}

/** Waits until every node's /readyz answers `status`. */
function waitReadyz(nodes, status, ms, what) {
  return waitFor(
    async () => {
      const got = await Promise.all(nodes.map(readyz));
      return got.every((s) => s === status) ? got : false;
    },
    ms,
    what || `/readyz ${status} on ${nodes.length} node(s)`,
  );
}

let clusterCounter = 0;

/**
 * Starts `count` Herald nodes joined through `redis` with a prefix unique to the
 * caller. `env` adds HERALD_* variables to every node. Resolves when every node
 * answers /readyz 200 and every node delivers what the others publish.
 *
 * Returns { nodes, prefix, redis, pool, api(i), stop() }; nodes[i].label is 'n<i+1>'.
 */
async function startCluster({ redis, count = 4, env = {}, prefix } = {}) {
  const pfx = prefix || `hc${process.pid}x${Date.now().toString(36)}x${++clusterCounter}`;
  const nodes = [];
  const c = {
    nodes,
    prefix: pfx,
    redis,
    pool: null,
    api: (i) => sdk(nodes[i]),
    stop() {
      if (c.pool) c.pool.closeAll();
      for (const n of nodes) {
        n.stop();
        try {
          fs.rmSync(n.spoolFile, { force: true });
        } catch (_) {}
      }
    },
    /** Every node's output, labelled, for failure messages. */
    logs(filter = () => true) {
      return nodes
        .map((n) =>
          n
            .output()
            .split('\n')
            .filter((l) => l && filter(l))
            .map((l) => `[${n.label}] ${l.replace(/\x1b\[[0-9;]*m/g, '')}`)
            .join('\n'),
        )
        .join('\n');
    },
  };
  try {
    for (let i = 0; i < count; i++) {
      const n = await startHerald({
        HERALD_ADAPTER: 'redis',
        // an engine from lib/engines.js names every HERALD_REDIS_* setting it needs
        ...(redis.env || { HERALD_REDIS_URL: redis.url }),
        HERALD_REDIS_PREFIX: pfx,
        ...env,
      });
      n.label = `n${i + 1}`;
      nodes.push(n);
    }
    c.pool = new Pool(nodes[0]);
    await waitReadyz(nodes, 200, 10000, 'every node ready (connected to Redis)');
    await warmUp(c);
  } catch (e) {
    c.stop();
    throw e;
  }
  return c;
}

/**
 * Waits until each node receives what another node publishes (their pub/sub
 * subscriptions are in place): one raw client per node on a warm-up channel;
 * node 1 publishes until nodes 2..N have an event, node 2 until node 1 has one.
 */
async function warmUp(c, ms = 10000) {
  const ch = `warmup-${c.prefix}`;
  const clients = [];
  try {
    for (const n of c.nodes) {
      const r = await rawConnect(n);
      clients.push(r);
      await r.subscribeOk(ch);
    }
    // client i counts only events published by another node (received through Redis)
    const got = (i) =>
      clients[i].events((m) => m.event === 'warm' && m.channel === ch && JSON.parse(m.data).from !== i).length > 0;
    let k = 0;
    await waitFor(
      async () => {
        const missing = clients.map((_, i) => i).filter((i) => !got(i));
        if (missing.length === 0) return true;
        const from = missing.includes(0) ? 1 : 0;
        await c.api(from).trigger(ch, 'warm', { from, k: ++k });
        await new Promise((r) => setTimeout(r, 100)); // pacing of the probes, not a settle
        return c.nodes.every((_, i) => got(i));
      },
      ms,
      `cross-node delivery between all ${c.nodes.length} nodes (warm-up)`,
    );
  } finally {
    for (const r of clients) r.close();
  }
}

// ------------------------------------------------------- pusher-js frames

/** Messages a pusher-js client received that match pred. */
function msgs(client, pred) {
  return client.__messages.filter(pred);
}

/** How many `event` frames (on `channel` when given) a pusher-js client received. */
function count(client, event, channel, pred = () => true) {
  return msgs(client, (m) => m.event === event && (channel === undefined || m.channel === channel) && pred(m)).length;
}

function describe(client) {
  const s = JSON.stringify(client.__messages.map((m) => ({ event: m.event, channel: m.channel, data: m.data })));
  return s.length > 3000 ? `${s.slice(0, 3000)}…` : s;
}

/** Resolves with the first message (already received or later) matching pred. */
function waitMsg(client, pred, ms = 5000, what = 'message') {
  const hit = () => client.__messages.find(pred);
  const now = hit();
  if (now) return Promise.resolve(now);
  let cb;
  return withTimeout(
    new Promise((resolve) => {
      cb = () => {
        const m = hit();
        if (m) resolve(m);
      };
      client.connection.bind('message', cb);
    }),
    ms,
    `${what} (socket ${client.connection.socket_id}; messages so far: ${describe(client)})`,
  ).finally(() => client.connection.unbind('message', cb));
}

/** Waits for an `event` frame on `channel` (data matched by `dataPred` when given). */
function waitEvent(client, event, channel, ms = 5000, dataPred = () => true) {
  return waitMsg(client, (m) => m.event === event && m.channel === channel && dataPred(m.data), ms, `${event} on ${channel}`);
}

/** API GET through the pusher SDK; resolves with the parsed JSON (asserting 200). */
async function apiGet(node, path, params = {}) {
  const r = await sdkCall(sdk(node).get({ path, params }));
  if (r.status !== 200) throw new Error(`GET ${path} on ${node.label || node.port}: ${r.status} ${r.text}`);
  return r.json();
}

module.exports = {
  freePort,
  requireRedisServer,
  redisCommand,
  startRedis,
  readyz,
  waitReadyz,
  startCluster,
  warmUp,
  msgs,
  count,
  describe,
  waitMsg,
  waitEvent,
  apiGet,
};
