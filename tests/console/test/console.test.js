'use strict';
// The debug console at /console, end to end: the real binary, headless Chromium, pusher-js.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { startServer, REPO_DIR } = require('../lib/server');
const { launch } = require('../lib/browser');
const { client, sdk, connected, subscribed, nextEvent } = require('../lib/clients');

const TOKEN = 'console-test-token-3f9a';
const WAIT = { timeout: 10000 };

/** Opens the console page with the token and waits until its feed is live. */
async function openConsole(browser, server) {
  const page = await browser.page();
  const res = await page.goto(`${server.base}/console?token=${encodeURIComponent(TOKEN)}`);
  assert.equal(res.status(), 200);
  await page.locator('#feed-status[data-state="live"]').waitFor(WAIT);
  return page;
}

/** A log row of `type` whose text contains `text`. */
function row(page, type, text) {
  return page.locator(`#log li.t-${type}`, text === undefined ? {} : { hasText: text }).first();
}

describe('console with a token', () => {
  let server;
  let browser;
  const clients = [];

  before(async () => {
    server = await startServer({ token: TOKEN });
    browser = await launch();
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    if (browser) await browser.close();
    if (server) await server.stop();
  });

  function track(c) {
    clients.push(c);
    return c;
  }

  it('refuses the page, the API and the feed without the right token (401, plain text)', async () => {
    const urls = ['/console', '/console/api/feed?app=app-id', '/console/api/apps', '/console/api/state?app=app-id'];
    for (const u of urls) {
      for (const headers of [{}, { Authorization: 'Bearer wrong' }]) {
        const res = await fetch(server.base + u, { headers });
        assert.equal(res.status, 401, `${u} ${JSON.stringify(headers)}`);
        assert.match(res.headers.get('content-type'), /^text\/plain/);
        assert.match(await res.text(), /401 Unauthorized/);
      }
      const sep = u.includes('?') ? '&' : '?';
      const res = await fetch(`${server.base}${u}${sep}token=nope`);
      assert.equal(res.status, 401, `${u} with a wrong ?token=`);
    }
    const post = await fetch(`${server.base}/console/api/events?app=app-id`, {
      method: 'POST',
      body: JSON.stringify({ name: 'x', channels: ['c'], data: '{}' }),
    });
    assert.equal(post.status, 401);

    // The browser gets the same answer for the page.
    const page = await browser.page();
    const res = await page.goto(`${server.base}/console`);
    assert.equal(res.status(), 401);
    await page.close();

    // With the token, in the header or the query.
    const ok = await fetch(`${server.base}/console/api/apps`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.equal(ok.status, 200);
    assert.deepEqual((await ok.json()).apps.map((a) => a.id), ['app-id']);
    const feed = await fetch(`${server.base}/console/api/feed?app=app-id&token=${TOKEN}`);
    assert.equal(feed.status, 200);
    assert.match(feed.headers.get('content-type'), /^text\/event-stream/);
    await feed.body.cancel();
  });

  it('signs in through the login prompt', async () => {
    const page = await browser.page();
    await page.goto(`${server.base}/console/login`);
    await page.locator('#token').fill('wrong');
    await page.getByRole('button', { name: 'Open console' }).click();
    await page.getByRole('alert').filter({ hasText: 'not right' }).waitFor(WAIT);
    await page.locator('#token').fill(TOKEN);
    await page.getByRole('button', { name: 'Open console' }).click();
    await page.locator('#feed-status[data-state="live"]').waitFor(WAIT);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('herald-console-token')), TOKEN);
    await page.close();
  });

  it("shows a pusher-js client's connection and subscription in the live log and the state", async () => {
    const page = await openConsole(browser, server);
    const c = track(client(server));
    const socketId = await connected(c);
    await subscribed(c, 'my-channel');

    await row(page, 'connected', socketId).waitFor(WAIT);
    await page.locator('#log li.t-subscribed[data-channel="my-channel"]', { hasText: socketId }).waitFor(WAIT);
    await page.locator('#log li.t-occupied[data-channel="my-channel"]').waitFor(WAIT);
    await page.locator('#channels tr[data-channel="my-channel"]').waitFor(WAIT);
    await page.waitForFunction(() => Number(document.getElementById('conn-count').textContent) >= 1, null, WAIT);

    // Unsubscribing and disconnecting show up too.
    c.unsubscribe('my-channel');
    await page.locator('#log li.t-unsubscribed[data-channel="my-channel"]', { hasText: socketId }).waitFor(WAIT);
    await page.locator('#log li.t-vacated[data-channel="my-channel"]').waitFor(WAIT);
    c.disconnect();
    await row(page, 'disconnected', socketId).waitFor(WAIT);
    await page.close();
  });

  it('sends an event from the event creator to a pusher-js subscriber', async () => {
    const page = await openConsole(browser, server);
    const c = track(client(server));
    const ch = await subscribed(c, 'chat-room');
    const received = nextEvent(ch, 'greeting');

    const form = page.locator('#send');
    await form.getByLabel('Channel').fill('chat-room');
    await form.getByLabel('Event').fill('greeting');
    const data = { text: 'hi from the console', n: 1 };
    await form.getByLabel('Data (JSON)').fill(JSON.stringify(data, null, 2));
    await form.getByRole('button', { name: 'Send event' }).click();

    assert.deepEqual(await received, data);
    await page.locator('#send-result.ok', { hasText: 'Sent greeting to chat-room' }).waitFor(WAIT);
    const publish = page.locator('#log li.t-api_publish[data-channel="chat-room"]', { hasText: 'greeting' });
    await publish.waitFor(WAIT);
    // The data size is that of the compact JSON text.
    assert.match(await publish.textContent(), new RegExp(`size${JSON.stringify(data).length} B`));

    // Invalid input comes back as the API's error.
    await form.getByLabel('Event').fill('x'.repeat(201));
    await form.getByRole('button', { name: 'Send event' }).click();
    await page.locator('#send-result.error', { hasText: '400' }).waitFor(WAIT);
    await page.close();
  });

  it('shows the presence roster of a channel', async () => {
    const page = await openConsole(browser, server);
    const alice = track(client(server, { user: { user_id: 'alice', user_info: { name: 'Alice' } } }));
    const bob = track(client(server, { user: { user_id: 'bob', user_info: { name: 'Bob' } } }));
    await subscribed(alice, 'presence-lobby');
    await subscribed(bob, 'presence-lobby');

    await page.locator('#log li.t-member_added[data-channel="presence-lobby"]', { hasText: 'bob' }).waitFor(WAIT);
    const tr = page.locator('#channels tr[data-channel="presence-lobby"]');
    await tr.waitFor(WAIT);
    await page.waitForFunction(
      () => document.querySelector('#channels tr[data-channel="presence-lobby"] td:nth-child(3)')?.textContent === '2',
      null,
      WAIT,
    );
    await tr.click();
    await page.locator('#members-channel', { hasText: 'presence-lobby' }).waitFor(WAIT);
    await page.locator('#members li', { hasText: 'alice' }).waitFor(WAIT);
    await page.locator('#members li', { hasText: 'bob' }).waitFor(WAIT);

    // The roster follows members leaving.
    bob.unsubscribe('presence-lobby');
    await page.locator('#log li.t-member_removed[data-channel="presence-lobby"]', { hasText: 'bob' }).waitFor(WAIT);
    await page.locator('#members li', { hasText: 'bob' }).waitFor({ state: 'detached', ...WAIT });
    await page.locator('#members li', { hasText: 'alice' }).waitFor(WAIT);
    await page.close();
  });

  it('filters the log by channel and type, and pauses', async () => {
    const page = await openConsole(browser, server);
    const api = sdk(server);
    await api.trigger('alpha', 'a-event', { n: 1 });
    await api.trigger('beta', 'b-event', { n: 2 });
    const alpha = page.locator('#log li.t-api_publish[data-channel="alpha"]');
    const beta = page.locator('#log li.t-api_publish[data-channel="beta"]');
    await alpha.waitFor(WAIT);
    await beta.waitFor(WAIT);

    await page.locator('#filter-channel').fill('alp');
    await beta.waitFor({ state: 'hidden', ...WAIT });
    await alpha.waitFor({ state: 'visible', ...WAIT });
    await page.locator('#filter-channel').fill('');
    await beta.waitFor({ state: 'visible', ...WAIT });

    await page.locator('#type-filters button[data-group="api"]').click();
    await alpha.waitFor({ state: 'hidden', ...WAIT });
    await page.locator('#type-filters button[data-group="api"]').click();
    await alpha.waitFor({ state: 'visible', ...WAIT });

    await page.getByRole('button', { name: 'Pause' }).click();
    await api.trigger('gamma', 'g-event', { n: 3 });
    await page.locator('#paused-note', { hasText: 'Paused: 1 new event held' }).waitFor(WAIT);
    assert.equal(await page.locator('#log li[data-channel="gamma"]').count(), 0);
    await page.getByRole('button', { name: 'Resume' }).click();
    await page.locator('#log li.t-api_publish[data-channel="gamma"]').waitFor(WAIT);
    await page.locator('#paused-note').waitFor({ state: 'hidden', ...WAIT });
    await page.close();
  });
});

describe('console screenshot', () => {
  let server;
  let browser;
  const clients = [];

  before(async () => {
    server = await startServer({ token: TOKEN });
    browser = await launch();
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    if (browser) await browser.close();
    if (server) await server.stop();
  });

  function track(c) {
    clients.push(c);
    return c;
  }

  it('renders live activity (screenshot)', async () => {
    const page = await openConsole(browser, server);
    const api = sdk(server);
    const ana = track(client(server, { user: { user_id: 'ana', user_info: {} } }));
    const ben = track(client(server, { user: { user_id: 'ben', user_info: {} } }));
    const cy = track(client(server, { user: { user_id: 'cy', user_info: {} } }));
    for (const c of [ana, ben, cy]) await subscribed(c, 'presence-team');
    const priv = await subscribed(ana, 'private-orders');
    await subscribed(ben, 'private-orders');
    await subscribed(cy, 'prices');
    await api.trigger('prices', 'tick', { symbol: 'HRLD', price: 42.17 });
    priv.trigger('client-typing', { user: 'ana', typing: true });
    await page.locator('#log li.t-client_event', { hasText: 'client-typing' }).waitFor(WAIT);
    await api.trigger(['prices', 'private-orders'], 'update', { id: 1138, status: 'shipped' });
    await page.locator('#log li.t-api_publish[data-channel="private-orders"]').waitFor(WAIT);
    const form = page.locator('#send');
    await form.getByLabel('Channel').fill('prices');
    await form.getByLabel('Event').fill('announcement');
    await form.getByLabel('Data (JSON)').fill('{"text": "markets open", "at": "09:30"}');
    await form.getByRole('button', { name: 'Send event' }).click();
    await page.locator('#send-result.ok').waitFor(WAIT);
    await page.locator('#log li.t-api_publish', { hasText: 'announcement' }).waitFor(WAIT);
    await page.locator('#channels tr[data-channel="presence-team"]').click();
    await page.locator('#members li', { hasText: 'cy' }).waitFor(WAIT);
    await page.waitForFunction(() => document.getElementById('conn-count').textContent === '3', null, WAIT);

    const png = await page.screenshot({ type: 'png' });
    assert.ok(png.length > 10000, 'a screenshot with content');
    assert.ok(png.length < 300 * 1024, `screenshot is ${png.length} bytes`);
    if (process.env.UPDATE_SCREENSHOT) {
      const out = path.join(REPO_DIR, 'docs', 'console.png');
      fs.mkdirSync(path.dirname(out), { recursive: true });
      fs.writeFileSync(out, png);
    }
    assert.deepEqual(browser.errors, []);
    await page.close();
  });
});

describe('console without a token', () => {
  it('answers 404 everywhere under /console', async () => {
    const server = await startServer();
    try {
      for (const u of ['/console', '/console/login', '/console/assets/main.js', '/console/api/apps', '/console/api/feed?app=app-id']) {
        const res = await fetch(server.base + u, { headers: { Authorization: 'Bearer anything' } });
        assert.equal(res.status, 404, u);
        await res.text();
      }
      const res = await fetch(`${server.base}/console?token=`);
      assert.equal(res.status, 404);
    } finally {
      await server.stop();
    }
  });
});
