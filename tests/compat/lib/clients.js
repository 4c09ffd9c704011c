'use strict';
// Factories for the official clients: pusher-js (WebSocket) and the `pusher`
// server SDK (HTTP API), plus bookkeeping so tests close what they open.

const PusherJS = require('pusher-js');
const PusherServer = require('pusher');
const { DEFAULT_APP } = require('./server');
const { DEFAULT_TIMEOUT, withTimeout } = require('./wait');
const { rawConnect, rawOpen } = require('./raw');

// `pusher-js/with-encryption` is the *web* build (it needs `self`) and cannot be
// loaded in Node; the Node build (`require('pusher-js')`, dist/node) already bundles
// tweetnacl and supports private-encrypted- channels, so it is used for them.
function encryptedBuild() {
  return PusherJS;
}

/** The official server SDK bound to a server and app. */
function sdk(server, app = DEFAULT_APP, extra = {}) {
  return new PusherServer({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: '127.0.0.1',
    port: String(server.port),
    useTLS: false,
    ...extra,
  });
}

/**
 * Runs an SDK call and returns {status, text, json} whether it succeeded or
 * failed with a RequestError (status >= 400).
 */
async function sdkCall(promiseOrFn) {
  try {
    const res = await (typeof promiseOrFn === 'function' ? promiseOrFn() : promiseOrFn);
    const text = await res.text();
    return { status: res.status, text, headers: res.headers, json: () => JSON.parse(text) };
  } catch (e) {
    if (e && e.status) return { status: e.status, text: e.body, json: () => JSON.parse(e.body) };
    throw e;
  }
}

/**
 * A pusher-js client. Channel authorization and user authentication are done
 * by custom handlers that sign with the server SDK (no auth endpoint needed).
 *
 * opts:
 *   app            app credentials (default app)
 *   presence       {channelName: presenceData} or function(channel) => presenceData
 *   user           user data object for signin (userAuthentication)
 *   encrypted      use the with-encryption build (needs masterKey)
 *   masterKey      encryptionMasterKeyBase64 for shared secrets
 *   authorize      custom function(params, cb) replacing the default handler
 *   options        extra pusher-js options
 */
function makeClient(server, opts = {}) {
  const app = opts.app || DEFAULT_APP;
  const signer = sdk(server, app, opts.masterKey ? { encryptionMasterKeyBase64: opts.masterKey } : {});
  const presenceFor = (channel) => {
    if (typeof opts.presence === 'function') return opts.presence(channel);
    if (opts.presence && opts.presence[channel] !== undefined) return opts.presence[channel];
    return opts.presenceDefault;
  };
  const Ctor = opts.encrypted ? encryptedBuild() : PusherJS;
  const client = new Ctor(app.key, {
    cluster: 'mt1',
    wsHost: '127.0.0.1',
    wsPort: server.port,
    wsPath: server.pathPrefix || '',
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: {
      customHandler:
        opts.authorize ||
        ((params, cb) => {
          try {
            const { socketId, channelName } = params;
            const pd = channelName.startsWith('presence-') ? presenceFor(channelName) : undefined;
            cb(null, signer.authorizeChannel(socketId, channelName, pd));
          } catch (e) {
            cb(e, null);
          }
        }),
    },
    userAuthentication: {
      customHandler: (params, cb) => {
        try {
          cb(null, signer.authenticateUser(params.socketId, opts.user));
        } catch (e) {
          cb(e, null);
        }
      },
    },
    ...(opts.options || {}),
  });
  // Keep a log of every decoded message the connection saw.
  client.__messages = [];
  client.__errors = [];
  client.connection.bind('message', (m) => client.__messages.push(m));
  client.connection.bind('error', (e) => client.__errors.push(e));
  return client;
}

/** Resolves when a pusher-js client reaches `state`. */
function waitState(client, state, ms = DEFAULT_TIMEOUT) {
  if (client.connection.state === state) return Promise.resolve();
  return withTimeout(
    new Promise((resolve) => {
      const cb = ({ current }) => {
        if (current === state) {
          client.connection.unbind('state_change', cb);
          resolve();
        }
      };
      client.connection.bind('state_change', cb);
    }),
    ms,
    `pusher-js state ${state} (now ${client.connection.state}; errors ${JSON.stringify(client.__errors)})`,
  );
}

/** Subscribes with pusher-js and waits for pusher:subscription_succeeded. */
function subscribeOk(client, channelName, ms = DEFAULT_TIMEOUT) {
  const ch = client.subscribe(channelName);
  if (ch.subscribed) return Promise.resolve(ch);
  return withTimeout(
    new Promise((resolve, reject) => {
      ch.bind('pusher:subscription_succeeded', () => resolve(ch));
      ch.bind('pusher:subscription_error', (e) => reject(new Error(`subscription_error on ${channelName}: ${JSON.stringify(e)}`)));
    }),
    ms,
    `pusher-js subscription to ${channelName} (connection errors: ${JSON.stringify(client.__errors)})`,
  );
}

/**
 * Tracks clients opened by a test file so they can be closed after each test.
 */
class Pool {
  constructor(server) {
    this.server = server;
    this.items = [];
  }

  /** Connected pusher-js client. */
  async pusher(opts = {}) {
    const c = makeClient(opts.server || this.server, opts);
    this.items.push(c);
    await waitState(c, 'connected', opts.ms);
    return c;
  }

  /** pusher-js client, not awaited. */
  pusherLazy(opts = {}) {
    const c = makeClient(opts.server || this.server, opts);
    this.items.push(c);
    return c;
  }

  /** Raw ws client after connection_established. */
  async raw(opts = {}) {
    const c = await rawConnect(opts.server || this.server, opts);
    this.items.push(c);
    return c;
  }

  /** Raw ws client, nothing awaited. */
  rawOpen(opts = {}) {
    const c = rawOpen(opts.server || this.server, opts);
    this.items.push(c);
    return c;
  }

  closeAll() {
    for (const c of this.items.splice(0)) {
      try {
        if (typeof c.disconnect === 'function') c.disconnect();
        else c.close();
      } catch (_) {}
    }
  }
}

module.exports = { sdk, sdkCall, makeClient, waitState, subscribeOk, Pool, PusherJS, encryptedBuild };
