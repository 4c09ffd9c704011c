// Start Herald first (`cargo run --release` in the repository root), then:
//   cd examples/try-it && npm ci && npm start
// A pusher-js client subscribes to `my-channel`; the official pusher SDK triggers `my-event` on it.
'use strict';
const PusherClient = require('pusher-js');
const PusherServer = require('pusher');

const host = process.env.HERALD_HOST || '127.0.0.1';
const port = Number(process.env.HERALD_PORT || 6001);

const server = new PusherServer({
  appId: 'app-id', key: 'app-key', secret: 'app-secret', host, port: String(port), useTLS: false,
});
const client = new PusherClient('app-key', {
  cluster: 'mt1', wsHost: host, wsPort: port, forceTLS: false, enabledTransports: ['ws'],
});

const timer = setTimeout(() => {
  console.error(`no event within 5 s: is Herald running on ${host}:${port}?`);
  process.exit(1);
}, 5000);

const channel = client.subscribe('my-channel');
channel.bind('my-event', (data) => {
  console.log('pusher-js received my-event:', data);
  clearTimeout(timer);
  client.disconnect();
});
channel.bind('pusher:subscription_succeeded', async () => {
  console.log('subscribed to my-channel; triggering my-event with the pusher SDK');
  await server.trigger('my-channel', 'my-event', { message: 'hello from Herald' });
});
