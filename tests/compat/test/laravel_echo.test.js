'use strict';
// LARAVEL-*: a Laravel app pointed at Herald as docs/laravel.md says. laravel-echo is built with
// exactly the options of the guide (both the `pusher` and the `reverb` broadcaster, fed the
// guide's .env values as Vite would), channel authorization comes from a small HTTP server that
// answers as Laravel's /broadcasting/auth does (signing with the `pusher` SDK, as Laravel's
// PusherBroadcaster signs with pusher-php-server), and events are sent the way
// PusherBroadcaster::broadcast sends them, through the `pusher` SDK configured like the
// connection in config/broadcasting.php.

const { test, before, after, afterEach } = require('node:test');
const http = require('node:http');
const PusherJS = require('pusher-js');
const PusherServer = require('pusher');
const h = require('../lib');
const { assert } = h;

// laravel-echo 2.5 is an ES module whose CommonJS file cannot be required (its package.json says
// "type": "module" over a .js file written for CommonJS): import the ES build, as a bundler does.
let Echo;
before(async () => {
  Echo = (await import('laravel-echo')).default;
});

// The default app serves the `pusher` connection; the `reverb` connection gets an app of its own
// from a config file, as docs/laravel.md shows for your own credentials.
const REVERB_APP = {
  id: 'my-laravel-app',
  key: 'my-laravel-key',
  secret: 'a-long-random-secret',
  enable_client_messages: true,
  emit_subscription_error: true,
};
const ctx = h.harness({ reverb: { apps: [REVERB_APP] } });

/** docs/laravel.md, section 2a: the .env of the `pusher` connection (with the test server's port). */
function pusherEnv(port) {
  const env = {
    BROADCAST_CONNECTION: 'pusher',
    PUSHER_APP_ID: 'app-id',
    PUSHER_APP_KEY: 'app-key',
    PUSHER_APP_SECRET: 'app-secret',
    PUSHER_HOST: '127.0.0.1',
    PUSHER_PORT: String(port),
    PUSHER_SCHEME: 'http',
    PUSHER_APP_CLUSTER: 'mt1',
  };
  // VITE_PUSHER_* = "${PUSHER_*}": what import.meta.env holds in the browser bundle (strings).
  for (const k of ['APP_KEY', 'HOST', 'PORT', 'SCHEME', 'APP_CLUSTER']) env[`VITE_PUSHER_${k}`] = env[`PUSHER_${k}`];
  return env;
}

/** docs/laravel.md, section 2b: the .env of the `reverb` connection. */
function reverbEnv(port) {
  const env = {
    BROADCAST_CONNECTION: 'reverb',
    REVERB_APP_ID: REVERB_APP.id,
    REVERB_APP_KEY: REVERB_APP.key,
    REVERB_APP_SECRET: REVERB_APP.secret,
    REVERB_HOST: '127.0.0.1',
    REVERB_PORT: String(port),
    REVERB_SCHEME: 'http',
  };
  for (const k of ['APP_KEY', 'HOST', 'PORT', 'SCHEME']) env[`VITE_REVERB_${k}`] = env[`REVERB_${k}`];
  return env;
}

/** config/broadcasting.php as the guide shows it: the connection `BROADCAST_CONNECTION` names. */
function broadcastingConfig(env) {
  const connections = {
    pusher: {
      driver: 'pusher',
      key: env.PUSHER_APP_KEY,
      secret: env.PUSHER_APP_SECRET,
      app_id: env.PUSHER_APP_ID,
      options: {
        cluster: env.PUSHER_APP_CLUSTER,
        host: env.PUSHER_HOST || `api-${env.PUSHER_APP_CLUSTER ?? 'mt1'}.pusher.com`,
        port: env.PUSHER_PORT ?? 443,
        scheme: env.PUSHER_SCHEME ?? 'https',
        encrypted: true,
        useTLS: (env.PUSHER_SCHEME ?? 'https') === 'https',
      },
    },
    reverb: {
      driver: 'reverb',
      key: env.REVERB_APP_KEY,
      secret: env.REVERB_APP_SECRET,
      app_id: env.REVERB_APP_ID,
      options: {
        host: env.REVERB_HOST,
        port: env.REVERB_PORT ?? 443,
        scheme: env.REVERB_SCHEME ?? 'https',
        useTLS: (env.REVERB_SCHEME ?? 'https') === 'https',
      },
    },
  };
  return connections[env.BROADCAST_CONNECTION];
}

/**
 * The server SDK as BroadcastManager::pusher() builds it from a connection: key, secret, app id
 * and the `options` array as given. The Node SDK takes the same option names; it refuses
 * `encrypted` beside `useTLS` (pusher-php-server ignores `encrypted`), so that one is left out.
 */
function broadcaster(conn) {
  const { encrypted, ...options } = conn.options; // eslint-disable-line no-unused-vars
  return new PusherServer({
    appId: conn.app_id,
    key: conn.key,
    secret: conn.secret,
    ...options,
    port: String(options.port),
  });
}

/** PusherBroadcaster::broadcast: the payload's `socket` becomes the `socket_id` parameter (toOthers). */
function broadcast(backend, channels, event, payload) {
  const { socket, ...data } = payload;
  return backend.trigger(channels, event, data, socket ? { socket_id: socket } : undefined);
}

/**
 * A stand-in for the Laravel app's /broadcasting/auth: the user comes from the bearer token (as
 * with Sanctum), routes/channels.php decides, and the answer is signed by the connection's SDK
 * (PusherBroadcaster::validAuthenticationResponse). Denied: 403, as Laravel answers.
 */
async function laravelApp(backend, { users, channels }) {
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d) => {
      body += d;
    });
    req.on('end', () => {
      const form = new URLSearchParams(body);
      const socketId = form.get('socket_id');
      const channel = form.get('channel_name');
      const token = /^Bearer (.+)$/.exec(req.headers.authorization || '')?.[1];
      const user = users[token];
      requests.push({ path: req.url, method: req.method, channel, user: user?.id ?? null });
      const rule = Object.entries(channels).find(([pattern]) => new RegExp(`^${pattern}$`).test(channel.replace(/^(private|presence)-/, '')));
      const result = req.method === 'POST' && req.url === '/broadcasting/auth' && user && rule ? rule[1](user) : false;
      if (!result) {
        res.writeHead(403, { 'Content-Type': 'text/plain' });
        res.end('Forbidden');
        return;
      }
      const answer = channel.startsWith('presence-')
        ? backend.authorizeChannel(socketId, channel, { user_id: String(user.id), user_info: result })
        : backend.authorizeChannel(socketId, channel);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(answer));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  apps.push(server);
  return { url: `http://127.0.0.1:${server.address().port}`, requests };
}

const apps = [];
const echos = [];
afterEach(() => {
  while (echos.length) echos.pop().disconnect();
});
after(() => {
  for (const s of apps) s.close();
});

/**
 * Options a Node test adds to the guide's: the Pusher class (a page sets window.Pusher; Echo reads
 * options.Pusher first), the app's auth URL in full (a page uses Echo's relative default,
 * /broadcasting/auth), and the user's token (Echo sends it as `Authorization: Bearer`). Fresh
 * header objects too: Echo writes the token into its default `auth.headers`, an object shared by
 * every Echo of the process (one per page in a browser, several here).
 */
function nodeExtras(app, token) {
  return {
    Pusher: PusherJS,
    authEndpoint: `${app.url}/broadcasting/auth`,
    auth: { headers: {} },
    userAuthentication: { endpoint: `${app.url}/broadcasting/user-auth`, headers: {} },
    ...(token ? { bearerToken: token } : {}),
  };
}

/** docs/laravel.md, section 2a: Echo with the `pusher` broadcaster. */
function echoPusher(env, app, token) {
  const e = new Echo({
    broadcaster: 'pusher',
    key: env.VITE_PUSHER_APP_KEY,
    cluster: env.VITE_PUSHER_APP_CLUSTER,
    wsHost: env.VITE_PUSHER_HOST,
    wsPort: env.VITE_PUSHER_PORT,
    wssPort: env.VITE_PUSHER_PORT,
    forceTLS: (env.VITE_PUSHER_SCHEME ?? 'https') === 'https',
    enabledTransports: ['ws', 'wss'],
    ...nodeExtras(app, token),
  });
  echos.push(e);
  return e;
}

/** docs/laravel.md, section 2b: Echo with the `reverb` broadcaster. */
function echoReverb(env, app, token) {
  const e = new Echo({
    broadcaster: 'reverb',
    key: env.VITE_REVERB_APP_KEY,
    wsHost: env.VITE_REVERB_HOST,
    wsPort: env.VITE_REVERB_PORT ?? 80,
    wssPort: env.VITE_REVERB_PORT ?? 443,
    forceTLS: (env.VITE_REVERB_SCHEME ?? 'https') === 'https',
    enabledTransports: ['ws', 'wss'],
    ...nodeExtras(app, token),
  });
  echos.push(e);
  return e;
}

const T = h.DEFAULT_TIMEOUT;

/** Resolves once Echo's channel is subscribed; rejects on its `.error()`. */
function subscribed(channel, what) {
  return h.withTimeout(
    new Promise((resolve, reject) => {
      channel.subscribed(() => resolve(channel));
      channel.error((e) => reject(new Error(`${what}: subscription failed: ${JSON.stringify(e)}`)));
    }),
    T,
    `${what} to be subscribed`,
  );
}

/** The next call of an Echo callback registration (`listen`, `listenForWhisper`, `joining`, …). */
function next(register, what) {
  return h.withTimeout(new Promise((resolve) => register(resolve)), T, what);
}

const USERS = {
  'alice-token': { id: 1, name: 'Alice' },
  'bob-token': { id: 2, name: 'Bob' },
};
// routes/channels.php
const CHANNELS = {
  'orders\\.(\\d+)': (user) => user.id === 1 || user.id === 2,
  'chat\\.(\\d+)': (user) => ({ id: user.id, name: user.name }),
};

test('LARAVEL-1 pusher broadcaster: a public channel hears an event broadcast through the connection of config/broadcasting.php', async () => {
  const env = pusherEnv(ctx.server.port);
  const backend = broadcaster(broadcastingConfig(env));
  const app = await laravelApp(backend, { users: USERS, channels: CHANNELS });
  const echo = echoPusher(env, app);
  const channel = echo.channel('orders');
  await subscribed(channel, 'orders');
  // A broadcast event's name is its class (Echo adds the App\Events namespace) or broadcastAs().
  const shipped = next((cb) => channel.listen('OrderShipped', cb), 'OrderShipped');
  await broadcast(backend, ['orders'], 'App\\Events\\OrderShipped', { order: { id: 7, status: 'shipped' } });
  assert.deepEqual(await shipped, { order: { id: 7, status: 'shipped' } });
  const custom = next((cb) => channel.listen('.status.updated', cb), '.status.updated');
  await broadcast(backend, ['orders'], 'status.updated', { status: 'late' });
  assert.deepEqual(await custom, { status: 'late' });
  assert.deepEqual(app.requests, [], 'a public channel needs no authorization');
});

test('LARAVEL-2 pusher broadcaster: a private channel is authorized by /broadcasting/auth; a refused user gets .error()', async () => {
  const env = pusherEnv(ctx.server.port);
  const backend = broadcaster(broadcastingConfig(env));
  const app = await laravelApp(backend, { users: USERS, channels: CHANNELS });
  const alice = echoPusher(env, app, 'alice-token');
  const orders = alice.private('orders.1');
  await subscribed(orders, 'private-orders.1');
  assert.deepEqual(app.requests, [{ path: '/broadcasting/auth', method: 'POST', channel: 'private-orders.1', user: 1 }]);
  const got = next((cb) => orders.listen('OrderShipped', cb), 'OrderShipped on the private channel');
  await broadcast(backend, ['private-orders.1'], 'App\\Events\\OrderShipped', { order: { id: 1 } });
  assert.deepEqual(await got, { order: { id: 1 } });

  // No token: Laravel answers 403 and Echo reports it on the channel.
  const stranger = echoPusher(env, app);
  const refused = next((cb) => stranger.private('orders.1').error(cb), "the stranger's .error()");
  const e = await refused;
  assert.equal(e.status, 403, JSON.stringify(e));
});

test('LARAVEL-3 pusher broadcaster: presence here(), joining() and leaving() with the user info from routes/channels.php', async () => {
  const env = pusherEnv(ctx.server.port);
  const backend = broadcaster(broadcastingConfig(env));
  const app = await laravelApp(backend, { users: USERS, channels: CHANNELS });
  const alice = echoPusher(env, app, 'alice-token');
  const room = alice.join('chat.1');
  const aliceHere = await next((cb) => room.here(cb), "alice's here()");
  assert.deepEqual(aliceHere, [{ id: 1, name: 'Alice' }]);
  const joined = next((cb) => room.joining(cb), "alice's joining()");

  const bob = echoPusher(env, app, 'bob-token');
  const bobRoom = bob.join('chat.1');
  const bobHere = await next((cb) => bobRoom.here(cb), "bob's here()");
  assert.deepEqual(bobHere.map((u) => u.name).sort(), ['Alice', 'Bob']);
  assert.deepEqual(await joined, { id: 2, name: 'Bob' });

  const left = next((cb) => room.leaving(cb), "alice's leaving()");
  bob.leave('chat.1');
  assert.deepEqual(await left, { id: 2, name: 'Bob' });
});

test('LARAVEL-4 pusher broadcaster: a whisper goes from one Echo client to the other on a private channel', async () => {
  const env = pusherEnv(ctx.server.port);
  const backend = broadcaster(broadcastingConfig(env));
  const app = await laravelApp(backend, { users: USERS, channels: CHANNELS });
  const alice = echoPusher(env, app, 'alice-token');
  const bob = echoPusher(env, app, 'bob-token');
  const aliceChat = alice.private('orders.2');
  const bobChat = bob.private('orders.2');
  // both listened for at once: a subscription that succeeds before its listener is bound is never reported
  await Promise.all([subscribed(aliceChat, "alice's private-orders.2"), subscribed(bobChat, "bob's private-orders.2")]);
  const heard = next((cb) => bobChat.listenForWhisper('typing', cb), 'the whisper');
  aliceChat.whisper('typing', { name: 'Alice', typing: true });
  assert.deepEqual(await heard, { name: 'Alice', typing: true });
});

test("LARAVEL-5 pusher broadcaster: toOthers() leaves out the sender's socket (Echo's socket id)", async () => {
  const env = pusherEnv(ctx.server.port);
  const backend = broadcaster(broadcastingConfig(env));
  const app = await laravelApp(backend, { users: USERS, channels: CHANNELS });
  const alice = echoPusher(env, app, 'alice-token');
  const bob = echoPusher(env, app, 'bob-token');
  const aliceCh = alice.private('orders.1');
  const bobCh = bob.private('orders.1');
  // both listened for at once: a subscription that succeeds before its listener is bound is never reported
  await Promise.all([subscribed(aliceCh, "alice's channel"), subscribed(bobCh, "bob's channel")]);
  const aliceGot = [];
  aliceCh.listen('.order.updated', (d) => aliceGot.push(d.n));
  const bobGot = next((cb) => bobCh.listen('.order.updated', cb), "bob's event");
  const socket = alice.socketId();
  assert.match(socket, /^\d+\.\d+$/);
  // The X-Socket-ID header Echo's interceptors add reaches the event as `socket`.
  await broadcast(backend, ['private-orders.1'], 'order.updated', { n: 1, socket });
  assert.deepEqual(await bobGot, { n: 1 });
  // Events of one channel arrive in order: a later one to everyone shows the first skipped alice.
  const marker = next((cb) => aliceCh.listen('.marker', cb), "alice's marker");
  await broadcast(backend, ['private-orders.1'], 'marker', {});
  await marker;
  assert.deepEqual(aliceGot, []);
});

test('LARAVEL-6 reverb broadcaster and REVERB_* names: public, private and presence channels; a wrong secret reaches .error()', async () => {
  const env = reverbEnv(ctx.servers.reverb.port);
  const conn = broadcastingConfig(env);
  assert.equal(conn.driver, 'reverb');
  const backend = broadcaster(conn);
  const app = await laravelApp(backend, { users: USERS, channels: CHANNELS });
  const alice = echoReverb(env, app, 'alice-token');

  const pub = alice.channel('orders');
  await subscribed(pub, 'orders');
  const heard = next((cb) => pub.listen('OrderShipped', cb), 'OrderShipped');
  await broadcast(backend, ['orders'], 'App\\Events\\OrderShipped', { order: { id: 9 } });
  assert.deepEqual(await heard, { order: { id: 9 } });

  const priv = alice.private('orders.1');
  await subscribed(priv, 'private-orders.1');
  const got = next((cb) => priv.listen('.status.updated', cb), 'the private event');
  await broadcast(backend, ['private-orders.1'], 'status.updated', { status: 'packed' });
  assert.deepEqual(await got, { status: 'packed' });

  const here = await next((cb) => alice.join('chat.1').here(cb), 'here()');
  assert.deepEqual(here, [{ id: 1, name: 'Alice' }]);

  // A Laravel app whose REVERB_APP_SECRET is not the server's: Herald refuses the signature and,
  // with emit_subscription_error on, tells the channel, which calls Echo's .error().
  const wrong = broadcaster(broadcastingConfig({ ...env, REVERB_APP_SECRET: 'not-the-secret' }));
  const wrongApp = await laravelApp(wrong, { users: USERS, channels: CHANNELS });
  const bob = echoReverb(env, wrongApp, 'bob-token');
  const e = await next((cb) => bob.private('orders.2').error(cb), "bob's .error()");
  // Herald's refusal (401, the reason), not the auth endpoint's: that one answered 200.
  assert.equal(e.type, 'AuthError', JSON.stringify(e));
  assert.equal(e.status, 401, JSON.stringify(e));
  assert.match(e.error, /^Invalid signature/);
  assert.deepEqual(wrongApp.requests.map((r) => r.user), [2]);
});
