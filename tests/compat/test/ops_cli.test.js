'use strict';
// OPS-CLI-*: the herald command line: check-config, --print-config, trigger,
// channels, apps list and --help, including error messages that say how to fix them.

const fs = require('node:fs');
const { test, before, after, afterEach } = require('node:test');
const h = require('../lib');
const ops = require('../lib/ops');
const { assert } = h;

const T = { timeout: 30000 };
const APP = { id: 'cli-app', key: 'cli-key', secret: 'cli-secret-value' };
const APP2 = { id: 'cli-app-2', key: 'cli-key-2', secret: 'cli-secret-2', enable_client_messages: false };

const files = [];
function configFile(content) {
  const f = ops.tmpPath('cli', '.toml');
  ops.writeConfig(f, content);
  files.push(f);
  return f;
}

let server;
let pool;
let cfg;

before(async () => {
  cfg = configFile({ apps: [APP, APP2] });
  server = await ops.startOps({ configFile: cfg });
  pool = new h.Pool(server);
});
afterEach(() => pool && pool.closeAll());
after(() => {
  if (server) server.stop();
  for (const f of files) fs.rmSync(f, { force: true });
});

test('OPS-CLI-1 check-config: exit 0 and a summary line for a valid config', T, async () => {
  const r = await ops.cli(['--config', cfg, 'check-config']);
  assert.equal(r.status, 0, r.out);
  assert.match(r.stdout, /configuration is valid: 2 app\(s\), store `config`/);
  const d = await ops.cli(['check-config']);
  assert.equal(d.status, 0, d.out);
  assert.match(d.stdout, /configuration is valid: 1 app\(s\)/, 'no file: the embedded default app');
  const e = await ops.cli(['check-config'], { env: { HERALD_CONFIG: cfg } });
  assert.equal(e.status, 0, e.out);
  assert.match(e.stdout, /2 app\(s\)/, 'HERALD_CONFIG names the file too');
});

test('OPS-CLI-2 check-config: exit 2 and a message naming the bad key or variable', T, async () => {
  const cases = [
    { what: 'unknown key in [server]', args: ['--config', configFile('[server]\nbogus = 1\n'), 'check-config'], re: [/bogus/, /expected one of .*host/] },
    { what: 'HERALD_PORT not a number', args: ['check-config'], env: { HERALD_PORT: 'x' }, re: [/HERALD_PORT/, /not an integer/] },
    { what: 'unknown HERALD_ variable', args: ['check-config'], env: { HERALD_BOGUS_THING: '1' }, re: [/HERALD_BOGUS_THING/, /HERALD_<SECTION>_<KEY>/] },
    { what: 'unknown key of a section', args: ['check-config'], env: { HERALD_SERVER_NOPE: '1' }, re: [/HERALD_SERVER_NOPE/, /nope/] },
    { what: 'bad value type in the file', args: ['--config', configFile('[server]\nport = "abc"\n'), 'check-config'], re: [/port|integer|u16/i] },
    { what: 'TOML syntax error', args: ['--config', configFile('[server\nport = 1\n'), 'check-config'], re: [/\.toml/] },
    { what: 'empty secret', args: ['--config', configFile('[[apps]]\nid = "a"\nkey = "k"\nsecret = ""\n'), 'check-config'], re: [/apps\[0\]\.secret is empty/] },
    { what: 'missing config file', args: ['--config', '/nonexistent/herald.toml', 'check-config'], re: [/\/nonexistent\/herald\.toml/, /check the --config path/] },
    { what: 'HERALD_DEFAULT_APP_ with a file that lists apps', args: ['--config', cfg, 'check-config'], env: { HERALD_DEFAULT_APP_KEY: 'k' }, re: [/HERALD_DEFAULT_APP_KEY/, /set the value in the file instead/] },
  ];
  const problems = [];
  for (const c of cases) {
    const r = await ops.cli(c.args, { env: c.env || {} });
    if (r.status !== 2) problems.push(`${c.what}: exit ${r.status} (want 2): ${r.out}`);
    if (r.stdout.includes('configuration is valid')) problems.push(`${c.what}: printed "valid"`);
    for (const re of c.re) if (!re.test(r.stderr)) problems.push(`${c.what}: stderr ${JSON.stringify(r.stderr)} does not match ${re}`);
  }
  assert.deepEqual(problems, []);
  // the server refuses to start with the same message
  const r = await ops.cli([], { env: { HERALD_PORT: 'x' }, timeout: 10000 });
  assert.equal(r.status, 2, r.out);
  assert.match(r.stderr, /HERALD_PORT/);
  assert.doesNotMatch(r.stdout, /Herald listening/);
});

test('OPS-CLI-3 --print-config shows the effective config with secrets redacted', T, async () => {
  const r = await ops.cli(['--config', cfg, '--print-config'], { env: { HERALD_CONSOLE_TOKEN: 'console-token-value', HERALD_SERVER_DRAIN_WINDOW_MS: '1234' } });
  assert.equal(r.status, 0, r.out);
  assert.doesNotMatch(r.stdout, /cli-secret-value|cli-secret-2|console-token-value/, 'no secret printed');
  assert.match(r.stdout, /secret = "<redacted>"/);
  assert.match(r.stdout, /token = "<redacted>"/);
  assert.match(r.stdout, /key = "cli-key"/);
  assert.match(r.stdout, /drain_window_ms = 1234/, 'environment overrides are applied');
  assert.match(r.stdout, /\[server\]/);
  // the printed config is itself a valid config (apart from the redacted secrets)
  const again = configFile(r.stdout.replace(/"<redacted>"/g, '"s"'));
  const c = await ops.cli(['--config', again, 'check-config']);
  assert.equal(c.status, 0, c.out);
});

test('OPS-CLI-4 trigger publishes with the first app of the config and prints the answer', T, async () => {
  const client = await pool.pusher({ server, app: APP });
  const name = h.uid('ops-cli-');
  const ch = await h.subscribeOk(client, name);
  const got = h.nextEvent(ch, 'cli-ev', 5000);
  const r = await ops.cli(['--config', cfg, 'trigger', name, 'cli-ev', '{"from":"cli"}', '--url', server.httpBase]);
  assert.equal(r.status, 0, r.out);
  assert.deepEqual(JSON.parse(r.stdout.trim()), {}, `printed answer: ${r.stdout}`);
  const ev = await got;
  assert.deepEqual(ev.data, { from: 'cli' });
  // --app-id picks another app: no delivery to APP's channel
  const r2 = await ops.cli(['--config', cfg, 'trigger', name, 'cli-ev2', 'x', '--url', server.httpBase, '--app-id', APP2.id]);
  assert.equal(r2.status, 0, r2.out);
  const s = await ops.waitMetrics(server, (x) => x.get('herald_http_requests_total', { app: APP2.id, route: 'events', status: '200' }) === 1, 3000, 'APP2 trigger counted');
  assert.equal(s.get('herald_http_requests_total', { app: APP.id, route: 'events', status: '200' }), 1);
});

test('OPS-CLI-5 trigger errors say how to fix them', T, async () => {
  const unknown = await ops.cli(['--config', cfg, 'trigger', 'c', 'e', 'd', '--url', server.httpBase, '--app-id', 'nope']);
  assert.equal(unknown.status, 2, unknown.out);
  assert.match(unknown.stderr, /no app with id `nope`.*check --app-id or --config/);
  const down = await ops.cli(['--config', cfg, 'trigger', 'c', 'e', 'd', '--url', 'http://127.0.0.1:1']);
  assert.equal(down.status, 2, down.out);
  assert.match(down.stderr, /http:\/\/127\.0\.0\.1:1/);
  assert.match(down.stderr, /is the server running there\? set --url/);
  const wrong = configFile({ apps: [{ ...APP, secret: 'not-the-secret' }] });
  const bad = await ops.cli(['--config', wrong, 'trigger', 'c', 'e', 'd', '--url', server.httpBase]);
  assert.equal(bad.status, 2, bad.out);
  assert.match(bad.stderr, /401/, 'the server answer is shown');
  const missing = await ops.cli(['trigger', 'only-channel']);
  assert.equal(missing.status, 2, missing.out);
  assert.match(missing.stderr, /required|<EVENT>/);
  assert.match(missing.stderr, /--help|Usage/);
});

test('OPS-CLI-6 channels lists occupied channels, with --prefix and --info subscription_count', T, async () => {
  const base = h.uid('opscli');
  const a = `${base}-a`;
  const b = `${base}-b`;
  const other = h.uid('zz-other');
  const c1 = await pool.pusher({ server, app: APP });
  const c2 = await pool.pusher({ server, app: APP });
  await h.subscribeOk(c1, a);
  await h.subscribeOk(c2, a);
  await h.subscribeOk(c1, b);
  await h.subscribeOk(c2, other);
  const all = await ops.cli(['--config', cfg, 'channels', '--url', server.httpBase]);
  assert.equal(all.status, 0, all.out);
  const allJson = JSON.parse(all.stdout.trim());
  assert.deepEqual(Object.keys(allJson.channels).sort(), [a, b, other].sort());
  const pre = await ops.cli(['--config', cfg, 'channels', '--url', server.httpBase, '--prefix', base, '--info', 'subscription_count']);
  assert.equal(pre.status, 0, pre.out);
  assert.deepEqual(JSON.parse(pre.stdout.trim()), { channels: { [a]: { subscription_count: 2 }, [b]: { subscription_count: 1 } } });
  const badInfo = await ops.cli(['--config', cfg, 'channels', '--url', server.httpBase, '--info', 'user_count']);
  assert.equal(badInfo.status, 2, `user_count without a presence- prefix is refused: ${badInfo.out}`);
  assert.match(badInfo.stderr, /400/);
});

test('OPS-CLI-7 apps list prints the apps of the config store without secrets', T, async () => {
  const d = await ops.cli(['apps', 'list']);
  assert.equal(d.status, 0, d.out);
  // A table: header, then one row per app (columns separated by runs of spaces).
  const rows = (text) => text.trim().split('\n').map((l) => l.trim().split(/\s+/));
  assert.deepEqual(rows(d.stdout), [
    ['ID', 'KEY', 'ENABLED', 'FLAGS'],
    ['app-id', 'app-key', 'yes', 'client-events,subscription-count,watchlist-events'],
  ]);
  const r = await ops.cli(['--config', cfg, 'apps', 'list']);
  assert.equal(r.status, 0, r.out);
  const listed = rows(r.stdout).slice(1).map((cols) => cols.slice(0, 3).join(' ')).sort();
  assert.deepEqual(listed, [`${APP.id} ${APP.key} yes`, `${APP2.id} ${APP2.key} yes`].sort());
  assert.doesNotMatch(r.stdout, /secret/);
  const bad = await ops.cli(['apps', 'nope']);
  assert.equal(bad.status, 2, bad.out);
  assert.match(bad.stderr, /unrecognized subcommand 'nope'/);
});

test('OPS-CLI-8 --help on every subcommand', T, async () => {
  const cmds = [[], ['serve'], ['check-config'], ['apps'], ['apps', 'list'], ['trigger'], ['channels'], ['help']];
  const problems = [];
  for (const c of cmds) {
    const r = await ops.cli(c[0] === 'help' ? ['help'] : [...c, '--help']);
    if (r.status !== 0) problems.push(`${c.join(' ') || '(top)'} --help: exit ${r.status}: ${r.out.slice(0, 300)}`);
    if (!/Usage: herald/.test(r.stdout)) problems.push(`${c.join(' ') || '(top)'} --help: no usage line: ${r.out.slice(0, 300)}`);
  }
  const top = await ops.cli(['--help']);
  for (const sub of ['serve', 'check-config', 'apps', 'trigger', 'channels']) {
    if (!top.stdout.includes(sub)) problems.push(`top-level help does not list ${sub}`);
  }
  for (const opt of ['--config', '--print-config']) if (!top.stdout.includes(opt)) problems.push(`top-level help does not list ${opt}`);
  const trig = await ops.cli(['trigger', '--help']);
  for (const opt of ['--url', '--app-id', '--insecure', '<CHANNEL>', '<EVENT>', '<DATA>']) if (!trig.stdout.includes(opt)) problems.push(`trigger --help lacks ${opt}`);
  const ch = await ops.cli(['channels', '--help']);
  for (const opt of ['--prefix', '--info', '--url']) if (!ch.stdout.includes(opt)) problems.push(`channels --help lacks ${opt}`);
  const v = await ops.cli(['--version']);
  if (v.status !== 0 || !/^herald \d+\.\d+/.test(v.stdout)) problems.push(`--version: ${v.out}`);
  const unknown = await ops.cli(['bogus']);
  if (unknown.status !== 2 || !/unrecognized subcommand 'bogus'/.test(unknown.stderr) || !/--help/.test(unknown.stderr)) problems.push(`unknown subcommand: ${unknown.status} ${unknown.out}`);
  assert.deepEqual(problems, []);
});
