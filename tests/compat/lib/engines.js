'use strict';
// Redis engines in the modes operators run, for end-to-end tests across modes. Each helper
// starts real processes (Debian's redis-server, redis-sentinel, redis-cli; `scripts/redis.sh
// start` installs them) on free loopback ports in a temporary directory, waits until they
// serve, and returns `env` (the HERALD_REDIS_* variables that point Herald at them) and
// `stop()` (kills every process and removes the directory):
//
//  * startRedisTls({ aclUser, password }) — one server speaking TLS only, with a certificate
//    for 127.0.0.1 signed by a CA made for it (`caFile`, for HERALD_REDIS_CA_FILE) and one
//    ACL user (the default user is off).
//  * startSentinel() — a primary and a replica (with a password) watched by three Sentinels
//    (their own password; quorum 2, down after 1 s): `failover()` asks a Sentinel for a
//    failover, `killPrimary()` kill -9s the primary; both wait until the Sentinels name the
//    new one.
//  * startRedisCluster() — three primaries with a replica each (six processes, node timeout
//    1 s): `killPrimary({ slot })` kill -9s the primary serving a slot (or the first one) and
//    waits until its replica serves the slots. `keySlot(name)` gives a channel's slot.
//
// Processes still running when the test process exits are killed.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, execFile, execFileSync } = require('node:child_process');
const { freePort } = require('./cluster');
const { waitFor, withTimeout } = require('./wait');

const READY_MS = 15000;
const live = new Set();
process.on('exit', () => {
  for (const p of live) {
    try {
      p.kill('SIGKILL');
    } catch (_) {}
  }
});

/** Throws a clear error when a Redis binary is missing. */
function requireRedis() {
  for (const bin of ['redis-server', 'redis-sentinel', 'redis-cli']) {
    try {
      execFileSync(bin, ['--version'], { stdio: 'ignore' });
    } catch (_) {
      throw new Error(`${bin} is not on PATH: run \`scripts/redis.sh start\` (installs Debian's redis-server, redis-sentinel and redis-tools)`);
    }
  }
}

function tempDir(what) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `herald-${what}-`));
}

/** redis-cli's arguments for a login: { user, password, caFile }. */
function loginArgs({ user, password, caFile } = {}) {
  const a = [];
  if (caFile) a.push('--tls', '--cacert', caFile);
  if (user) a.push('--user', user);
  if (password) a.push('--pass', password);
  a.push('--no-auth-warning');
  return a;
}

/** Runs one command with redis-cli on 127.0.0.1:port; resolves with its output (trimmed). */
function cli(port, login, ...args) {
  return new Promise((resolve, reject) => {
    execFile(
      'redis-cli',
      ['-h', '127.0.0.1', '-p', String(port), ...loginArgs(login), ...args.map(String)],
      { timeout: 5000 },
      (err, stdout, stderr) => {
        const out = String(stdout).trim();
        if (err || /^(ERR|NOAUTH|WRONGPASS|Could not connect)/.test(out)) {
          reject(new Error(`redis-cli -p ${port} ${args.join(' ')}: ${out} ${String(stderr).trim()} ${err ? err.message : ''}`));
        } else {
          resolve(out);
        }
      },
    );
  });
}

/**
 * Starts `bin args` (which set the port), logging to dir, and waits for PING.
 * Returns { port, login, cli(...args), running(), kill(), restart(), log() }.
 */
async function startProcess(dir, bin, port, args, login = {}) {
  const p = { port, login, proc: null };
  const logFile = path.join(dir, `${bin}-${port}.log`);
  p.log = () => {
    try {
      return fs.readFileSync(logFile, 'utf8').split('\n').slice(-30).join('\n');
    } catch (_) {
      return '';
    }
  };
  p.cli = (...a) => cli(port, login, ...a);
  p.running = () => !!p.proc && p.proc.exitCode === null && p.proc.signalCode === null;
  async function spawnOnce() {
    const out = fs.openSync(logFile, 'a');
    const proc = spawn(bin, args, { stdio: ['ignore', out, out] });
    fs.closeSync(out);
    p.proc = proc;
    live.add(proc);
    proc.exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
    proc.exited.then(() => live.delete(proc));
    await waitFor(
      async () => {
        if (!p.running()) throw new Error(`${bin} on port ${port} exited: ${p.log()}`);
        return (await p.cli('PING')) === 'PONG';
      },
      READY_MS,
      `${bin} on port ${port} to answer PING`,
    );
  }
  /** kill -9, waiting for the process to be gone. */
  p.kill = async () => {
    if (!p.running()) return;
    p.proc.kill('SIGKILL');
    await withTimeout(p.proc.exited, 5000, `${bin} exit after SIGKILL`);
  };
  /** Kills it (if it runs) and starts it again the same way, on the same port. */
  p.restart = async () => {
    await p.kill();
    const deadline = Date.now() + 10000;
    for (;;) {
      try {
        await spawnOnce();
        return;
      } catch (e) {
        if (p.running()) p.proc.kill('SIGKILL');
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 200)); // the port may still be held: retry pacing
      }
    }
  };
  await spawnOnce();
  return p;
}

function dataArgs(dir, port, extra = []) {
  return ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, ...extra];
}

/** What stop() does for a set of processes in dir. */
function stopper(procs, dir) {
  return () => {
    for (const p of procs()) if (p.running()) p.proc.kill('SIGKILL');
    try {
      fs.rmSync(dir, { recursive: true, force: true });
    } catch (_) {}
  };
}

/** A CA and a certificate for 127.0.0.1 and localhost signed by it, made with openssl in dir. */
function makeCertificates(dir) {
  const p = (n) => path.join(dir, n);
  fs.writeFileSync(
    p('server.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n',
  );
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'];
  const run = (args) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  run(['req', '-x509', '-new', '-nodes', ...ec, '-keyout', p('ca.key'), '-out', p('ca.crt'), '-days', '2', '-subj', '/CN=herald test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  run(['req', '-new', '-nodes', ...ec, '-keyout', p('server.key'), '-out', p('server.csr'), '-subj', '/CN=127.0.0.1']);
  run(['x509', '-req', '-in', p('server.csr'), '-CA', p('ca.crt'), '-CAkey', p('ca.key'), '-CAcreateserial', '-out', p('server.crt'),
    '-days', '2', '-extfile', p('server.ext')]);
  return { ca: p('ca.crt'), cert: p('server.crt'), key: p('server.key') };
}

/**
 * One redis-server speaking TLS only, with an ACL user. Resolves to
 * { port, url ('rediss://user:password@127.0.0.1:port'), caFile, env, server, cli(...), stop() }.
 */
async function startRedisTls({ aclUser = 'herald', password = `pw-${process.pid}-${Date.now().toString(36)}` } = {}) {
  requireRedis();
  const dir = tempDir('redis-tls');
  const { ca, cert, key } = makeCertificates(dir);
  const port = await freePort();
  const args = [
    '--port', '0', '--tls-port', String(port), '--bind', '127.0.0.1',
    '--tls-cert-file', cert, '--tls-key-file', key, '--tls-ca-cert-file', ca, '--tls-auth-clients', 'no',
    '--save', '', '--appendonly', 'no', '--dir', dir,
    '--user', 'default', 'off',
    '--user', aclUser, 'on', `>${password}`, '~*', '&*', '+@all',
  ];
  let server;
  try {
    server = await startProcess(dir, 'redis-server', port, args, { user: aclUser, password, caFile: ca });
  } catch (e) {
    stopper(() => [], dir)();
    throw e;
  }
  const url = `rediss://${encodeURIComponent(aclUser)}:${encodeURIComponent(password)}@127.0.0.1:${port}`;
  return {
    port,
    url,
    caFile: ca,
    aclUser,
    password,
    server,
    env: { HERALD_REDIS_URL: url, HERALD_REDIS_CA_FILE: ca },
    cli: (...a) => server.cli(...a),
    stop: stopper(() => [server], dir),
  };
}

/**
 * A primary and a replica, both with `password`, watched by three Sentinels with
 * `sentinelPassword`. Resolves to { urls, url (comma-separated), master, password,
 * sentinelPassword, env, primaryPort(), failover(), killPrimary(), nodes, sentinels, stop() }.
 */
async function startSentinel({ master = 'herald-primary', password = 'primary-pw-1', sentinelPassword = 'sentinel-pw-1' } = {}) {
  requireRedis();
  const dir = tempDir('sentinel');
  const procs = [];
  const stop = stopper(() => procs, dir);
  try {
    const login = { password };
    const auth = ['--requirepass', password, '--masterauth', password];
    const pp = await freePort();
    procs.push(await startProcess(dir, 'redis-server', pp, dataArgs(dir, pp, auth), login));
    const rp = await freePort();
    const replica = await startProcess(dir, 'redis-server', rp, dataArgs(dir, rp, [...auth, '--replicaof', '127.0.0.1', String(pp)]), login);
    procs.push(replica);
    await waitFor(async () => /master_link_status:up/.test(await replica.cli('INFO', 'replication')), READY_MS, 'the replica in sync');
    const sentinels = [];
    for (let i = 0; i < 3; i++) {
      const port = await freePort();
      const conf = path.join(dir, `sentinel-${port}.conf`);
      fs.writeFileSync(
        conf,
        [
          `port ${port}`, 'bind 127.0.0.1', `dir ${dir}`, `requirepass ${sentinelPassword}`,
          `sentinel sentinel-pass ${sentinelPassword}`,
          `sentinel monitor ${master} 127.0.0.1 ${pp} 2`,
          `sentinel auth-pass ${master} ${password}`,
          `sentinel down-after-milliseconds ${master} 1000`,
          `sentinel failover-timeout ${master} 10000`,
          `sentinel parallel-syncs ${master} 1`,
          '',
        ].join('\n'),
      );
      const s = await startProcess(dir, 'redis-sentinel', port, [conf], { password: sentinelPassword });
      sentinels.push(s);
      procs.push(s);
    }
    // A failover needs each Sentinel to know the replica and the two others.
    for (const s of sentinels) {
      await waitFor(
        async () => {
          const v = (await s.cli('SENTINEL', 'MASTER', master)).split('\n');
          const field = (k) => v[v.indexOf(k) + 1];
          return field('num-slaves') === '1' && field('num-other-sentinels') === '2';
        },
        READY_MS,
        `Sentinel ${s.port} to know the replica and the other Sentinels`,
      );
    }
    const urls = sentinels.map((s) => `redis://:${encodeURIComponent(password)}@127.0.0.1:${s.port}`);
    const nodes = procs.filter((p) => !sentinels.includes(p));
    const primaryPort = async () => {
      for (const s of sentinels) {
        try {
          return Number((await s.cli('SENTINEL', 'GET-MASTER-ADDR-BY-NAME', master)).split('\n')[1]);
        } catch (_) {}
      }
      throw new Error('no Sentinel answers');
    };
    const waitNewPrimary = (old, what) =>
      waitFor(
        async () => {
          const port = await primaryPort();
          if (port === old) return false;
          const node = nodes.find((n) => n.port === port);
          return node && /role:master/.test(await node.cli('INFO', 'replication')) ? port : false;
        },
        READY_MS,
        what,
      );
    return {
      urls,
      url: urls.join(','),
      master,
      password,
      sentinelPassword,
      nodes,
      sentinels,
      env: {
        HERALD_REDIS_MODE: 'sentinel',
        HERALD_REDIS_URL: urls.join(','),
        HERALD_REDIS_SENTINEL_MASTER: master,
        HERALD_REDIS_SENTINEL_PASSWORD: sentinelPassword,
      },
      primaryPort,
      /** SENTINEL FAILOVER (the primary stays up); resolves with the new primary's port. */
      async failover() {
        const old = await primaryPort();
        await sentinels[0].cli('SENTINEL', 'FAILOVER', master);
        return waitNewPrimary(old, 'the Sentinels to name a new primary after SENTINEL FAILOVER');
      },
      /** kill -9 of the current primary; resolves with the new primary's port. */
      async killPrimary() {
        const old = await primaryPort();
        await nodes.find((n) => n.port === old).kill();
        return waitNewPrimary(old, 'the Sentinels to promote the replica after the primary was killed');
      },
      stop,
    };
  } catch (e) {
    stop();
    throw e;
  }
}

/** Redis Cluster's hash slot of a key or channel (CRC16 of its hash tag or whole name). */
function keySlot(name) {
  let b = Buffer.from(name, 'utf8');
  const open = b.indexOf('{');
  if (open >= 0) {
    const close = b.indexOf('}', open + 1);
    if (close > open + 1) b = b.subarray(open + 1, close);
  }
  let crc = 0;
  for (const byte of b) {
    crc ^= byte << 8;
    for (let i = 0; i < 8; i++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc % 16384;
}

/** CLUSTER NODES lines: { id, port, flags, primaryId, slots: [[a, b], ...] }. */
function parseNodes(out) {
  return out
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const f = line.split(' ');
      const slots = f.slice(8).filter((r) => /^\d/.test(r)).map((r) => {
        const [a, b] = r.split('-').map(Number);
        return [a, b === undefined ? a : b];
      });
      return { id: f[0], port: Number(f[1].split(/[:@]/)[1]), flags: f[2], primaryId: f[3], slots };
    });
}

/**
 * A Redis Cluster of three primaries with one replica each. Resolves to
 * { urls (seeds), url (comma-separated), env, nodes, keySlot, primaryOf(slot), killPrimary({ slot }), stop() }.
 */
async function startRedisCluster() {
  requireRedis();
  const dir = tempDir('cluster');
  const nodes = [];
  const stop = stopper(() => nodes, dir);
  try {
    for (let i = 0; i < 6; i++) {
      const port = await freePort();
      const bus = await freePort();
      const extra = ['--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', '1000', '--cluster-port', String(bus)];
      nodes.push(await startProcess(dir, 'redis-server', port, dataArgs(dir, port, extra)));
    }
    const addrs = nodes.map((n) => `127.0.0.1:${n.port}`);
    await new Promise((resolve, reject) =>
      execFile('redis-cli', ['--cluster', 'create', ...addrs, '--cluster-replicas', '1', '--cluster-yes'], { timeout: 30000 }, (err, stdout, stderr) =>
        err ? reject(new Error(`redis-cli --cluster create: ${stdout}${stderr}`)) : resolve(),
      ),
    );
    for (const n of nodes) {
      await waitFor(async () => {
        const info = await n.cli('CLUSTER', 'INFO');
        if (!/cluster_state:ok/.test(info) || !/cluster_known_nodes:6/.test(info)) return false;
        // A replica can take over only once it has been in sync.
        const repl = await n.cli('INFO', 'replication');
        return /role:master/.test(repl) || /master_link_status:up/.test(repl);
      }, READY_MS, `cluster node ${n.port} ready`);
    }
    const urls = addrs.map((a) => `redis://${a}`);
    const view = async () => {
      for (const n of nodes) {
        if (!n.running()) continue;
        try {
          return parseNodes(await n.cli('CLUSTER', 'NODES'));
        } catch (_) {}
      }
      throw new Error('no cluster node answers');
    };
    const primaryOf = async (slot) => {
      const p = (await view()).find((l) => /master/.test(l.flags) && !/fail/.test(l.flags) && l.slots.some(([a, b]) => slot >= a && slot <= b));
      return p ? nodes.find((n) => n.port === p.port) : null;
    };
    return {
      urls,
      url: urls.join(','),
      nodes,
      keySlot,
      env: { HERALD_REDIS_MODE: 'cluster', HERALD_REDIS_URL: urls.join(',') },
      /** The node (from `nodes`) of the live primary serving `slot`. */
      primaryOf,
      /**
       * kill -9 of the primary serving `slot` (default: slot 0); resolves with
       * { killed, promoted } (ports) once its replica serves the slot and the cluster is ok.
       */
      async killPrimary({ slot = 0 } = {}) {
        const victim = await primaryOf(slot);
        await victim.kill();
        const promoted = await waitFor(async () => {
          const p = await primaryOf(slot);
          if (!p || p.port === victim.port) return false;
          return /cluster_state:ok/.test(await p.cli('CLUSTER', 'INFO')) ? p : false;
        }, READY_MS, `a replica to take over slot ${slot}`);
        return { killed: victim.port, promoted: promoted.port };
      },
      stop,
    };
  } catch (e) {
    stop();
    throw e;
  }
}

module.exports = { requireRedis, startRedisTls, startSentinel, startRedisCluster, keySlot, redisCli: cli };
