'use strict';
// The debug console at /console, end to end: the real binary, headless Chromium, pusher-js.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { startServer, REPO_DIR } = require('../lib/server');
const { launch } = require('../lib/browser');
const { client, sdk, connected, subscribed, nextEvent, within } = require('../lib/clients');

const TOKEN = 'console-test-token-3f9a';
const WAIT = { timeout: 10000 };

/** Signs in through the login prompt and waits until the console's feed is live. */
async function openConsole(browser, server) {
  const page = await browser.page();
  await page.goto(`${server.base}/console/login`);
  await page.locator('#token').fill(TOKEN);
  await page.getByRole('button', { name: 'Open console' }).click();
  await page.locator('#feed-status[data-state="live"]').waitFor(WAIT);
  assert.equal(new URL(page.url()).pathname, '/console');
  return page;
}

/** POSTs the sign-in form from the console's own origin; resolves to the response. */
function signIn(server, token, headers = {}) {
  return fetch(`${server.base}/console/login`, {
    method: 'POST',
    headers: { Origin: server.base, ...headers },
    body: new URLSearchParams({ token }),
  });
}

/** Signs in over plain HTTP; resolves to the `Cookie` header value of the new session. */
async function sessionCookie(server) {
  const res = await signIn(server, TOKEN);
  assert.equal(res.status, 204, await res.text());
  const set = res.headers.get('set-cookie');
  const m = /^herald_console=([0-9a-f]{64});/.exec(set);
  assert.ok(m, set);
  return `herald_console=${m[1]}`;
}

/** Reads a streamed body until `pattern` matches what came so far; resolves to that text. */
async function readUntil(reader, pattern, what) {
  const decoder = new TextDecoder();
  let text = '';
  return within(
    (async () => {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) throw new Error(`stream ended before ${what}: ${text}`);
        text += decoder.decode(value, { stream: true });
        if (pattern.test(text)) return text;
      }
    })(),
    what,
  );
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

  it('refuses the page, the API and the feed without a session (401, plain text; the page redirects)', async () => {
    const urls = ['/console/api/feed?app=app-id', '/console/api/apps', '/console/api/state?app=app-id'];
    for (const u of urls) {
      for (const headers of [{}, { Authorization: 'Bearer wrong' }, { Cookie: 'herald_console=0123abcd' }]) {
        const res = await fetch(server.base + u, { headers });
        assert.equal(res.status, 401, `${u} ${JSON.stringify(headers)}`);
        assert.match(res.headers.get('content-type'), /^text\/plain/);
        assert.match(await res.text(), /401 Unauthorized/);
      }
      // The right token in the URL is no longer taken (URLs end up in histories and logs).
      const sep = u.includes('?') ? '&' : '?';
      const res = await fetch(`${server.base}${u}${sep}token=${TOKEN}`);
      assert.equal(res.status, 401, `${u} with ?token=`);
      assert.match(await res.text(), /token in the URL is not accepted/);
    }
    const post = await fetch(`${server.base}/console/api/events?app=app-id`, {
      method: 'POST',
      body: JSON.stringify({ name: 'x', channels: ['c'], data: '{}' }),
    });
    assert.equal(post.status, 401);
    await post.text();

    // The page sends a browser to the login prompt, with or without a token in the URL.
    for (const u of ['/console', `/console?token=${TOKEN}`]) {
      const res = await fetch(server.base + u, { redirect: 'manual' });
      assert.equal(res.status, 303, u);
      assert.equal(res.headers.get('location'), '/console/login');
      await res.text();
    }
    const page = await browser.page();
    await page.goto(`${server.base}/console?token=${TOKEN}`);
    await page.locator('#login').waitFor(WAIT);
    assert.equal(new URL(page.url()).pathname, '/console/login');
    await page.close();

    // Scripts may send the token in the Authorization header.
    const ok = await fetch(`${server.base}/console/api/apps`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.equal(ok.status, 200);
    assert.deepEqual((await ok.json()).apps.map((a) => a.id), ['app-id']);
    const feed = await fetch(`${server.base}/console/api/feed?app=app-id`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    assert.equal(feed.status, 200);
    assert.match(feed.headers.get('content-type'), /^text\/event-stream/);
    await feed.body.cancel();
  });

  it('signs in through the login prompt: an HttpOnly SameSite=Strict cookie, no token or session id in any URL', async () => {
    const page = await browser.page();
    const requests = [];
    page.on('request', (r) => requests.push({ method: r.method(), url: r.url(), body: r.postData() }));
    await page.goto(`${server.base}/console/login`);
    await page.locator('#token').fill('wrong');
    await page.getByRole('button', { name: 'Open console' }).click();
    await page.getByRole('alert').filter({ hasText: 'not right' }).waitFor(WAIT);
    await page.locator('#token').fill(TOKEN);
    await page.getByRole('button', { name: 'Open console' }).click();
    await page.locator('#feed-status[data-state="live"]').waitFor(WAIT);
    assert.equal(page.url(), `${server.base}/console`);

    // The session cookie: a random id, not the token; out of reach of scripts; same-site only.
    const cookies = await browser.context.cookies(`${server.base}/console`);
    assert.equal(cookies.length, 1, JSON.stringify(cookies));
    const [cookie] = cookies;
    assert.equal(cookie.name, 'herald_console');
    assert.match(cookie.value, /^[0-9a-f]{64}$/);
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, 'Strict');
    assert.equal(cookie.path, '/console');
    assert.equal(cookie.secure, false, 'plain http here');
    const hours = (cookie.expires - Date.now() / 1000) / 3600;
    assert.ok(hours > 11.9 && hours <= 12, `expires in ${hours} h`);
    assert.equal(await page.evaluate(() => document.cookie), '');
    assert.equal(await page.evaluate(() => sessionStorage.length + localStorage.length), 0);

    // Use the page: the state panel, the event creator, the app picker (it reopens the feed).
    const form = page.locator('#send');
    await form.getByLabel('Channel').fill('url-check');
    await form.getByRole('button', { name: 'Send event' }).click();
    await page.locator('#send-result.ok').waitFor(WAIT);
    await page.locator('#log li.t-api_publish[data-channel="url-check"]').waitFor(WAIT);
    await page.reload();
    await page.locator('#feed-status[data-state="live"]').waitFor(WAIT);

    const secrets = [TOKEN, cookie.value].flatMap((v) => [v, encodeURIComponent(v), v.slice(0, 16)]);
    for (const r of requests) {
      for (const v of secrets) assert.ok(!r.url.includes(v), `${r.method} ${r.url} carries a secret`);
    }
    const paths = requests.map((r) => `${r.method} ${new URL(r.url).pathname}${new URL(r.url).search}`);
    for (const want of [
      'POST /console/login',
      'GET /console',
      'GET /console/api/apps',
      'GET /console/api/feed?app=app-id',
      'GET /console/api/state?app=app-id',
      'POST /console/api/events?app=app-id',
    ]) {
      assert.ok(paths.includes(want), `${want} among ${paths.join(', ')}`);
    }
    // The token went once, in the body of the successful sign-in (and of the wrong one before).
    const signIns = requests.filter((r) => r.method === 'POST' && r.url.endsWith('/console/login'));
    assert.deepEqual(signIns.map((r) => r.body), ['token=wrong', `token=${TOKEN}`]);
    const others = requests.filter((r) => !signIns.includes(r));
    for (const r of others) assert.ok(!(r.body || '').includes(TOKEN), `${r.method} ${r.url} body`);
    await page.close();
  });

  it('signs in by the plain form too (no script): a POST, then the console', async () => {
    const page = await browser.page();
    const urls = [];
    page.on('request', (r) => urls.push(r.url()));
    await page.goto(`${server.base}/console/login`);
    await page.locator('#token').fill(TOKEN);
    // form.submit() skips the script's submit handler: what a browser without script does.
    // The page's no-referrer policy makes this POST say `Origin: null`.
    await page.evaluate(() => HTMLFormElement.prototype.submit.call(document.getElementById('login')));
    await page.locator('#feed-status[data-state="live"]').waitFor(WAIT);
    assert.equal(page.url(), `${server.base}/console`);
    for (const u of urls) assert.ok(!u.includes(TOKEN), u);
    await page.close();
  });

  it('signs out: the session ends on the server and the page goes to the login prompt', async () => {
    const page = await openConsole(browser, server);
    const [cookie] = await browser.context.cookies(`${server.base}/console`);
    const header = `herald_console=${cookie.value}`;
    const live = await fetch(`${server.base}/console/api/apps`, { headers: { Cookie: header } });
    assert.equal(live.status, 200);
    await live.text();
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.locator('#login').waitFor(WAIT);
    assert.deepEqual(await browser.context.cookies(`${server.base}/console`), []);
    // The id is dead on the server too, not only forgotten by the browser.
    const dead = await fetch(`${server.base}/console/api/apps`, { headers: { Cookie: header } });
    assert.equal(dead.status, 401);
    await dead.text();
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

/** Server-sent events of a streamed body: `next(count, what)` resolves to the next `count` ({id, data}). */
function sseEvents(reader) {
  const decoder = new TextDecoder();
  let text = '';
  const queued = [];
  return {
    async next(count, what) {
      return within(
        (async () => {
          while (queued.length < count) {
            const { done, value } = await reader.read();
            if (done) throw new Error(`stream ended before ${what}: ${text}`);
            text += decoder.decode(value, { stream: true });
            let end;
            while ((end = text.indexOf('\n\n')) >= 0) {
              const block = text.slice(0, end);
              text = text.slice(end + 2);
              const ev = { id: null, data: null };
              for (const l of block.split('\n')) {
                if (l.startsWith('id:')) ev.id = l.slice(3).trim();
                else if (l.startsWith('data:')) ev.data = JSON.parse(l.slice(5));
              }
              if (ev.data) queued.push(ev); // keep-alive comments carry no data
            }
          }
          return queued.splice(0, count);
        })(),
        what,
      );
    },
    cancel: () => reader.cancel(),
  };
}

/** Opens the feed of the default app with the token; `lastId` as a reconnecting browser sends it. */
async function openFeedStream(server, lastId) {
  const headers = { Authorization: `Bearer ${TOKEN}` };
  if (lastId) headers['Last-Event-ID'] = lastId;
  const res = await fetch(`${server.base}/console/api/feed?app=app-id`, { headers });
  assert.equal(res.status, 200);
  return sseEvents(res.body.getReader());
}

describe('console log history', () => {
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

  /** The log's rows as {type, channel, data} in page order (newest first). */
  function rows(page) {
    return page.$$eval('#log li', (lis) =>
      lis.map((li) => ({
        type: li.dataset.type,
        channel: li.dataset.channel || null,
        text: li.textContent,
        data: li.querySelector('.kv.data')?.textContent ?? null,
      })),
    );
  }

  it('opens with what happened before, API publishes with their payload, oldest first, then live events, none twice', async () => {
    const api = sdk(server);
    const c = track(client(server));
    const socketId = await connected(c);
    await subscribed(c, 'history-room');
    const early = { note: 'published before the console opened', n: 1 };
    await api.trigger('history-room', 'before-open', early);
    const long = { text: 'y'.repeat(400) };
    await api.trigger('history-long', 'long-one', long);

    const page = await openConsole(browser, server);
    const publish = page.locator('#log li.t-api_publish[data-channel="history-room"]', { hasText: 'before-open' });
    await publish.waitFor(WAIT);
    // The payload as published (the SDK sends the compact JSON text), like a client event's.
    assert.equal(await publish.locator('.kv.data').textContent(), JSON.stringify(early));
    // Cut to 256 bytes the same way as client events, with an ellipsis.
    const longRow = page.locator('#log li.t-api_publish[data-channel="history-long"]');
    await longRow.waitFor(WAIT);
    assert.equal(await longRow.locator('.kv.data').textContent(), `${JSON.stringify(long).slice(0, 256)}…`);
    assert.match(await longRow.textContent(), new RegExp(`size${JSON.stringify(long).length} B`));
    await page.locator('#log li.t-info', { hasText: /\d+ earlier events from the server's recent history/ }).waitFor(WAIT);

    // Oldest first: the page lists newest first, so the connection is below the publishes.
    let list = await rows(page);
    const at = (pred, what) => {
      const i = list.findIndex(pred);
      assert.ok(i >= 0, `${what} in ${JSON.stringify(list.map((r) => r.type))}`);
      return i;
    };
    const iConnected = at((r) => r.type === 'connected' && r.text.includes(socketId), 'connected');
    const iSubscribed = at((r) => r.type === 'subscribed' && r.channel === 'history-room', 'subscribed');
    const iEarly = at((r) => r.type === 'api_publish' && r.channel === 'history-room', 'before-open');
    const iLong = at((r) => r.type === 'api_publish' && r.channel === 'history-long', 'long-one');
    assert.ok(iConnected > iSubscribed && iSubscribed > iEarly && iEarly > iLong, JSON.stringify({ iConnected, iSubscribed, iEarly, iLong }));

    // Then live events, above the history.
    await api.trigger('history-room', 'after-open', { n: 2 });
    await page.locator('#log li.t-api_publish[data-channel="history-room"]', { hasText: 'after-open' }).waitFor(WAIT);
    list = await rows(page);
    const count = (pred) => list.filter(pred).length;
    assert.equal(count((r) => r.type === 'connected' && r.text.includes(socketId)), 1);
    assert.equal(count((r) => r.type === 'api_publish' && r.text.includes('before-open')), 1);
    assert.equal(count((r) => r.type === 'api_publish' && r.text.includes('after-open')), 1);
    assert.ok(at((r) => r.text.includes('after-open'), 'after-open') < iEarly);

    // Events published while the page opens its feed are shown once each, in order: those
    // before the feed attached come from the history, the rest live.
    await page.reload();
    let n = 0;
    let stop = false;
    const storm = (async () => {
      while (!stop && n < 200) await api.trigger('storm', 'tick', { n: n++ });
    })();
    await page.locator('#feed-status[data-state="live"]').waitFor(WAIT);
    stop = true;
    await storm;
    await page.locator('#log li.t-api_publish[data-channel="storm"]', { hasText: `{"n":${n - 1}}` }).waitFor(WAIT);
    list = await rows(page);
    const seen = list.filter((r) => r.channel === 'storm').map((r) => JSON.parse(r.data).n).reverse();
    assert.deepEqual(seen, Array.from({ length: n }, (_, i) => i));
    // The reloaded page shows the earlier events once too.
    assert.equal(count((r) => r.type === 'api_publish' && r.text.includes('before-open')), 1);
    assert.deepEqual(browser.errors, []);
    await page.close();
  });

  it('keeps the latest 300 events of the app and resumes after the id a reconnecting browser sends', async () => {
    const own = await startServer({ token: TOKEN });
    try {
      const api = sdk(own);
      for (let i = 0; i < 320; i++) await api.trigger('bounded', 'e', { i });

      const first = await openFeedStream(own);
      const got = await first.next(301, 'the hello and 300 earlier lines');
      assert.equal(got[0].data.type, 'hello');
      assert.equal(got[0].data.history, 300);
      const history = got.slice(1);
      assert.deepEqual(
        history.map((e) => JSON.parse(e.data.data).i),
        Array.from({ length: 300 }, (_, k) => k + 20),
      );
      for (const e of history) assert.match(e.id, /^\d+-\d+$/);
      assert.equal(new Set(history.map((e) => e.id)).size, 300);
      // Then live ones, with ids that go on.
      await api.trigger('bounded', 'e', { i: 320 });
      const [live] = await first.next(1, 'the live line');
      assert.equal(JSON.parse(live.data.data).i, 320);
      await first.cancel();

      // A browser that reconnects sends the id of the last line it got: it gets only later ones.
      const again = await openFeedStream(own, history[298].id);
      const resumed = await again.next(3, 'the hello and the two lines missed');
      assert.equal(resumed[0].data.history, 2);
      assert.deepEqual(resumed.slice(1).map((e) => JSON.parse(e.data.data).i), [319, 320]);
      await api.trigger('bounded', 'e', { i: 321 });
      const [next] = await again.next(1, 'the next live line');
      assert.equal(JSON.parse(next.data.data).i, 321);
      await again.cancel();

      // An id from another run of the server (or anything else) gets the whole history.
      const other = await openFeedStream(own, '0-5');
      const [hello] = await other.next(1, 'the hello');
      assert.equal(hello.data.history, 300);
      await other.cancel();
    } finally {
      await own.stop();
    }
  });
});

describe('console sign-in, session cookie and origin checks', () => {
  let server;
  const clients = [];

  before(async () => {
    server = await startServer({ token: TOKEN });
  });

  after(async () => {
    for (const c of clients) c.disconnect();
    if (server) await server.stop();
  });

  it('answers a wrong token with 401 and a right one with a random session id in a strict cookie', async () => {
    const wrong = await signIn(server, 'not-the-token');
    assert.equal(wrong.status, 401);
    assert.match(await wrong.text(), /401 Unauthorized: that is not the console's admin token/);
    assert.equal(wrong.headers.get('set-cookie'), null);
    const missing = await fetch(`${server.base}/console/login`, { method: 'POST', body: 'nothing=here' });
    assert.equal(missing.status, 400);
    assert.match(await missing.text(), /form field `token`/);

    const res = await signIn(server, TOKEN);
    assert.equal(res.status, 204);
    const set = res.headers.get('set-cookie');
    const attrs = set.split(';').map((a) => a.trim());
    assert.match(attrs[0], /^herald_console=[0-9a-f]{64}$/);
    assert.ok(!set.includes(TOKEN));
    for (const a of ['HttpOnly', 'SameSite=Strict', 'Path=/console', 'Max-Age=43200']) assert.ok(attrs.includes(a), set);
    assert.ok(!attrs.includes('Secure'), 'plain http: not Secure');
    assert.match(res.headers.get('cache-control'), /no-store/);
    // Behind a TLS-terminating proxy the cookie is Secure; every sign-in gets its own id.
    const tls = await signIn(server, TOKEN, { 'X-Forwarded-Proto': 'https' });
    assert.equal(tls.status, 204);
    const tlsSet = tls.headers.get('set-cookie');
    assert.ok(tlsSet.split(';').map((a) => a.trim()).includes('Secure'), tlsSet);
    assert.notEqual(tlsSet.split(';')[0], attrs[0]);
  });

  it('streams the feed with the session cookie only', async () => {
    const cookie = await sessionCookie(server);
    const res = await fetch(`${server.base}/console/api/feed?app=app-id`, { headers: { Cookie: cookie } });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/event-stream/);
    const reader = res.body.getReader();
    await readUntil(reader, /"type":"hello"/, 'the hello line');
    await sdk(server).trigger('feed-check', 'ping', { n: 1 });
    await readUntil(reader, /"channel":"feed-check"[^\n]*"type":"api_publish"/, "the publish line");

    // Signing out ends the session, and with it the open feed (it checks every second).
    const out = await fetch(`${server.base}/console/logout`, {
      method: 'POST',
      headers: { Cookie: cookie, Origin: server.base },
    });
    assert.equal(out.status, 204);
    assert.match(out.headers.get('set-cookie'), /^herald_console=; .*Max-Age=0/);
    const ended = within(
      (async () => {
        for (;;) if ((await reader.read()).done) return true;
      })(),
      'the feed to end after sign-out',
    );
    assert.equal(await ended, true);
    const again = await fetch(`${server.base}/console/api/feed?app=app-id`, { headers: { Cookie: cookie } });
    assert.equal(again.status, 401);
    await again.text();
  });

  it('refuses cross-origin POSTs to the event creator (403), with a session cookie or the token, and publishes nothing', async () => {
    const cookie = await sessionCookie(server);
    const c = client(server);
    clients.push(c);
    const ch = await subscribed(c, 'csrf-target');
    const got = [];
    ch.bind_global((name, data) => {
      if (!name.startsWith('pusher:')) got.push(name);
    });
    const url = `${server.base}/console/api/events?app=app-id`;
    const post = (name, headers) =>
      fetch(url, {
        method: 'POST',
        // text/plain: what a page on another origin may send without a preflight.
        headers: { 'Content-Type': 'text/plain', ...headers },
        body: JSON.stringify({ name, channels: ['csrf-target'], data: '{}' }),
      });
    const evil = 'http://evil.example';
    // Another port of the same host is the same site: SameSite=Strict lets the cookie through.
    const sibling = `http://127.0.0.1:${server.port + 1}`;
    const attempts = [
      ['cookie-evil-origin', { Cookie: cookie, Origin: evil }],
      ['cookie-sibling-origin', { Cookie: cookie, Origin: sibling }],
      ['cookie-null-origin', { Cookie: cookie, Origin: 'null' }],
      ['bearer-evil-origin', { Authorization: `Bearer ${TOKEN}`, Origin: evil }],
      ['cookie-cross-site', { Cookie: cookie, 'Sec-Fetch-Site': 'cross-site' }],
      ['cookie-same-site', { Cookie: cookie, 'Sec-Fetch-Site': 'same-site', Referer: `${server.base}/console` }],
      ['cookie-evil-referer', { Cookie: cookie, Referer: `${evil}/page` }],
    ];
    for (const [name, headers] of attempts) {
      const res = await post(name, headers);
      assert.equal(res.status, 403, name);
      assert.match(await res.text(), /403 Forbidden: cross-origin request refused/, name);
    }
    // Sign-in and sign-out take no cross-origin requests either.
    const login = await signIn(server, TOKEN, { Origin: evil });
    assert.equal(login.status, 403);
    assert.equal(login.headers.get('set-cookie'), null);
    await login.text();
    const logout = await fetch(`${server.base}/console/logout`, { method: 'POST', headers: { Cookie: cookie, Origin: evil } });
    assert.equal(logout.status, 403);
    await logout.text();

    // From the console's own origin the same request publishes (the session survived the above).
    const marker = nextEvent(ch, 'same-origin-marker');
    const ok = await post('same-origin-marker', { Cookie: cookie, Origin: server.base });
    assert.equal(ok.status, 200, await ok.text());
    await marker;
    // Events of one channel arrive in order: nothing refused was published before the marker.
    assert.deepEqual(got, ['same-origin-marker']);
  });

  it('refuses a cross-origin POST from a page in Chromium that holds a session', async () => {
    const browser = await launch();
    // A page on another port of 127.0.0.1: another origin but the same site, so the browser
    // sends the SameSite=Strict cookie along; only the origin check stands in the way.
    const attacker = http.createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end('<!doctype html><title>elsewhere</title>');
    });
    attacker.listen(0, '127.0.0.1');
    try {
      await new Promise((resolve) => attacker.once('listening', resolve));
      const c = client(server);
      clients.push(c);
      const ch = await subscribed(c, 'csrf-browser');
      const got = [];
      ch.bind_global((name) => {
        if (!name.startsWith('pusher:')) got.push(name);
      });
      await openConsole(browser, server);
      const page = await browser.page();
      await page.goto(`http://127.0.0.1:${attacker.address().port}/`);
      const target = `${server.base}/console/api/events?app=app-id`;
      const answered = page.waitForResponse((r) => r.url() === target, WAIT);
      await page.evaluate(
        (u) =>
          fetch(u, {
            method: 'POST',
            mode: 'no-cors',
            credentials: 'include',
            headers: { 'Content-Type': 'text/plain' },
            body: JSON.stringify({ name: 'forged', channels: ['csrf-browser'], data: '{}' }),
          }).then(() => 'sent'),
        target,
      );
      const res = await answered;
      assert.equal(res.status(), 403);
      const sent = await res.request().allHeaders();
      assert.match(sent.cookie || '', /herald_console=/, 'the browser did send the session cookie');
      assert.equal(sent.origin, `http://127.0.0.1:${attacker.address().port}`);

      const marker = nextEvent(ch, 'after-forgery');
      await sdk(server).trigger('csrf-browser', 'after-forgery', {});
      await marker;
      assert.deepEqual(got, ['after-forgery']);
    } finally {
      attacker.close();
      await browser.close();
    }
  });
});

describe('console sign-in rate limit', () => {
  let server;

  before(async () => {
    server = await startServer({ token: TOKEN });
  });

  after(async () => {
    if (server) await server.stop();
  });

  it('limits wrong tokens to a few a second (429), then lets the right one in', async () => {
    const started = Date.now();
    const results = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        signIn(server, `guess-${i}`).then(async (r) => ({ status: r.status, retry: r.headers.get('retry-after'), text: await r.text() })),
      ),
    );
    const seconds = (Date.now() - started) / 1000;
    const wrong = results.filter((r) => r.status === 401).length;
    const limited = results.filter((r) => r.status === 429);
    assert.equal(wrong + limited.length, 30, JSON.stringify(results.map((r) => r.status)));
    // Documented: 5 a second, burst 5; a margin of one for a refill racing the count.
    assert.ok(wrong <= 5 + 5 * seconds + 1, `${wrong} wrong tokens compared in ${seconds} s`);
    assert.ok(limited.length > 0);
    assert.equal(limited[0].retry, '1');
    assert.match(limited[0].text, /429 Too Many Requests: too many wrong console tokens/);
    // Wrong bearer tokens count too.
    const bearer = await Promise.all(
      Array.from({ length: 20 }, () =>
        fetch(`${server.base}/console/api/apps`, { headers: { Authorization: 'Bearer guess' } }).then(async (r) => {
          await r.text();
          return r.status;
        }),
      ),
    );
    assert.ok(bearer.includes(429), JSON.stringify(bearer));
    assert.ok(bearer.every((st) => st === 401 || st === 429), JSON.stringify(bearer));

    // The limit refills: the right token gets in within a few seconds.
    const ok = await within(
      (async () => {
        for (;;) {
          const r = await signIn(server, TOKEN);
          await r.text();
          if (r.status === 204) return r.status;
          assert.equal(r.status, 429);
          await new Promise((resolve) => setTimeout(resolve, 250));
        }
      })(),
      'the right token to be let in',
    );
    assert.equal(ok, 204);
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
