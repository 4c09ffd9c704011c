'use strict';
// pusher-js clients (channel authorization signed locally with the pusher server SDK).

const PusherJS = require('pusher-js');
const PusherServer = require('pusher');
const { DEFAULT_APP } = require('./server');

const WAIT_MS = 10000;

function sdk(server, app = DEFAULT_APP) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: '127.0.0.1',
    port: String(server.port),
    useTLS: false,
  });
}

/** A pusher-js client; `user` is the presence user ({user_id, user_info}) for presence channels. */
function client(server, { user, app = DEFAULT_APP } = {}) {
  const signer = sdk(server, app);
  return new PusherJS(app.key, {
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, cb) => {
        try {
          const presence = channelName.startsWith('presence-') ? user : undefined;
          cb(null, signer.authorizeChannel(socketId, channelName, presence));
        } catch (e) {
          cb(e, null);
        }
      },
    },
  });
}

function timeout(ms, what) {
  let timer;
  const p = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return { p, clear: () => clearTimeout(timer) };
}

async function within(promise, what, ms = WAIT_MS) {
  const t = timeout(ms, what);
  try {
    return await Promise.race([promise, t.p]);
  } finally {
    t.clear();
  }
}

/** Resolves with the socket id once the client is connected. */
function connected(c) {
  if (c.connection.state === 'connected') return Promise.resolve(c.connection.socket_id);
  return within(
    new Promise((resolve) => c.connection.bind('connected', () => resolve(c.connection.socket_id))),
    'pusher-js to connect',
  );
}

/** Subscribes and resolves with the channel once subscription succeeded. */
function subscribed(c, name) {
  const ch = c.subscribe(name);
  return within(
    new Promise((resolve, reject) => {
      ch.bind('pusher:subscription_succeeded', () => resolve(ch));
      ch.bind('pusher:subscription_error', (e) => reject(new Error(`subscription to ${name} failed: ${JSON.stringify(e)}`)));
    }),
    `subscription to ${name}`,
  );
}

/** Resolves with the data of the next `event` on `channel`. */
function nextEvent(channel, event) {
  return within(
    new Promise((resolve) => {
      const h = (data) => {
        channel.unbind(event, h);
        resolve(data);
      };
      channel.bind(event, h);
    }),
    `event ${event} on ${channel.name}`,
  );
}

module.exports = { client, sdk, connected, subscribed, nextEvent, within };
