'use strict';
// Hand-made signing for the cases the official SDKs cannot produce
// (bad signatures, stale timestamps, odd encodings, raw bodies), following
// http-api.md §2.2 and websocket-protocol.md §4.4 / §7.1.

const crypto = require('node:crypto');
const { nowSec } = require('./wait');

function hmacHex(secret, str) {
  return crypto.createHmac('sha256', secret).update(str, 'utf8').digest('hex');
}

function md5Hex(body) {
  return crypto.createHash('md5').update(body).digest('hex');
}

/** `key:hex(HMAC(secret, socketId:channel[:channelData]))` */
function channelAuth(app, socketId, channel, channelData) {
  const str = channelData === undefined ? `${socketId}:${channel}` : `${socketId}:${channel}:${channelData}`;
  return `${app.key}:${hmacHex(app.secret, str)}`;
}

/** `key:hex(HMAC(secret, socketId::user::userData))` */
function userAuth(app, socketId, userData) {
  return `${app.key}:${hmacHex(app.secret, `${socketId}::user::${userData}`)}`;
}

/**
 * The query part of the string to sign, from a list of [key, value] pairs
 * (already decoded): drop auth_signature, lowercase keys, stable sort by key,
 * join `k=v` with `&`, no escaping.
 */
function queryToSign(pairs) {
  return pairs
    .filter(([k]) => k !== 'auth_signature')
    .map(([k, v], i) => [k.toLowerCase(), String(v), i])
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[2] - b[2]))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
}

function stringToSign(method, path, pairs) {
  return `${method.toUpperCase()}\n${path}\n${queryToSign(pairs)}`;
}

/** Encodes a query component the way node's querystring would (RFC 3986). */
function enc(s) {
  return encodeURIComponent(s);
}

/**
 * Builds a signed request for the HTTP API.
 *
 * opts:
 *   app            {id, key, secret}
 *   method         'GET' | 'POST' | ...
 *   path           path that is signed, e.g. '/apps/app-id/events'
 *   urlPath        path actually requested (default: path) — for prefixes
 *   params         extra query params: object or array of [k, v]
 *   body           string | Buffer | object (JSON-encoded) | undefined
 *   timestamp      auth_timestamp (default now)
 *   authVersion    default '1.0'; null to omit
 *   authKey        default app.key; null to omit
 *   omit           array of auth param names to leave out of the query
 *   bodyMd5        override; null to omit; default md5(body) when a body exists
 *   signPairs      function(pairs) => pairs actually used for signing (tamper)
 *   signature      override the auth_signature value (null to omit)
 *   encode         function(s) => s used for the query on the wire (default enc)
 *   rawQuery       extra raw query string appended as-is (not signed unless signRaw)
 */
function buildSignedRequest(opts) {
  const app = opts.app;
  const method = (opts.method || 'GET').toUpperCase();
  const signedPath = opts.path;
  let bodyBuf;
  if (opts.body !== undefined && opts.body !== null) {
    if (Buffer.isBuffer(opts.body)) bodyBuf = opts.body;
    else if (typeof opts.body === 'string') bodyBuf = Buffer.from(opts.body, 'utf8');
    else bodyBuf = Buffer.from(JSON.stringify(opts.body), 'utf8');
  }
  const pairs = [];
  const omit = new Set(opts.omit || []);
  const push = (k, v) => {
    if (!omit.has(k) && v !== null && v !== undefined) pairs.push([k, String(v)]);
  };
  push('auth_key', opts.authKey === undefined ? app.key : opts.authKey);
  push('auth_timestamp', opts.timestamp === undefined ? nowSec() : opts.timestamp);
  push('auth_version', opts.authVersion === undefined ? '1.0' : opts.authVersion);
  const md5 = opts.bodyMd5 !== undefined ? opts.bodyMd5 : bodyBuf && bodyBuf.length > 0 ? md5Hex(bodyBuf) : undefined;
  push('body_md5', md5);
  const extra = Array.isArray(opts.params) ? opts.params : Object.entries(opts.params || {});
  for (const [k, v] of extra) pairs.push([k, String(v)]);

  const forSigning = opts.signPairs ? opts.signPairs(pairs.slice()) : pairs;
  const toSign = stringToSign(method, opts.signMethodPath || signedPath, forSigning);
  const signature = opts.signature !== undefined ? opts.signature : hmacHex(opts.signSecret || app.secret, toSign);
  const wirePairs = pairs.slice();
  if (signature !== null && !omit.has('auth_signature')) wirePairs.push(['auth_signature', signature]);
  const encode = opts.encode || enc;
  let query = wirePairs.map(([k, v]) => `${encode(k)}=${encode(v)}`).join('&');
  if (opts.rawQuery) query += (query ? '&' : '') + opts.rawQuery;
  const urlPath = opts.urlPath || signedPath;
  return { method, urlPath, query, body: bodyBuf, stringToSign: toSign, signature, pairs };
}

/**
 * Sends a signed request with fetch. Returns {status, headers, text, json()}.
 * opts: as buildSignedRequest plus `base` (http://host:port) and `headers`
 * (default: content-type application/json when there is a body; pass
 * `headers: {}` explicitly to send none).
 */
async function signedFetch(base, opts) {
  const req = buildSignedRequest(opts);
  const headers = opts.headers !== undefined ? opts.headers : req.body ? { 'content-type': 'application/json' } : {};
  const res = await fetch(`${base}${req.urlPath}?${req.query}`, {
    method: req.method,
    headers,
    body: req.body,
  });
  const text = await res.text();
  return {
    status: res.status,
    headers: res.headers,
    text,
    request: req,
    json() {
      return JSON.parse(text);
    },
  };
}

module.exports = {
  hmacHex,
  md5Hex,
  channelAuth,
  userAuth,
  queryToSign,
  stringToSign,
  buildSignedRequest,
  signedFetch,
};
