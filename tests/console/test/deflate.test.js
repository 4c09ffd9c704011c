'use strict';
// WSF-DEFLATE-BROWSER: Chromium negotiates permessage-deflate with Herald (the browser always
// offers it) when `server.websocket_compression` is on; pusher-js in the page receives events
// intact, large and small, and the client events Chromium sends compressed reach another client.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');
const Pusher = require('pusher');
const { launch } = require('../lib/browser');
const { startServer, DEFAULT_APP } = require('../lib/server');

const PUSHER_JS = path.join(path.dirname(require.resolve('pusher-js/package.json')), 'dist', 'web', 'pusher.min.js');
const WAIT = 15000;

/** Opens a page with pusher-js; every WebSocket the page makes is kept in `window.sockets`. */
async function page(browser, server) {
  const p = await browser.page();
  await p.exposeFunction('channelAuth', (socketId, channel) => {
    const sig = crypto.createHmac('sha256', DEFAULT_APP.secret).update(`${socketId}:${channel}`).digest('hex');
    return `${DEFAULT_APP.key}:${sig}`;
  });
  await p.goto(`${server.base}/healthz`);
  await p.evaluate(() => {
    const Native = window.WebSocket;
    window.sockets = [];
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        window.sockets.push(this);
      }
    };
  });
  await p.addScriptTag({ path: PUSHER_JS });
  return p;
}

/** Connects a pusher-js client in the page as `window[name]`, subscribed to `channel`. */
function connect(p, server, name, channel) {
  return p.evaluate(
    ({ port, key, name, channel }) =>
      new Promise((resolve, reject) => {
        const pusher = new window.Pusher(key, {
          wsHost: '127.0.0.1',
          wsPort: port,
          forceTLS: false,
          enabledTransports: ['ws'],
          cluster: 'mt1',
          channelAuthorization: {
            customHandler: ({ socketId, channelName }, cb) =>
              window.channelAuth(socketId, channelName).then((auth) => cb(null, { auth }), cb),
          },
        });
        window[name] = { pusher, events: [] };
        const ch = pusher.subscribe(channel);
        ch.bind_global((event, data) => {
          if (!event.startsWith('pusher')) window[name].events.push({ event, data });
        });
        ch.bind('pusher:subscription_succeeded', () => resolve(pusher.connection.socket_id));
        ch.bind('pusher:subscription_error', (e) => reject(new Error(JSON.stringify(e))));
      }),
    { port: server.port, key: DEFAULT_APP.key, name, channel },
  );
}

const events = (p, name) => p.evaluate((n) => window[n].events, name);

async function waitEvents(p, name, count) {
  await p.waitForFunction(({ n, count }) => window[n].events.length >= count, { n: name, count }, { timeout: WAIT });
  return events(p, name);
}

describe('WSF-DEFLATE-BROWSER Chromium and permessage-deflate', () => {
  let browser;
  let on;
  let off;
  before(async () => {
    on = await startServer({ env: { HERALD_SERVER_WEBSOCKET_COMPRESSION: '256' } });
    off = await startServer();
    browser = await launch();
  });
  after(async () => {
    if (browser) await browser.close();
    for (const s of [on, off]) if (s) await s.stop();
  });

  it('WSF-DEFLATE-BROWSER-1 Chromium negotiates it with Herald; events large and small arrive intact', async () => {
    const p = await page(browser, on);
    await connect(p, on, 'a', 'private-orders');
    await connect(p, on, 'b', 'private-orders');
    const exts = await p.evaluate(() => window.sockets.map((s) => s.extensions));
    assert.deepEqual(exts, [
      'permessage-deflate; server_no_context_takeover; client_no_context_takeover',
      'permessage-deflate; server_no_context_takeover; client_no_context_takeover',
    ]);
    const sdk = new Pusher({ appId: DEFAULT_APP.id, key: DEFAULT_APP.key, secret: DEFAULT_APP.secret, host: '127.0.0.1', port: String(on.port) });
    const big = {
      order: { id: 1042, status: 'shipped', customer: { id: 77, name: 'Ada Lovelace', email: 'ada@example.com' } },
      lines: Array.from({ length: 20 }, (_, i) => ({ sku: `SKU-${i}`, qty: i + 1, price: '9.90' })),
    };
    const small = { id: 1 };
    await sdk.trigger('private-orders', 'big', big);
    await sdk.trigger('private-orders', 'small', small);
    assert.deepEqual(await waitEvents(p, 'a', 2), [
      { event: 'big', data: big },
      { event: 'small', data: small },
    ]);
    // A client event from the browser (Chromium compresses what it sends) reaches the other client.
    const note = { text: 'Packed and ready. '.repeat(30) };
    await p.evaluate((note) => window.a.pusher.channel('private-orders').trigger('client-note', note), note);
    const got = await waitEvents(p, 'b', 3);
    assert.deepEqual(got[2], { event: 'client-note', data: note });
    await p.close();
  });

  it('WSF-DEFLATE-BROWSER-2 with compression off Chromium gets no extension and the same events', async () => {
    const p = await page(browser, off);
    await connect(p, off, 'a', 'private-orders');
    assert.deepEqual(await p.evaluate(() => window.sockets.map((s) => s.extensions)), ['']);
    const sdk = new Pusher({ appId: DEFAULT_APP.id, key: DEFAULT_APP.key, secret: DEFAULT_APP.secret, host: '127.0.0.1', port: String(off.port) });
    await sdk.trigger('private-orders', 'small', { id: 1 });
    assert.deepEqual(await waitEvents(p, 'a', 1), [{ event: 'small', data: { id: 1 } }]);
    await p.close();
  });
});
