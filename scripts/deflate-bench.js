#!/usr/bin/env node
'use strict';
// What permessage-deflate costs and saves (BENCHMARKS.md, "WebSocket compression").
//
//   cargo build --release -p herald
//   node scripts/deflate-bench.js [connections] [events] [setting ...]
//
// For each setting (`off`, `on`, a threshold in bytes, or `takeover` = threshold 256 with context
// takeover, `takeover:N` with threshold N; default: off on 256 takeover) starts target/release/herald (or $HERALD_BIN) on a free
// loopback port, then:
// 1. opens the connections with the `ws` package (which offers permessage-deflate, as browsers
//    do), each subscribed to one of 10 channels, and reads the server's VmRSS before and after:
//    RSS per idle connection;
// 2. publishes the events through the HTTP API (the `pusher` SDK), one after the other, spread
//    over the channels: a Laravel-broadcast-like JSON event of 450-500 bytes (an order with a
//    customer and three lines, ids and amounts varying), and waits until every subscriber has
//    every event. Prints the bytes the clients read per delivery (frame headers included), the
//    server's CPU time (utime + stime) per delivery over the publishing, and VmRSS per connection
//    after the stream (with context takeover the per-connection compressors exist only then).
// Defaults: 1,000 connections, 500 events (50,000 deliveries). Uses `ws` and `pusher` from
// tests/compat/node_modules (run `npm ci` there first).

const path = require('node:path');
const fs = require('node:fs');
const { spawn } = require('node:child_process');
const modules = path.join(__dirname, '..', 'tests', 'compat', 'node_modules');
const WebSocket = require(path.join(modules, 'ws'));
const Pusher = require(path.join(modules, 'pusher'));

const args = process.argv.slice(2);
const conns = Number(args[0] || 1000);
const events = Number(args[1] || 500);
const settings = args.slice(2).length ? args.slice(2) : ['off', 'on', '256', 'takeover'];
const CHANNELS = 10;
const bin = process.env.HERALD_BIN || path.join(__dirname, '..', 'target', 'release', 'herald');
const TICK_US = 1e6 / 100; // USER_HZ

const rssKb = (pid) => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
function cpuUs(pid) {
  const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) * TICK_US;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function start(setting) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('HERALD_')) env[k] = v;
  Object.assign(env, {
    HERALD_HOST: '127.0.0.1',
    HERALD_PORT: '0',
    HERALD_METRICS_PORT: '0',
    HERALD_DEFAULT_APP_SUBSCRIPTION_RATE: '0',
  });
  if (setting.startsWith('takeover')) {
    env.HERALD_SERVER_WEBSOCKET_COMPRESSION = setting.split(':')[1] || '256';
    env.HERALD_SERVER_WEBSOCKET_COMPRESSION_CONTEXT_TAKEOVER = 'true';
  } else if (setting !== 'off') {
    // (Not set for `off`, so that a build without the setting can be measured the same way.)
    env.HERALD_SERVER_WEBSOCKET_COMPRESSION = setting;
  }
  const proc = spawn(bin, [], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    proc.stdout.on('data', (d) => {
      out += d;
      const m = /listening on [^\s]*:(\d+)/.exec(out);
      if (m) resolve({ proc, port: Number(m[1]) });
    });
    proc.on('exit', (c) => reject(new Error(`herald exited with ${c}: ${out}`)));
  });
}

/** An event like a Laravel broadcast of an order update. */
function payload(i) {
  return {
    order: {
      id: 10000 + i,
      number: `ORD-2026-${String(10000 + i).padStart(6, '0')}`,
      status: ['paid', 'packed', 'shipped', 'delivered'][i % 4],
      total: (19.9 + (i % 50) * 3.25).toFixed(2),
      currency: 'EUR',
      updated_at: new Date(Date.UTC(2026, 11, 7, 12, 0, i % 60)).toISOString(),
      customer: { id: 500 + (i % 37), name: 'Ada Lovelace', email: 'ada@example.com' },
      lines: [
        { sku: `SKU-${i % 100}`, name: 'Analytical engine gear', qty: 1 + (i % 3), price: '12.50' },
        { sku: `SKU-${(i + 7) % 100}`, name: 'Punched card set', qty: 2, price: '4.99' },
        { sku: `SKU-${(i + 13) % 100}`, name: 'Brass crank', qty: 1, price: '7.25' },
      ],
    },
    socket: null,
  };
}

async function run(setting) {
  const { proc, port } = await start(setting);
  const pid = proc.pid;
  await sleep(300);
  const rss0 = rssKb(pid);
  const clients = [];
  let opened = 0;
  await new Promise((resolve, reject) => {
    const open = (i) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/app/app-key?protocol=7&client=js&version=8.6.0`);
      const c = { ws, got: 0 };
      clients.push(c);
      ws.on('message', (data) => {
        const m = JSON.parse(data.toString());
        if (m.event === 'pusher:connection_established') {
          ws.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: `orders-${i % CHANNELS}` } }));
        } else if (m.event === 'pusher_internal:subscription_succeeded') {
          opened += 1;
          if (opened === conns) resolve();
          else if (clients.length < conns) open(clients.length);
        } else if (m.event === 'order.updated') {
          c.got += 1;
        }
      });
      ws.on('error', reject);
    };
    // 50 handshakes in flight at a time.
    for (let i = 0; i < Math.min(50, conns); i++) open(i);
  });
  while (clients.length < conns) await sleep(10);
  await sleep(1000);
  const rssIdle = rssKb(pid);
  const negotiated = clients[0].ws.extensions || '(none)';
  const read0 = clients.reduce((s, c) => s + c.ws._socket.bytesRead, 0);
  const sdk = new Pusher({ appId: 'app-id', key: 'app-key', secret: 'app-secret', host: '127.0.0.1', port: String(port) });
  const cpu0 = cpuUs(pid);
  const t0 = Date.now();
  for (let i = 0; i < events; i++) await sdk.trigger(`orders-${i % CHANNELS}`, 'order.updated', payload(i));
  const expected = conns * Math.floor(events / CHANNELS);
  for (;;) {
    const got = clients.reduce((s, c) => s + c.got, 0);
    if (got >= expected) break;
    await sleep(20);
  }
  const cpu = cpuUs(pid) - cpu0;
  const secs = (Date.now() - t0) / 1000;
  await sleep(1000);
  const read = clients.reduce((s, c) => s + c.ws._socket.bytesRead, 0) - read0;
  const rssAfter = rssKb(pid);
  const json = JSON.stringify({ event: 'order.updated', channel: 'orders-0', data: JSON.stringify(payload(0)) });
  const row = {
    setting,
    negotiated,
    connections: conns,
    deliveries: expected,
    'event JSON bytes': json.length,
    'bytes read per delivery': +(read / expected).toFixed(1),
    'server CPU per delivery (us)': +(cpu / expected).toFixed(2),
    'stream seconds': +secs.toFixed(1),
    'RSS per idle connection (B)': Math.round(((rssIdle - rss0) * 1024) / conns),
    'RSS per connection after the stream (B)': Math.round(((rssAfter - rss0) * 1024) / conns),
  };
  for (const c of clients) c.ws.terminate();
  proc.kill('SIGTERM');
  await new Promise((r) => proc.on('exit', r));
  return row;
}

(async () => {
  const rows = [];
  for (const s of settings) {
    const row = await run(s);
    console.log(JSON.stringify(row));
    rows.push(row);
  }
  console.table(rows);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
