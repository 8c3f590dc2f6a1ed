// Node.js `ws` client against duplex serve's /echo (run by harness.py, which
// starts the servers and passes their URLs in DX_* environment variables).
//
// Prints "plan N", then one "ok - NAME" or "not ok - NAME: WHY" per case, and
// exits 0 only if every case passed. Each case has its own time limit, so a
// hung case fails by name instead of hanging the run. TLS trusts the test CA
// explicitly (ca option), never rejectUnauthorized:false. Uses ws's defaults
// otherwise (it offers permessage-deflate, as real clients do).

import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), 'node_modules') + '/');
const WebSocket = require('ws');

const env = (k) => {
  const v = process.env[k];
  if (!v) { console.log(`missing environment variable ${k} (run through run.sh)`); process.exit(2); }
  return v;
};
const CA = fs.readFileSync(env('DX_CA_FILE'));
const SMALL = Number(env('DX_SMALL_LIMIT'));
const SIZES = [0, 125, 126, 65535, 65536, 16 * 1024 * 1024];
const CASE_MS = 30000;
const PONG_MS = 10000;

// ------------------------------------------------------------ payloads

let seed = 0x2545f491;
function randomBytes(n) {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) {
    seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5;
    b[i] = seed & 0xff;
  }
  return b;
}

// Exactly n bytes of valid UTF-8 mixing 1- to 4-byte characters.
function utf8Text(n) {
  const unit = Buffer.from('aé€😀', 'utf8'); // 1 + 2 + 3 + 4 = 10 bytes
  const b = Buffer.alloc(n, 0x78); // 'x'
  let i = 0;
  while (i + unit.length <= n) { unit.copy(b, i); i += unit.length; }
  return b;
}

function firstDiff(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

function sameBytes(got, want) {
  if (got.length === want.length && Buffer.compare(got, want) === 0) return null;
  return `echo differs: got ${got.length} bytes, sent ${want.length}, first difference at byte ${firstDiff(got, want)}`;
}

// ------------------------------------------------------------ a connection with a message queue

class Peer {
  static open(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { ca: CA, maxPayload: 64 * 1024 * 1024 });
      const p = new Peer(ws);
      ws.once('open', () => resolve(p));
      ws.once('error', reject);
    });
  }

  constructor(ws) {
    this.ws = ws;
    this.messages = [];
    this.pongs = [];
    this.waiters = [];
    this.closed = null;
    this.error = null;
    ws.on('message', (data, isBinary) => { this.messages.push({ data, isBinary }); this.wake(); });
    ws.on('pong', (data) => { this.pongs.push(data); this.wake(); });
    ws.on('error', (e) => { this.error = e; this.wake(); });
    ws.on('close', (code, reason) => { this.closed = { code, reason: reason.toString() }; this.wake(); });
  }

  wake() { const w = this.waiters; this.waiters = []; for (const f of w) f(); }

  // Waits until pick() returns something other than undefined.
  until(pick, what) {
    return new Promise((resolve, reject) => {
      const test = () => {
        const v = pick();
        if (v !== undefined) return resolve(v);
        if (this.closed) {
          return reject(new Error(`connection closed (${this.closed.code} ${this.closed.reason}) while waiting for ${what}` +
                                  (this.error ? `; error: ${this.error.message}` : '')));
        }
        this.waiters.push(test);
      };
      test();
    });
  }

  message() { return this.until(() => this.messages.shift(), 'a message'); }
  pong() {
    let timer;
    const late = new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`no pong within ${PONG_MS} ms`)), PONG_MS); });
    return Promise.race([this.until(() => this.pongs.shift(), 'a pong'), late]).finally(() => clearTimeout(timer));
  }
  closeEvent() { return this.until(() => this.closed || undefined, 'the close'); }

  send(data, opts) {
    return new Promise((resolve, reject) => this.ws.send(data, opts, (e) => (e ? reject(e) : resolve())));
  }

  terminate() { if (this.ws.readyState !== WebSocket.CLOSED) this.ws.terminate(); }
}

async function expectEcho(peer, payload, isBinary) {
  const m = await peer.message();
  if (m.isBinary !== isBinary) throw new Error(`echoed as ${m.isBinary ? 'binary' : 'text'}, sent ${isBinary ? 'binary' : 'text'}`);
  const why = sameBytes(m.data, payload);
  if (why) throw new Error(why);
}

// ------------------------------------------------------------ cases

const cases = [];
const add = (name, fn) => cases.push({ name, fn });

for (const [scheme, url, small] of [['ws', env('DX_WS_URL'), env('DX_WS_SMALL_URL')],
                                    ['wss', env('DX_WSS_URL'), env('DX_WSS_SMALL_URL')]]) {
  let shared = null; // one connection for the echo series, as a real client would
  const conn = async () => (shared && !shared.closed ? shared : (shared = await Peer.open(url)));

  add(`${scheme}: connect${scheme === 'wss' ? ' (certificate verified against the test CA)' : ''}`, async () => {
    const p = await conn();
    console.log(`# ${scheme}: negotiated extensions: ${JSON.stringify(p.ws.extensions) || '""'}`);
  });
  for (const kind of ['text', 'binary']) {
    for (const n of SIZES) {
      add(`${scheme}: ${kind} echo ${n} bytes`, async () => {
        const p = await conn();
        const payload = kind === 'text' ? utf8Text(n) : randomBytes(n);
        await p.send(payload, { binary: kind === 'binary' });
        await expectEcho(p, payload, kind === 'binary');
      });
    }
  }
  add(`${scheme}: fragmented text (UTF-8 split across fragments, empty fragment)`, async () => {
    const p = await conn();
    const whole = utf8Text(70001);
    // Cut points inside multi-byte characters (offsets 2, 5, 9 within a 10-byte unit).
    const cuts = [2, 5, 5, 9, 65539, 70001];
    let at = 0;
    for (let i = 0; i < cuts.length; i++) {
      await p.send(whole.subarray(at, cuts[i]), { binary: false, fin: i === cuts.length - 1 });
      at = cuts[i];
    }
    await expectEcho(p, whole, false);
  });
  add(`${scheme}: fragmented binary (1 + 65536 + 70000 bytes)`, async () => {
    const p = await conn();
    const parts = [randomBytes(1), randomBytes(65536), randomBytes(70000)];
    for (let i = 0; i < parts.length; i++) await p.send(parts[i], { binary: true, fin: i === parts.length - 1 });
    await expectEcho(p, Buffer.concat(parts), true);
  });
  add(`${scheme}: ping between fragments gets its pong, message intact`, async () => {
    const p = await conn();
    const a = randomBytes(1000), b = randomBytes(1000);
    await p.send(a, { binary: true, fin: false });
    p.ws.ping(Buffer.from('mid-message'));
    await p.send(b, { binary: true, fin: true });
    const pong = await p.pong();
    if (pong.toString() !== 'mid-message') throw new Error(`pong payload ${JSON.stringify(pong.toString())}`);
    await expectEcho(p, Buffer.concat([a, b]), true);
  });
  for (const [label, payload] of [['empty', Buffer.alloc(0)], ['"duplex-ping"', Buffer.from('duplex-ping')],
                                  ['125 bytes', randomBytes(125)]]) {
    add(`${scheme}: ping ${label} gets a pong with the same payload`, async () => {
      const p = await conn();
      p.ws.ping(payload);
      const pong = await p.pong();
      const why = sameBytes(pong, payload);
      if (why) throw new Error(why);
    });
  }
  add(`${scheme}: close 4000 with a reason is echoed with code 4000`, async () => {
    const p = await conn();
    p.ws.close(4000, 'bye from node');
    const c = await p.closeEvent();
    console.log(`# ${scheme}: close answered with ${c.code} ${JSON.stringify(c.reason)}`);
    if (c.code !== 4000) throw new Error(`close answered with ${c.code} ${JSON.stringify(c.reason)}`);
  });

  // The small server: --max-message SMALL.
  // Compressible, so that with permessage-deflate it also checks that the
  // limit counts the decompressed size (and without, the raw size).
  add(`${scheme} (limit ${SMALL}): binary of exactly the limit is echoed`, async () => {
    const p = await Peer.open(small);
    try {
      const payload = Buffer.alloc(SMALL);
      for (let i = 0; i < SMALL; i++) payload[i] = (i * 7) % 251;
      await p.send(payload, { binary: true });
      await expectEcho(p, payload, true);
    } finally { p.terminate(); }
  });
  const overs = [
    ['binary of limit + 1', async (p) => { await p.send(randomBytes(SMALL + 1), { binary: true }); }],
    ['text of limit + 1', async (p) => { await p.send(utf8Text(SMALL + 1), { binary: false }); }],
    ['fragmented binary totalling limit + 1', async (p) => {
      await p.send(randomBytes(SMALL / 2), { binary: true, fin: false });
      await p.send(randomBytes(SMALL / 2 + 1), { binary: true, fin: true });
    }],
  ];
  for (const [label, send] of overs) {
    add(`${scheme} (limit ${SMALL}): ${label} gets close 1009`, async () => {
      const p = await Peer.open(small);
      try {
        try { await send(p); } catch (e) { /* the server may close while we write */ }
        const c = await p.until(() => p.closed || (p.messages.length ? 'echoed' : undefined), 'the close');
        if (c === 'echoed') throw new Error('the message was echoed instead of close 1009');
        if (c.code !== 1009) {
          throw new Error(`closed with ${c.code} ${JSON.stringify(c.reason)}` + (p.error ? ` (error: ${p.error.message})` : ''));
        }
      } finally { p.terminate(); }
    });
  }
  add(`${scheme}: done with the shared connection`, async () => { if (shared) shared.terminate(); });
}

// ------------------------------------------------------------ run

console.log(`plan ${cases.length}`);
let failed = 0;
for (const c of cases) {
  let timer;
  try {
    await Promise.race([c.fn(), new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`timed out after ${CASE_MS} ms`)), CASE_MS); })]);
    console.log(`ok - ${c.name}`);
  } catch (e) {
    failed++;
    console.log(`not ok - ${c.name}: ${e && e.message ? e.message : e}`);
  } finally { clearTimeout(timer); }
}
process.exit(failed ? 1 : 0);
