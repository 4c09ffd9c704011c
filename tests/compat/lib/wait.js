'use strict';
// Awaiting helpers. Nothing here sleeps for a fixed time to "let things settle":
// every helper resolves as soon as the awaited condition holds and fails with a
// clear message after a timeout.

const DEFAULT_TIMEOUT = Number(process.env.COMPAT_TIMEOUT_MS || 3000);

/** Rejects with `message` if `promise` has not settled within `ms`. */
function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`Timed out after ${ms} ms: ${message}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Polls `predicate` (sync or async) until it returns a truthy value, then
 * resolves with that value. Used for state that can only be observed by asking
 * (HTTP queries after a disconnect). Fails after `ms` with `message` and the
 * last observed value/error.
 */
async function waitFor(predicate, ms = DEFAULT_TIMEOUT, message = 'condition') {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await predicate();
      if (v) return v;
      last = v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`Timed out after ${ms} ms waiting for ${message} (last: ${detail})`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Resolves with the first emission of `eventName` on a pusher-js bindable. */
function once(bindable, eventName, ms = DEFAULT_TIMEOUT, what) {
  return withTimeout(
    new Promise((resolve) => {
      const cb = (data, meta) => {
        bindable.unbind(eventName, cb);
        resolve(meta === undefined ? data : { data, meta });
      };
      bindable.bind(eventName, cb);
    }),
    ms,
    what || `event ${eventName}`,
  );
}

/** A pusher-js channel's next `eventName` event (data, metadata). */
function nextEvent(channel, eventName, ms = DEFAULT_TIMEOUT) {
  return withTimeout(
    new Promise((resolve) => {
      const cb = (data, metadata) => {
        channel.unbind(eventName, cb);
        resolve({ data, metadata });
      };
      channel.bind(eventName, cb);
    }),
    ms,
    `event ${eventName} on ${channel.name}`,
  );
}

/** Current Unix time in seconds. */
function nowSec() {
  return Math.floor(Date.now() / 1000);
}

/** A bare delay; only for pacing traffic (keep-alive senders), never for settling. */
function pace(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

module.exports = { DEFAULT_TIMEOUT, withTimeout, waitFor, once, nextEvent, nowSec, pace };

/**
 * The most a full token bucket of `size` tokens refilled at `perSec` a second can accept during
 * a burst that took `elapsedMs` on the client (from just before its first request to just after
 * the server's answer to the last): the bucket plus every whole token refilled meanwhile. The
 * client's window encloses the server's (same monotonic clock), so this bound has no slack.
 */
function bucketMax(size, perSec, elapsedMs) {
  return size + Math.floor((elapsedMs / 1000) * perSec);
}
module.exports.bucketMax = bucketMax;
