'use strict';
// OPS-TLS-*: the server port speaks TLS for wss:// and https:// when
// HERALD_TLS_CERT_FILE / HERALD_TLS_KEY_FILE are set (self-signed certificate).

const fs = require('node:fs');
const tls = require('node:tls');
const { test } = require('node:test');
const h = require('../lib');
const ops = require('../lib/ops');
const { assert } = h;

test('OPS-TLS-1 pusher-js over wss:// receives an event triggered over https:// with the SDK', { timeout: 60000 }, async (t) => {
  const { cert, key } = ops.selfSignedCert();
  const server = await ops.startOps({ tls: true, env: { HERALD_TLS_CERT_FILE: cert, HERALD_TLS_KEY_FILE: key } });
  const channel = h.uid('ops-tls-');
  const child = ops.childPusher({ port: server.port, channel });
  t.after(() => {
    child.kill();
    server.stop();
    fs.rmSync(cert, { force: true });
    fs.rmSync(key, { force: true });
  });

  // the certificate served is ours
  const peer = await h.withTimeout(
    new Promise((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port: server.port, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] }, () => {
        const c = s.getPeerCertificate();
        s.end();
        resolve(c);
      });
      s.on('error', reject);
    }),
    5000,
    'TLS handshake',
  );
  assert.equal(peer.subject.CN, 'localhost');

  await child.waitLine((l) => l.type === 'subscribed', 10000, 'pusher-js subscribed over wss://');
  const connected = child.lines.find((l) => l.type === 'state' && l.current === 'connected');
  assert.ok(connected && /^\d+\.\d+$/.test(connected.socket_id), `connected over wss: ${JSON.stringify(child.lines)}`);

  const api = ops.tlsSdk(server);
  const r = await h.sdkCall(() => api.trigger(channel, 'ops-tls-ev', { secure: true }));
  assert.equal(r.status, 200, `trigger over https: ${r.text}`);
  const ev = await child.waitLine((l) => l.type === 'event' && l.event === 'ops-tls-ev', 5000, 'event over wss://');
  assert.deepEqual(ev.data, { secure: true });

  // the HTTP API answers over https with the channel's subscription count
  const info = await h.sdkCall(() => api.get({ path: `/channels/${channel}`, params: { info: 'subscription_count' } }));
  assert.equal(info.status, 200, info.text);
  assert.equal(info.json().subscription_count, 1);

  // health over https on the server port, plain HTTP on the metrics port
  const hz = await ops.httpGet(`${server.httpBase}/healthz`, { insecure: true });
  assert.equal(hz.status, 200, `https /healthz: ${hz.text}`);
  const mz = await ops.httpGet(`${server.metricsBase}/readyz`);
  assert.equal(mz.status, 200);

  // a client that checks certificates refuses the self-signed one
  const strict = await ops.httpGet(`${server.httpBase}/healthz`);
  assert.equal(strict.status, 0, `a verifying client must fail on the self-signed certificate: ${JSON.stringify(strict)}`);
  // and plain http:// on the TLS port gets no HTTP answer
  const plain = await ops.httpGet(`http://127.0.0.1:${server.port}/healthz`);
  assert.notEqual(plain.status, 200, `plain http on the TLS port: ${JSON.stringify(plain)}`);
  // the CLI reaches it with --insecure
  const cliOut = await ops.cli(['trigger', channel, 'ops-tls-cli', '{"via":"cli"}', '--url', server.httpBase, '--insecure']);
  assert.equal(cliOut.status, 0, cliOut.out);
  const ev2 = await child.waitLine((l) => l.type === 'event' && l.event === 'ops-tls-cli', 5000, 'CLI event over wss://');
  assert.deepEqual(ev2.data, { via: 'cli' });
});

test('OPS-TLS-2 a missing or mismatched certificate stops startup, and fails check-config, with a message naming the file', { timeout: 30000 }, async (t) => {
  const { cert, key } = ops.selfSignedCert();
  const other = ops.selfSignedCert();
  t.after(() => {
    for (const f of [cert, key, other.cert, other.key]) fs.rmSync(f, { force: true });
  });
  const missing = ops.tmpPath('no-such-cert', '.pem');
  const r1 = await ops.cli(['check-config'], { env: { HERALD_TLS_CERT_FILE: cert } });
  assert.equal(r1.status, 2, `only the cert set: ${r1.out}`);
  assert.match(r1.out, /key_file/, r1.out);
  // The server must exit with status 2 and a message naming the file, and must not
  // announce "Herald listening on" (scripts and supervisors take it as "up").
  const announced = [];
  for (const [what, env, re] of [
    ['missing cert file', { HERALD_TLS_CERT_FILE: missing, HERALD_TLS_KEY_FILE: key }, new RegExp(`cert_file ${missing.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`)],
    ['key of another certificate', { HERALD_TLS_CERT_FILE: cert, HERALD_TLS_KEY_FILE: other.key }, /cert_file and tls\.key_file do not form a valid pair/],
    ['a key file that is not PEM', { HERALD_TLS_CERT_FILE: cert, HERALD_TLS_KEY_FILE: __filename }, /key_file/],
  ]) {
    const full = { HERALD_HOST: '127.0.0.1', HERALD_PORT: '0', HERALD_WEBHOOKS_SPOOL_FILE: ops.tmpPath('spool'), ...env };
    const r = await ops.cli([], { env: full, timeout: 10000 });
    assert.equal(r.status, 2, `${what}: exit status (signal ${r.signal}); output:\n${r.out}`);
    assert.match(r.stderr, re, `${what}: the error names the setting and file`);
    if (/Herald listening on/.test(r.stdout)) announced.push(`${what}: stdout ${JSON.stringify(r.stdout)}`);
    // check-config runs the same checks: it refuses with the same message, never "valid".
    const c = await ops.cli(['check-config'], { env: full });
    assert.equal(c.status, 2, `${what}: check-config exit status; output:\n${c.out}`);
    assert.equal(c.stderr, r.stderr, `${what}: check-config and serve give the same message`);
  }
  assert.deepEqual(announced, [], 'a server that cannot load its TLS files must fail before printing "Herald listening on"');
});
