'use strict';
// A raw WebSocket client (the `ws` package) for exact frame checks, malformed,
// binary and oversized frames, and bad connection URLs.

const WebSocket = require('ws');
const { DEFAULT_TIMEOUT, withTimeout } = require('./wait');
const sign = require('./sign');

const PUSHER_QUERY = 'protocol=7&client=js&version=8.6.0&flash=false';

class RawClient {
  /**
   * @param {string} url full ws:// URL
   * @param {object} [wsOptions] options for `new WebSocket` (e.g. {autoPong:false})
   */
  constructor(url, wsOptions = {}) {
    this.url = url;
    this.frames = []; // every received frame: {text, json, binary, at}
    this.pings = []; // WS ping frames received (payload strings)
    this.pongs = []; // WS pong frames received (payload strings)
    this.closed = null; // {code, reason}
    this.upgradeStatus = null; // HTTP status of the upgrade response
    this.unexpectedResponse = null; // {status, body} if the upgrade was refused
    this.socketId = null;
    this._waiters = [];
    this._cursor = 0; // every frame before this index is consumed
    this.ws = new WebSocket(url, { handshakeTimeout: 5000, ...wsOptions });
    this.ws.on('upgrade', (res) => {
      this.upgradeStatus = res.statusCode;
    });
    this.ws.on('unexpected-response', (req, res) => {
      let body = '';
      res.on('data', (d) => (body += d));
      res.on('end', () => {
        this.unexpectedResponse = { status: res.statusCode, body };
        this.closed = { code: -1, reason: `HTTP ${res.statusCode} on upgrade` };
        this._notify();
      });
    });
    this.ws.on('message', (data, isBinary) => {
      const text = data.toString('utf8');
      let json;
      try {
        json = JSON.parse(text);
      } catch (_) {
        json = undefined;
      }
      this.frames.push({ text, json, binary: isBinary, at: Date.now() });
      this._notify();
    });
    this.ws.on('ping', (d) => {
      this.pings.push(d.toString());
      this._notify();
    });
    this.ws.on('pong', (d) => {
      this.pongs.push(d.toString());
      this._notify();
    });
    this.ws.on('close', (code, reason) => {
      if (!this.closed) this.closed = { code, reason: reason.toString('utf8'), at: Date.now() };
      this._notify();
    });
    this.ws.on('error', (err) => {
      this.error = err;
      if (!this.closed && !this.unexpectedResponse) {
        // 'close' follows 'error' in ws; keep the error for messages.
      }
      this._notify();
    });
  }

  _notify() {
    for (const w of this._waiters.slice()) w();
  }

  /** Resolves when `check()` returns a truthy value (re-checked on every frame/close). */
  _until(check, ms, what) {
    return withTimeout(
      new Promise((resolve, reject) => {
        const run = () => {
          let v;
          try {
            v = check();
          } catch (e) {
            this._waiters = this._waiters.filter((w) => w !== run);
            reject(e);
            return;
          }
          if (v) {
            this._waiters = this._waiters.filter((w) => w !== run);
            resolve(v);
          }
        };
        this._waiters.push(run);
        run();
      }),
      ms,
      `${what} on ${this.url}; frames so far: ${this.describeFrames()}${this.closed ? `; closed ${JSON.stringify(this.closed)}` : ''}`,
    );
  }

  describeFrames() {
    const s = this.frames.map((f) => (f.binary ? `<binary ${f.text}>` : f.text)).join(' | ');
    return s.length > 2000 ? s.slice(0, 2000) + '…' : s || '(none)';
  }

  /** Frames received (parsed JSON), optionally filtered. */
  events(pred = () => true) {
    return this.frames.filter((f) => f.json && pred(f.json)).map((f) => f.json);
  }

  /** Resolves when the socket is open. */
  opened(ms = DEFAULT_TIMEOUT) {
    if (this.ws.readyState === WebSocket.OPEN) return Promise.resolve();
    return withTimeout(
      new Promise((resolve, reject) => {
        this.ws.once('open', resolve);
        this.ws.once('close', () => reject(new Error(`closed before open: ${JSON.stringify(this.closed)}`)));
        this.ws.once('error', (e) => reject(e));
      }),
      ms,
      `WebSocket open ${this.url}`,
    );
  }

  /** Index of the first frame not yet consumed. */
  _firstUnconsumed() {
    while (this._cursor < this.frames.length && this.frames[this._cursor].consumed) this._cursor++;
    return this._cursor;
  }

  /**
   * First not-yet-consumed frame matching `pred`; it is marked consumed. Frames
   * before it that do not match stay unconsumed (ordering across channels is not
   * assumed). Fails if the socket closes first or on timeout.
   */
  async next(pred = () => true, ms = DEFAULT_TIMEOUT, what = 'matching frame') {
    const found = await this._until(
      () => {
        for (let i = this._firstUnconsumed(); i < this.frames.length; i++) {
          const f = this.frames[i];
          if (!f.consumed && f.json && pred(f.json, f)) {
            f.consumed = true;
            return { frame: f };
          }
        }
        if (this.closed) throw new Error(`socket closed (${JSON.stringify(this.closed)}) while waiting for ${what}; frames: ${this.describeFrames()}`);
        return null;
      },
      ms,
      what,
    );
    return found.frame.json;
  }

  /** The oldest unconsumed frame, whatever it is. */
  async nextFrame(ms = DEFAULT_TIMEOUT, what = 'next frame') {
    const found = await this._until(
      () => {
        const i = this._firstUnconsumed();
        if (i < this.frames.length) {
          this.frames[i].consumed = true;
          return { frame: this.frames[i] };
        }
        if (this.closed) throw new Error(`socket closed (${JSON.stringify(this.closed)}) while waiting for ${what}`);
        return null;
      },
      ms,
      what,
    );
    return found.frame;
  }

  /** Marks every frame received so far as consumed. */
  drain() {
    for (const f of this.frames) f.consumed = true;
    this._firstUnconsumed();
  }

  /** Next unconsumed frame, parsed. */
  async nextJson(ms = DEFAULT_TIMEOUT, what = 'next frame') {
    const f = await this.nextFrame(ms, what);
    if (f.json === undefined) throw new Error(`frame is not JSON: ${f.text}`);
    return f.json;
  }

  /** Next unconsumed frame that is not a pusher_internal:subscription_count. */
  nextMeaningful(ms = DEFAULT_TIMEOUT, what = 'next frame (counts skipped)') {
    return this.next((m) => m.event !== 'pusher_internal:subscription_count', ms, what);
  }

  /** Next frame with the given event (and channel when given). */
  nextEvent(event, channel, ms = DEFAULT_TIMEOUT) {
    return this.next(
      (m) => m.event === event && (channel === undefined || m.channel === channel),
      ms,
      `event ${event}${channel !== undefined ? ` on ${channel}` : ''}`,
    );
  }

  /** Resolves with {code, reason} when the socket has closed. */
  async waitClose(ms = DEFAULT_TIMEOUT) {
    await this._until(() => this.closed, ms, 'close');
    return this.closed;
  }

  /** Waits for pusher:connection_established, records the socket id. */
  async established(ms = DEFAULT_TIMEOUT) {
    const m = await this.next((x) => x.event === 'pusher:connection_established', ms, 'pusher:connection_established');
    this.socketId = JSON.parse(m.data).socket_id;
    return m;
  }

  send(obj) {
    this.ws.send(JSON.stringify(obj));
  }

  sendRaw(data, options) {
    this.ws.send(data, options);
  }

  /**
   * Sends a ping and waits for the pong: everything sent before it has been
   * processed by the server (the server handles frames of a connection in order).
   * Returns every unconsumed frame received before the pong (all marked consumed).
   */
  async sync(ms = DEFAULT_TIMEOUT) {
    this.send({ event: 'pusher:ping', data: {} });
    let pongIndex = -1;
    await this._until(
      () => {
        for (let i = this._firstUnconsumed(); i < this.frames.length; i++) {
          const f = this.frames[i];
          if (!f.consumed && f.json && f.json.event === 'pusher:pong') {
            pongIndex = i;
            return true;
          }
        }
        if (this.closed) throw new Error(`socket closed (${JSON.stringify(this.closed)}) while waiting for the sync pong`);
        return false;
      },
      ms,
      'pusher:pong (sync marker)',
    );
    const between = [];
    for (let i = this._firstUnconsumed(); i < pongIndex; i++) {
      const f = this.frames[i];
      if (!f.consumed) {
        f.consumed = true;
        between.push(f.json || f.text);
      }
    }
    this.frames[pongIndex].consumed = true;
    return { pong: this.frames[pongIndex].json, between };
  }

  subscribe(channel, extra = {}) {
    this.send({ event: 'pusher:subscribe', data: { auth: '', channel, ...extra } });
  }

  unsubscribe(channel) {
    this.send({ event: 'pusher:unsubscribe', data: { channel } });
  }

  /** Subscribes and waits for subscription_succeeded; signs private/presence channels. */
  async subscribeOk(channel, { app, channelData, ms = DEFAULT_TIMEOUT } = {}) {
    const data = { auth: '', channel };
    if (app && (channel.startsWith('private-') || channel.startsWith('presence-'))) {
      data.auth = sign.channelAuth(app, this.socketId, channel, channelData);
      if (channelData !== undefined) data.channel_data = channelData;
    }
    this.send({ event: 'pusher:subscribe', data });
    return this.next(
      (m) => m.event === 'pusher_internal:subscription_succeeded' && m.channel === channel,
      ms,
      `subscription_succeeded for ${channel}`,
    );
  }

  /** Signs in with a correctly signed user_data string; waits for signin_success. */
  async signin(app, userData, ms = DEFAULT_TIMEOUT) {
    const ud = typeof userData === 'string' ? userData : JSON.stringify(userData);
    this.send({ event: 'pusher:signin', data: { auth: sign.userAuth(app, this.socketId, ud), user_data: ud } });
    return this.next((m) => m.event === 'pusher:signin_success' || m.event === 'pusher:error', ms, 'signin result');
  }

  close() {
    try {
      if (this.ws.readyState === WebSocket.CONNECTING || this.ws.readyState === WebSocket.OPEN) this.ws.terminate();
    } catch (_) {}
  }
}

/** URL for a Pusher connection. */
function wsUrl(server, { key = 'app-key', query = PUSHER_QUERY, path } = {}) {
  const p = path !== undefined ? path : `${server.pathPrefix || ''}/app/${key}`;
  return `${server.wsBase}${p}${query === null ? '' : `?${query}`}`;
}

/** Opens a raw client and waits for connection_established. */
async function rawConnect(server, opts = {}) {
  const c = new RawClient(wsUrl(server, opts), opts.wsOptions);
  await c.established(opts.ms);
  return c;
}

/** Opens a raw client without waiting for anything. */
function rawOpen(server, opts = {}) {
  return new RawClient(wsUrl(server, opts), opts.wsOptions);
}

module.exports = { RawClient, rawConnect, rawOpen, wsUrl, PUSHER_QUERY };
