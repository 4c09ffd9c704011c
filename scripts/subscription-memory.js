#!/usr/bin/env node
'use strict';
// Measures what one channel subscription costs the server in RSS (README, Security).
//
//   cargo build --release -p herald
//   node scripts/subscription-memory.js [connections] [channels per connection] [name length] [shared]
//
// Starts target/release/herald (or $HERALD_BIN) on a free loopback port with no subscription
// cap and subscription counts off, opens the connections, reads the server's VmRSS, subscribes each connection to its
// channels (distinct names of the given length: the worst case, every subscription a channel of
// its own; with "shared", every connection subscribes the same names), waits for every
// subscription_succeeded, reads VmRSS again and prints the difference per subscription.
// Defaults: 200 connections x 1,000 channels, 197-character names (issue 19, row 3).
// Uses `ws` from tests/compat/node_modules (run `npm ci` there first).

const path = require('node:path');
const fs = require('node:fs');
const { spawn } = require('node:child_process');
const WebSocket = require(path.join(__dirname, '..', 'tests', 'compat', 'node_modules', 'ws'));

const [conns = 200, perConn = 1000, nameLen = 197] = process.argv.slice(2, 5).map(Number);
const shared = process.argv[5] === 'shared';
const bin = process.env.HERALD_BIN || path.join(__dirname, '..', 'target', 'release', 'herald');

function rssKb(pid) {
  return Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
}

function channelName(conn, i) {
  const head = shared ? `m-${i}-` : `m-${conn}-${i}-`;
  return head + 'x'.repeat(Math.max(0, nameLen - head.length));
}

async function main() {
  // A spool file of its own: the server reads and then removes it at startup.
  const spool = path.join(require('node:os').tmpdir(), `herald-submem-${process.pid}.spool`);
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('HERALD_')) env[k] = v;
  Object.assign(env, { HERALD_HOST: '127.0.0.1', HERALD_PORT: '0', HERALD_METRICS_ENABLED: 'false', HERALD_SERVER_MAX_SUBSCRIPTIONS: '0', HERALD_WEBHOOKS_SPOOL_FILE: spool, HERALD_LOG: 'warn',
    // State only: count frames to the subscribers of shared channels would queue up meanwhile.
    HERALD_DEFAULT_APP_ENABLE_SUBSCRIPTION_COUNT: 'false' });
  const proc = spawn(bin, [], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  const port = await new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /Herald listening on [0-9.]+:(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    proc.on('exit', (c) => reject(new Error(`herald exited (${c})`)));
  });
  try {
    const sockets = await Promise.all(
      Array.from({ length: conns }, () => new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/app/app-key?protocol=7`);
        ws.once('message', () => resolve(ws));
        ws.once('error', reject);
      })),
    );
    const before = rssKb(proc.pid);
    await Promise.all(sockets.map((ws, c) => new Promise((resolve, reject) => {
      let left = perConn;
      ws.on('message', (d) => {
        const f = JSON.parse(String(d));
        if (f.event === 'pusher:error') reject(new Error(JSON.stringify(f)));
        else if (f.event === 'pusher_internal:subscription_succeeded' && --left === 0) resolve();
      });
      for (let i = 0; i < perConn; i++) ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: channelName(c, i) } }));
    })));
    const after = rssKb(proc.pid);
    const subs = conns * perConn;
    console.log(JSON.stringify({
      connections: conns, channels_per_connection: perConn, name_length: nameLen, shared,
      rss_before_kib: before, rss_after_kib: after,
      bytes_per_subscription: Math.round(((after - before) * 1024) / subs),
    }));
    for (const ws of sockets) ws.terminate();
  } finally {
    proc.kill('SIGKILL');
    fs.rmSync(spool, { force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
