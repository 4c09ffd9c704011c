'use strict';
// FALLBACK-WEB-*: pusher-js in headless Chromium on a page without WebSocket falls back to the
// HTTP transports by itself (xhr_streaming first) and works against Herald across origins
// (the page is served from another port, so every request is a CORS request with a preflight):
// subscribe, receive, client events and presence with a WebSocket client in Node, and a
// reconnect after the server closed the session.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const path = require('node:path');
const fs = require('node:fs');
const { startServer, DEFAULT_APP } = require('../lib/server');
const { launch } = require('../lib/browser');
const { client, sdk, connected, subscribed, nextEvent, within } = require('../lib/clients');

const PUSHER_MIN = path.join(__dirname, '..', 'node_modules', 'pusher-js', 'dist', 'web', 'pusher.min.js');

/** The page: WebSocket removed before pusher-js loads; channel auth through this origin's /auth. */
function page(heraldPort) {
  return `<!doctype html><meta charset="utf-8"><title>fallback</title>
<script>delete window.WebSocket; delete window.MozWebSocket; window.WebSocket = undefined; window.MozWebSocket = undefined;</script>
<script src="/pusher.min.js"></script>
<script>
window.events = [];
window.pusher = new Pusher(${JSON.stringify(DEFAULT_APP.key)}, {
  cluster: 'mt1', forceTLS: false, disableStats: true,
  wsHost: '127.0.0.1', wsPort: ${heraldPort},
  httpHost: '127.0.0.1', httpPort: ${heraldPort},
  channelAuthorization: { endpoint: '/auth', transport: 'ajax' },
});
window.subscribe = (name) => new Promise((resolve, reject) => {
  const ch = window.pusher.subscribe(name);
  ch.bind('pusher:subscription_succeeded', () => resolve(ch.members ? ch.members.count : null));
  ch.bind('pusher:subscription_error', (e) => reject(new Error(JSON.stringify(e))));
  ch.bind_global((event, data) => window.events.push({ channel: name, event, data }));
});
</script>`;
}

describe('pusher-js in Chromium without WebSocket', () => {
  let server;
  let web;
  let browser;
  const nodeClients = [];

  before(async () => {
    server = await startServer({ env: { HERALD_SERVER_FALLBACK_SESSION_TIMEOUT: '2' } });
    const signer = sdk(server);
    web = http.createServer((req, res) => {
      if (req.url === '/') {
        res.writeHead(200, { 'content-type': 'text/html' });
        return res.end(page(server.port));
      }
      if (req.url === '/pusher.min.js') {
        res.writeHead(200, { 'content-type': 'application/javascript' });
        return res.end(fs.readFileSync(PUSHER_MIN));
      }
      if (req.url === '/auth' && req.method === 'POST') {
        let body = '';
        req.on('data', (d) => (body += d));
        return req.on('end', () => {
          const q = new URLSearchParams(body);
          const name = q.get('channel_name');
          const presence = name.startsWith('presence-') ? { user_id: 'browser', user_info: { via: 'chromium' } } : undefined;
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify(signer.authorizeChannel(q.get('socket_id'), name, presence)));
        });
      }
      res.writeHead(404);
      res.end();
    });
    await new Promise((r) => web.listen(0, '127.0.0.1', r));
    browser = await launch();
  });

  after(async () => {
    for (const c of nodeClients) c.disconnect();
    if (browser) await browser.close();
    if (web) web.close();
    if (server) await server.stop();
  });

  it('FALLBACK-WEB-1 falls back to xhr_streaming by itself; subscribe, receive, client events and presence work across origins; a closed page is reaped (member_removed)', async () => {
    const p = await browser.page();
    await p.goto(`http://127.0.0.1:${web.address().port}/`);
    assert.equal(await p.evaluate(() => typeof window.WebSocket), 'undefined', 'the page has no WebSocket');
    await p.waitForFunction(() => window.pusher.connection.state === 'connected', null, { timeout: 15000 });
    const transport = await p.evaluate(() => window.pusher.connection.connection.transport.name);
    assert.equal(transport, 'xhr_streaming');
    const socketId = await p.evaluate(() => window.pusher.connection.socket_id);
    assert.match(socketId, /^\d+\.\d+$/);

    // Presence with a WebSocket client in Node.
    const name = `presence-web-${Date.now()}`;
    const ws = client(server, { user: { user_id: 'node', user_info: { via: 'ws' } } });
    nodeClients.push(ws);
    await connected(ws);
    const wsCh = await subscribed(ws, name);
    const added = nextEvent(wsCh, 'pusher:member_added');
    const count = await p.evaluate((n) => window.subscribe(n), name);
    assert.equal(count, 2, 'the browser sees both members');
    assert.deepEqual(await within(added, 'member_added'), { id: 'browser', info: { via: 'chromium' } });

    // An API event, and one excluding the browser's socket (it must not arrive).
    await sdk(server).trigger(name, 'skipped', { n: 0 }, { socket_id: socketId });
    await sdk(server).trigger(name, 'api-event', { n: 1 });
    await p.waitForFunction(() => window.events.some((e) => e.event === 'api-event'), null, { timeout: 10000 });
    const got = await p.evaluate(() => window.events.map((e) => e.event));
    assert.ok(!got.includes('skipped'), `the excluded event arrived: ${got}`);

    // Client events both ways.
    const fromWeb = nextEvent(wsCh, 'client-from-web');
    await p.evaluate((n) => window.pusher.channel(n).trigger('client-from-web', { hi: 'ws' }), name);
    assert.deepEqual(await within(fromWeb, 'client event from the browser'), { hi: 'ws' });
    assert.ok(wsCh.trigger('client-from-node', { hi: 'web' }));
    await p.waitForFunction(() => window.events.some((e) => e.event === 'client-from-node'), null, { timeout: 10000 });
    const ce = await p.evaluate(() => window.events.find((e) => e.event === 'client-from-node'));
    assert.deepEqual(ce.data, { hi: 'web' });

    // Closing the page abandons the session: reaped after the timeout, as a client that left.
    const removed = nextEvent(wsCh, 'pusher:member_removed');
    await p.close();
    assert.deepEqual(await within(removed, 'member_removed after the page closed', 15000), { id: 'browser', info: { via: 'chromium' } });
  });

  it('FALLBACK-WEB-2 after the server closes the session (a message over the size limit: 1009), pusher-js reconnects over xhr_streaming and resubscribes', async () => {
    const p = await browser.page();
    await p.goto(`http://127.0.0.1:${web.address().port}/`);
    await p.waitForFunction(() => window.pusher.connection.state === 'connected', null, { timeout: 15000 });
    const first = await p.evaluate(() => window.pusher.connection.socket_id);
    const name = `web-reconnect-${Date.now()}`;
    await p.evaluate((n) => window.subscribe(n), name);
    // A message over server.max_ws_message_bytes (64 KiB): the server closes the session.
    await p.evaluate(() => window.pusher.send_event('client-too-big', 'x'.repeat(70000)));
    await p.waitForFunction(
      (old) => window.pusher.connection.state === 'connected' && window.pusher.connection.socket_id !== old,
      first,
      { timeout: 20000 },
    );
    const transport = await p.evaluate(() => window.pusher.connection.connection.transport.name);
    assert.equal(transport, 'xhr_streaming');
    // Resubscribed on the new session: an API event reaches it.
    await p.waitForFunction((n) => window.pusher.channel(n).subscribed, name, { timeout: 10000 });
    await sdk(server).trigger(name, 'after-reconnect', { n: 2 });
    await p.waitForFunction(() => window.events.some((e) => e.event === 'after-reconnect'), null, { timeout: 10000 });
    await p.close();
  });
});
