'use strict';
// HTTP-GEN-*, HTTP-AUTH-*: general HTTP behaviour and request authentication.

const { test } = require('node:test');
const http = require('node:http');
const h = require('../lib');
const { assert } = h;

const DOCS = { id: '3', key: '278d425bdf160c739803', secret: '7ad3773142a6692b25b8' };
const OTHER = { id: 'other-id', key: 'other-key', secret: 'other-secret' };
const OFF = { id: 'off-id', key: 'off-key', secret: 'off-secret', enabled: false };

const ctx = h.harness({
  multi: { apps: [{ ...h.DEFAULT_APP }, OTHER, OFF, DOCS] },
  prefixed: { server: { path_prefix: '/pusher-prefix' }, apps: [{ ...h.DEFAULT_APP }] },
});
const T = { timeout: 20000 };
const app = h.DEFAULT_APP;

function req(opts) {
  return h.signedFetch(ctx.server.httpBase, { app, ...opts });
}

function assertPlainError(res, status, body) {
  assert.equal(res.status, status, `status (body ${JSON.stringify(res.text)})`);
  assert.ok(res.text.endsWith('\n'), `error body must end with a newline: ${JSON.stringify(res.text)}`);
  assert.equal(res.text.indexOf('\n'), res.text.length - 1, `error body must be one line: ${JSON.stringify(res.text)}`);
  if (body instanceof RegExp) assert.match(res.text, body);
  else if (body !== undefined) assert.equal(res.text, body);
}

const eventsBody = (ch = 'auth-ch') => JSON.stringify({ name: 'ev', data: 'x', channels: [ch] });

test('HTTP-GEN-1 200 responses carry a JSON object body; channels maps are objects', T, async () => {
  const api = h.sdk(ctx.server);
  const r1 = await h.sdkCall(api.trigger('gen1', 'ev', 'x'));
  assert.equal(r1.status, 200);
  assert.match(r1.headers.get('content-type'), /^application\/json/);
  assert.deepEqual(r1.json(), {});
  const r2 = await h.sdkCall(api.get({ path: '/channels', params: { filter_by_prefix: 'nothing-here-' } }));
  assert.equal(r2.status, 200);
  assert.match(r2.headers.get('content-type'), /^application\/json/);
  assert.equal(r2.text.replace(/\s/g, ''), '{"channels":{}}', 'channels must be an object, not []');
  const r3 = await h.sdkCall(api.get({ path: '/channels/gen1-unoccupied' }));
  assert.deepEqual(r3.json(), { occupied: false });
  const r4 = await h.sdkCall(api.triggerBatch([{ channel: 'gen1', name: 'a', data: 'b' }]));
  assert.deepEqual(r4.json(), {});
  const r5 = await h.sdkCall(api.get({ path: '/channels/presence-gen1/users' }));
  assert.deepEqual(r5.json(), { users: [] });
  for (const r of [r1, r2, r3, r4, r5]) {
    const v = JSON.parse(r.text);
    assert.ok(v && typeof v === 'object' && !Array.isArray(v), `object body: ${r.text}`);
  }
});

test('HTTP-GEN-2 error bodies are one line of plain text ending in a newline', T, async () => {
  const bad = await req({ method: 'POST', path: '/apps/app-id/events', body: eventsBody(), signature: 'f'.repeat(64) });
  assertPlainError(bad, 401);
  assert.match(bad.headers.get('content-type'), /^text\/plain/);
  const api = h.sdk(ctx.server);
  const batch = await h.sdkCall(api.post({ path: '/batch_events', body: { batch: Array.from({ length: 11 }, () => ({ channel: 'x', name: 'y', data: 'z' })) } }));
  assertPlainError(batch, 400, 'Batch too large (11 > 10)\n');
  const users = await h.sdkCall(api.get({ path: '/channels/public-gen2/users' }));
  assertPlainError(users, 400, 'Users can only be retrieved for presence channels\n');
  const nf = await req({ method: 'GET', path: '/apps/app-id/no-such-endpoint' });
  assertPlainError(nf, 404);
});

test('HTTP-GEN-3 unknown path -> 404; wrong method on a known path -> 405', T, async () => {
  for (const path of ['/apps/app-id/no-such-endpoint', '/apps/app-id/channels/x/y/z', '/nothing', '/apps/app-id/events/extra']) {
    const r = await req({ method: 'GET', path });
    assert.equal(r.status, 404, `${path}: ${r.status} ${r.text}`);
  }
  const raw = await fetch(`${ctx.server.httpBase}/definitely/not/here`);
  assert.equal(raw.status, 404);
  const cases = [
    ['GET', '/apps/app-id/events', 'POST'],
    ['GET', '/apps/app-id/batch_events', 'POST'],
    ['POST', '/apps/app-id/channels', 'GET'],
    ['DELETE', '/apps/app-id/channels/x', 'GET'],
    ['PUT', '/apps/app-id/channels/presence-x/users', 'GET'],
    ['GET', '/apps/app-id/users/u/terminate_connections', 'POST'],
  ];
  for (const [method, path, allowed] of cases) {
    const r = await req({ method, path });
    assert.equal(r.status, 405, `${method} ${path}: ${r.status} ${r.text}`);
    const allow = r.headers.get('allow') || '';
    assert.ok(allow.toUpperCase().includes(allowed), `Allow header of ${method} ${path}: ${JSON.stringify(allow)}`);
  }
  // unknown app id -> 404
  const unknownApp = await h.signedFetch(ctx.server.httpBase, { app: { id: 'nope', key: 'app-key', secret: 'app-secret' }, method: 'GET', path: '/apps/nope/channels' });
  assert.equal(unknownApp.status, 404, unknownApp.text);
});

test('HTTP-GEN-4 POST bodies parsed as JSON whatever the Content-Type', T, async () => {
  const ch = h.uid('gen4');
  const c = await ctx.pool.raw();
  await c.subscribeOk(ch);
  const body = JSON.stringify({ name: 'ct', data: 'x', channels: [ch] });
  for (const headers of [{ 'content-type': 'text/plain' }, { 'content-type': 'application/x-www-form-urlencoded' }, {}, { 'content-type': 'application/json; charset=utf-8' }]) {
    const r = await req({ method: 'POST', path: '/apps/app-id/events', body, headers });
    assert.equal(r.status, 200, `${JSON.stringify(headers)}: ${r.text}`);
    assert.deepEqual(r.json(), {});
    assert.deepEqual(await c.nextMeaningful(), { event: 'ct', channel: ch, data: 'x' });
  }
});

test('HTTP-GEN-5 HTTP/1.1 keep-alive: several requests over one connection', T, async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const sockets = new Set();
  const results = [];
  try {
    for (let i = 0; i < 3; i++) {
      const r = h.buildSignedRequest({ app, method: 'GET', path: '/apps/app-id/channels' });
      const res = await new Promise((resolve, reject) => {
        const q = http.request(`${ctx.server.httpBase}${r.urlPath}?${r.query}`, { agent, method: 'GET' }, (resp) => {
          let body = '';
          resp.on('data', (d) => (body += d));
          resp.on('end', () => resolve({ status: resp.statusCode, body, headers: resp.headers, reused: q.reusedSocket }));
        });
        q.on('socket', (s) => sockets.add(s));
        q.on('error', reject);
        q.end();
      });
      results.push(res);
    }
  } finally {
    agent.destroy();
  }
  for (const r of results) {
    assert.equal(r.status, 200);
    assert.notEqual((r.headers.connection || '').toLowerCase(), 'close');
  }
  assert.equal(sockets.size, 1, 'one TCP connection for all requests');
  assert.deepEqual(results.map((r) => r.reused), [false, true, true]);
});

test('HTTP-GEN-6 configured path prefix stripped before routing and signing (HTTP and WebSocket)', T, async () => {
  const s = ctx.servers.prefixed;
  const ch = h.uid('gen6');
  const p = await ctx.pool.pusher({ server: s }); // wsPath = prefix
  const pch = await h.subscribeOk(p, ch);
  const got = h.nextEvent(pch, 'prefixed');
  const r = await h.signedFetch(s.httpBase, {
    app,
    method: 'POST',
    path: '/apps/app-id/events',
    urlPath: '/pusher-prefix/apps/app-id/events',
    body: JSON.stringify({ name: 'prefixed', data: '"ok"', channels: [ch] }),
  });
  assert.equal(r.status, 200, r.text);
  assert.equal((await got).data, 'ok');
  const q = await h.signedFetch(s.httpBase, { app, method: 'GET', path: '/apps/app-id/channels', urlPath: '/pusher-prefix/apps/app-id/channels' });
  assert.equal(q.status, 200, q.text);
  assert.ok(ch in q.json().channels);
  // signing the prefixed path is wrong
  const wrong = await h.signedFetch(s.httpBase, { app, method: 'GET', path: '/pusher-prefix/apps/app-id/channels' });
  assert.equal(wrong.status, 401, wrong.text);
  // without the prefix: not found; WebSocket without the prefix: 4005
  const bare = await h.signedFetch(s.httpBase, { app, method: 'GET', path: '/apps/app-id/channels' });
  assert.equal(bare.status, 404);
  const ws = ctx.pool.rawOpen({ server: s, path: '/app/app-key' });
  await h.expectErrorThenClose(ws, 4005, 'Path not found');
});

test('HTTP-AUTH-1 auth_key, auth_timestamp, auth_version, auth_signature required -> else 401', T, async () => {
  const base = { method: 'POST', path: '/apps/app-id/events', body: eventsBody() };
  assertPlainError(await req({ ...base, omit: ['auth_key'] }), 401, 'Missing parameter: auth_key\n');
  assertPlainError(await req({ ...base, omit: ['auth_timestamp'] }), 401, 'Timestamp required\n');
  assertPlainError(await req({ ...base, omit: ['auth_version'] }), 401, 'Version required\n');
  assertPlainError(await req({ ...base, omit: ['auth_signature'] }), 401);
  assertPlainError(await req({ method: 'GET', path: '/apps/app-id/channels', omit: ['auth_signature'] }), 401);
  const unsigned = await fetch(`${ctx.server.httpBase}/apps/app-id/channels`);
  assert.equal(unsigned.status, 401);
  assert.equal(await unsigned.text(), 'Missing parameter: auth_key\n');
  assert.equal((await req(base)).status, 200);
});

test('HTTP-AUTH-2 auth_version must be 1.0', T, async () => {
  for (const v of ['2.0', '1', '1.1', '']) {
    assertPlainError(await req({ method: 'GET', path: '/apps/app-id/channels', authVersion: v }), 401, v === '' ? /^Version (required|not supported)\n$/ : 'Version not supported\n');
  }
  // checked before the timestamp and the signature (http §2.3 order)
  assertPlainError(await req({ method: 'GET', path: '/apps/app-id/channels', authVersion: '2.0', timestamp: 1, signature: 'x' }), 401, 'Version not supported\n');
});

test('HTTP-AUTH-3 |now - auth_timestamp| must be < 600 s', T, async () => {
  const now = h.nowSec();
  for (const ts of [now - 601, now + 601, now - 100000, 0]) {
    const r = await req({ method: 'GET', path: '/apps/app-id/channels', timestamp: ts });
    assertPlainError(
      r,
      401,
      /^Timestamp expired: Given timestamp \(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d| UTC)\) not within 600s of server time \(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d| UTC)\)\n$/,
    );
  }
  for (const ts of [now - 590, now + 590, now]) {
    const r = await req({ method: 'GET', path: '/apps/app-id/channels', timestamp: ts });
    assert.equal(r.status, 200, `timestamp offset ${ts - now}: ${r.text}`);
  }
  assertPlainError(await req({ method: 'GET', path: '/apps/app-id/channels', timestamp: 'yesterday' }), 401);
  // checked before body_md5 and the signature
  const order = await req({ method: 'POST', path: '/apps/app-id/events', body: eventsBody(), timestamp: now - 1000, bodyMd5: 'x', signature: 'y' });
  assertPlainError(order, 401, /^Timestamp expired: /);
});

test('HTTP-AUTH-4 body_md5 required for a non-empty body and must match; empty-body md5 accepted on GET', T, async () => {
  const body = eventsBody();
  assertPlainError(await req({ method: 'POST', path: '/apps/app-id/events', body, bodyMd5: null }), 401, 'Missing parameter: body_md5\n');
  const wrong = await req({ method: 'POST', path: '/apps/app-id/events', body, bodyMd5: h.md5Hex('something else') });
  assertPlainError(wrong, 401);
  assert.match(wrong.text, /^Invalid body_md5/);
  // The signature (which covers body_md5) is checked before the body is read, so that an
  // unauthenticated upload is refused without being buffered (hardening; the spec's order
  // checks the digest first): with both wrong, the signature is what is reported.
  const both = await req({ method: 'POST', path: '/apps/app-id/events', body, bodyMd5: h.md5Hex('other'), signature: 'bad' });
  assert.match(both.text, /^Invalid signature/);
  const ok = await req({ method: 'POST', path: '/apps/app-id/events', body });
  assert.equal(ok.status, 200, ok.text);
  // python style: body_md5 of the empty body on GET
  const py = await req({ method: 'GET', path: '/apps/app-id/channels', bodyMd5: 'd41d8cd98f00b204e9800998ecf8427e' });
  assert.equal(py.status, 200, py.text);
  const pyBad = await req({ method: 'GET', path: '/apps/app-id/channels', bodyMd5: h.md5Hex('x') });
  assertPlainError(pyBad, 401);
});

test('HTTP-AUTH-5 string to sign: METHOD\\nPATH\\nsorted lowercase k=v (all params except auth_signature, incl. body_md5)', T, async () => {
  // extra params in arbitrary order with an upper-case key: signed with the lowercased key
  const r1 = await req({ method: 'GET', path: '/apps/app-id/channels', params: [['zeta', '1'], ['Info', ''], ['alpha', 'a']] });
  assert.equal(r1.status, 200, r1.text);
  // repeated keys keep their relative order (stable sort)
  const r2 = await req({ method: 'GET', path: '/apps/app-id/channels', params: [['x[]', 'b'], ['x[]', 'a']] });
  assert.equal(r2.status, 200, r2.text);
  const swapped = await req({
    method: 'GET',
    path: '/apps/app-id/channels',
    params: [['x[]', 'b'], ['x[]', 'a']],
    signPairs: (pairs) => [...pairs.filter(([k]) => k !== 'x[]'), ['x[]', 'a'], ['x[]', 'b']],
  });
  assertPlainError(swapped, 401);
  // body_md5 must be part of the signed string
  const noMd5 = await req({ method: 'POST', path: '/apps/app-id/events', body: eventsBody(), signPairs: (pairs) => pairs.filter(([k]) => k !== 'body_md5') });
  assertPlainError(noMd5, 401);
  // the method and path are part of it
  assertPlainError(await req({ method: 'GET', path: '/apps/app-id/channels', signMethodPath: '/apps/app-id/channels/x' }), 401);
  const wrongMethod = h.buildSignedRequest({ app, method: 'POST', path: '/apps/app-id/channels' });
  const r3 = await fetch(`${ctx.server.httpBase}${wrongMethod.urlPath}?${wrongMethod.query}`);
  assert.equal(r3.status, 401);
});

test('HTTP-AUTH-6 query keys/values percent-decoded and "+" read as space before signing', T, async () => {
  const ch = 'auth6-a';
  const c = await ctx.pool.raw();
  await c.subscribeOk(ch);
  // value "auth6-a" percent-encoded completely
  const enc = (s) => s.split('').map((x) => '%' + x.charCodeAt(0).toString(16).padStart(2, '0')).join('');
  const r1 = await req({ method: 'GET', path: '/apps/app-id/channels', params: { filter_by_prefix: 'auth6-' }, encode: (s) => (s === 'auth6-' ? enc(s) : encodeURIComponent(s)) });
  assert.equal(r1.status, 200, r1.text);
  assert.deepEqual(r1.json(), { channels: { [ch]: {} } });
  // spaces: %20 and + both decode to a space (signed as "a b")
  const r2 = await req({ method: 'GET', path: '/apps/app-id/channels', params: { filter_by_prefix: 'a b' } });
  assert.equal(r2.status, 200, r2.text);
  const r3 = await req({ method: 'GET', path: '/apps/app-id/channels', params: { filter_by_prefix: 'a b' }, encode: (s) => encodeURIComponent(s).replace(/%20/g, '+') });
  assert.equal(r3.status, 200, r3.text);
  // ruby style: everything form-encoded, including keys and the timestamp
  const r4 = await req({ method: 'GET', path: '/apps/app-id/channels', params: { filter_by_prefix: 'x:y/z' }, encode: (s) => enc(s) });
  assert.equal(r4.status, 200, r4.text);
  // percent-escapes in the path: SDKs sign the unescaped path (go/php may escape on the wire)
  const r6 = await req({ method: 'GET', path: '/apps/app-id/channels/a@b,c;d=e', urlPath: '/apps/app-id/channels/a%40b%2Cc%3Bd%3De' });
  assert.equal(r6.status, 200, r6.text);
  assert.deepEqual(r6.json(), { occupied: false });
  const r7 = await req({ method: 'GET', path: '/apps/app-id/channels/a%40b' });
  assert.equal(r7.status, 200, `path signed as received: ${r7.text}`);
  // node style: raw, unescaped characters on the wire (as far as a URL allows)
  const r5 = await req({ method: 'GET', path: '/apps/app-id/channels', params: { filter_by_prefix: 'a,b;c@d' }, encode: (s) => s });
  assert.equal(r5.status, 200, r5.text);
});

test('HTTP-AUTH-7 auth_key must belong to the app in the path', T, async () => {
  const s = ctx.servers.multi;
  const cross = await h.signedFetch(s.httpBase, { app: OTHER, method: 'GET', path: '/apps/app-id/channels' });
  assertPlainError(cross, 401, 'Unknown auth_key\n');
  const unknown = await h.signedFetch(s.httpBase, { app: { ...app, key: 'nobody' }, method: 'GET', path: '/apps/app-id/channels' });
  assertPlainError(unknown, 401, 'Unknown auth_key\n');
  const own = await h.signedFetch(s.httpBase, { app: OTHER, method: 'GET', path: '/apps/other-id/channels' });
  assert.equal(own.status, 200, own.text);
  // the SDK of the other app cannot publish to this app's channels
  const c = await ctx.pool.raw({ server: s });
  await c.subscribeOk('auth7');
  const viaOther = await h.sdkCall(h.sdk(s, { ...OTHER, id: 'app-id' }).trigger('auth7', 'nope', 'x'));
  assert.equal(viaOther.status, 401);
  await h.sdk(s).trigger('auth7', 'marker', 'm');
  await h.expectOnlyMarker(c, 'marker');
});

test('HTTP-AUTH-8 401 bodies use pusher-signature wording for a bad signature', T, async () => {
  const body = eventsBody();
  const r = await req({ method: 'POST', path: '/apps/app-id/events', body, signature: 'abc123' });
  const toSign = r.request.stringToSign.replace(/\n/g, '\\n');
  assertPlainError(r, 401, `Invalid signature: you should have sent HmacSHA256Hex("${toSign}", your_secret_key), but you sent "abc123"\n`);
  const g = await req({ method: 'GET', path: '/apps/app-id/channels', params: { filter_by_prefix: 'p' }, signSecret: 'wrong-secret' });
  const gs = g.request.stringToSign.replace(/\n/g, '\\n');
  assertPlainError(g, 401, `Invalid signature: you should have sent HmacSHA256Hex("${gs}", your_secret_key), but you sent "${g.request.signature}"\n`);
});

test('HTTP-AUTH-9 documented worked example and the extra vectors of http §2.2', T, async () => {
  // the test signer reproduces the documented vectors exactly
  const ts = 1353088179;
  const docBody = '{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}';
  assert.equal(h.md5Hex(docBody), 'ec365a775a4cd0599faeb73354201b6f');
  const vec = [
    [{ method: 'POST', path: '/apps/3/events', body: docBody }, 'da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c'],
    [{ method: 'GET', path: '/apps/3/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } }, '16819168891cb5dfd72b5c7a5d3d602605b26c6ba1930033b5e2eeeb65010291'],
    [{ method: 'GET', path: '/apps/3/channels/presence-foobar/users', bodyMd5: 'd41d8cd98f00b204e9800998ecf8427e' }, '3d68b512095fd42cb6741cc80616761b1c77d00fcc4d6d9740f09504a4b761b0'],
    [{ method: 'POST', path: '/apps/3/users/12345/terminate_connections', body: '{}' }, '01fa634edeb0cae84115307cad5c23f65a46cd286461b1c89637a3b5871a8f0e'],
    [{ method: 'POST', path: '/apps/3/channels/project-3/events', params: { name: 'foo', socket_id: '1234.1234' }, body: '{"hello":"world"}' }, 'c1effe2387d10b4c2e5cfed5b6c3fdb14ba0afbec482de36671f95f3eb2a1a42'],
    [{ method: 'GET', path: '/apps/3/channels', params: { filter_by_prefix: 'a b' } }, 'de6617877141606bba51dd555625a6407145bc2c38fe1715334e4b774248db1c'],
  ];
  for (const [opts, sig] of vec) {
    const r = h.buildSignedRequest({ app: DOCS, timestamp: ts, ...opts });
    assert.equal(r.signature, sig, `vector ${opts.method} ${opts.path}: ${JSON.stringify(r.stringToSign)}`);
  }
  assert.equal(
    h.buildSignedRequest({ app: DOCS, timestamp: ts, ...vec[0][0] }).query,
    'auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c',
  );
  // the server (an app with the documented credentials) accepts the same requests signed now
  const s = ctx.servers.multi;
  const expect = [200, 200, 200, 200, 202, 200];
  for (let i = 0; i < vec.length; i++) {
    const r = await h.signedFetch(s.httpBase, { app: DOCS, ...vec[i][0] });
    assert.equal(r.status, expect[i], `${vec[i][0].method} ${vec[i][0].path}: ${r.status} ${r.text}`);
  }
  // replaying the documented request verbatim fails only on its 2012 timestamp
  const replay = await fetch(`${s.httpBase}/apps/3/events?${h.buildSignedRequest({ app: DOCS, timestamp: ts, ...vec[0][0] }).query}`, { method: 'POST', body: docBody });
  assert.equal(replay.status, 401);
  assert.match(await replay.text(), /^Timestamp expired/);
});

test('HTTP-AUTH-10 disabled app -> 403', T, async () => {
  const s = ctx.servers.multi;
  const r = await h.signedFetch(s.httpBase, { app: OFF, method: 'POST', path: '/apps/off-id/events', body: eventsBody() });
  assertPlainError(r, 403);
  const g = await h.signedFetch(s.httpBase, { app: OFF, method: 'GET', path: '/apps/off-id/channels' });
  assertPlainError(g, 403);
  // authentication still comes first
  const bad = await h.signedFetch(s.httpBase, { app: OFF, method: 'GET', path: '/apps/off-id/channels', signSecret: 'nope' });
  assert.equal(bad.status, 401);
});
