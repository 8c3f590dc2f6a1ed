// Node.js `ws` client with permessage-deflate against duplex serve's /echo
// (run by deflate_peers.py, which starts `duplex serve --deflate=...`).
//
//   node deflate_node_client.mjs --url URL --label L --offer JSON [--expect JSON|none]
//
// --offer is ws's perMessageDeflate option object (serverNoContextTakeover,
// clientNoContextTakeover, serverMaxWindowBits, clientMaxWindowBits,
// threshold; threshold 0 unless given, so every message is compressed).
// --expect is the negotiated parameter set the harness computed from the
// offer and the server's configuration ({server_no_context_takeover: true,
// client_max_window_bits: 10, ...}), or "none" when the server must decline.
//
// Cases (the shape of Autobahn 12.* and 13.*): the negotiated extension as
// ws parsed it from the 101 response; text and binary echo of 0, 1, 125,
// 126, 65536 and 1048575 bytes, compressible and random, compared byte for
// byte; a compressible 1 MiB - 1 echo arrives compressed (bytes read from the
// socket); messages fragmented by ws (UTF-8 split across fragments, an empty
// fragment, binary pieces) with compression; the same random 200 bytes five
// times: with server context takeover the later echoes are back-references
// (a few bytes on the wire), with server_no_context_takeover each costs the
// full 200 bytes again (and ws inflates each with a fresh context, so a
// server that kept its context would fail the echo); close 1000.
// Prints "plan N", "ok - NAME" / "not ok - NAME: WHY", "# ..." notes; exit 0
// only if every case passed.

import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), 'node_modules') + '/');
const WebSocket = require('ws');

const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : dflt;
};
const url = opt('--url');
const label = opt('--label', 'node');
const offer = JSON.parse(opt('--offer', '{}'));
const expectArg = opt('--expect', '{}');
if (!url) {
  console.error('usage: deflate_node_client.mjs --url URL --label L --offer JSON [--expect JSON|none]');
  process.exit(2);
}
const expect = expectArg === 'none' ? null : JSON.parse(expectArg);
if (offer.threshold === undefined) offer.threshold = 0;

const SIZES = [0, 1, 125, 126, 65536, 1048575];
const CASE_MS = 30000;
const KINDS = ['compressible', 'random'];
const OPS = ['text', 'binary'];
// negotiated + echo cases + compressed-on-the-wire + 3 fragmented + context + close
const PLAN = 1 + SIZES.length * KINDS.length * OPS.length + 1 + 3 + 1 + 1;
console.log(`plan ${PLAN}`);

let failed = 0;
let reported = 0;
const ok = (name) => { reported++; console.log(`ok - ${label}: ${name}`); };
const notOk = (name, why) => {
  reported++;
  failed++;
  console.log(`not ok - ${label}: ${name}: ${String(why).split('\n')[0]}`);
};

// ------------------------------------------------------------ payloads

let seed = 0x6a09e667 ^ label.length;
function rnd() {
  seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5;
  return seed >>> 0;
}
function randomBytes(n) {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = rnd() & 0xff;
  return b;
}
// Exactly n bytes of UTF-8: random code points of 1 to 4 bytes, ASCII to fill.
function randomText(n) {
  const parts = [];
  let len = 0;
  while (len < n) {
    const k = 1 + (rnd() % 4);
    let cp;
    if (k === 1) cp = 0x20 + (rnd() % 0x5f);
    else if (k === 2) cp = 0x80 + (rnd() % 0x780);
    else if (k === 3) { cp = 0x800 + (rnd() % 0xf800); if (cp >= 0xd800 && cp <= 0xdfff) cp = 0x4e00; }
    else cp = 0x10000 + (rnd() % 0x100000);
    const s = Buffer.from(String.fromCodePoint(cp), 'utf8');
    if (len + s.length > n) break;
    parts.push(s);
    len += s.length;
  }
  parts.push(Buffer.alloc(n - len, 0x61));
  return Buffer.concat(parts, n);
}
// Exactly n bytes of compressible UTF-8: JSON-like records with some variety.
function compressibleText(n) {
  const parts = [];
  let len = 0;
  for (let i = 0; len < n; i++) {
    const s = Buffer.from(`{"id":${i},"user":"user-${i % 97}","text":"héllo wörld €${i % 13}","ok":${i % 3 === 0}},`);
    parts.push(s);
    len += s.length;
  }
  return fixUtf8(Buffer.concat(parts).subarray(0, n));
}
// Cutting may split the last character: replace a partial tail with ASCII.
function fixUtf8(b) {
  let i = b.length;
  let back = 0;
  while (i > 0 && back < 4 && (b[i - 1] & 0xc0) === 0x80) { i--; back++; }
  if (i > 0 && b[i - 1] >= 0xc0) {
    const lead = b[i - 1];
    const need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
    if (back + 1 < need) b.fill(0x61, i - 1);
  }
  return b;
}
function payload(kind, op, n) {
  if (op === 'binary') return kind === 'random' ? randomBytes(n) : compressibleText(n);
  return kind === 'random' ? randomText(n) : compressibleText(n);
}
function firstDiff(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

// ------------------------------------------------------------ connection

const ws = new WebSocket(url, { perMessageDeflate: offer, maxPayload: 64 * 1024 * 1024 });
// the 101's Sec-WebSocket-Extensions as the server wrote it (ws.extensions
// holds only the names, and ws's params add its own defaults)
let answered = '';
ws.on('upgrade', (res) => { answered = res.headers['sec-websocket-extensions'] || ''; });
const inbox = [];
let waiter = null;
let closed = null;
ws.on('message', (data, isBinary) => {
  inbox.push({ data: Buffer.isBuffer(data) ? data : Buffer.concat(data), isBinary, at: ws._socket ? ws._socket.bytesRead : 0 });
  if (waiter) { const w = waiter; waiter = null; w(); }
});
ws.on('close', (code, reason) => {
  closed = { code, reason: reason.toString() };
  if (waiter) { const w = waiter; waiter = null; w(); }
});
ws.on('error', (e) => console.log(`# ${label}: error: ${e.message}`));

function next(ms = CASE_MS) {
  return new Promise((resolve, reject) => {
    const take = () => {
      if (inbox.length) return resolve(inbox.shift());
      if (closed) return reject(new Error(`connection closed ${closed.code} ${closed.reason}`));
      const t = setTimeout(() => { waiter = null; reject(new Error(`no message in ${ms} ms`)); }, ms);
      waiter = () => { clearTimeout(t); take(); };
    };
    take();
  });
}
function send(data, opts) {
  return new Promise((resolve, reject) => ws.send(data, opts, (e) => (e ? reject(e) : resolve())));
}

function parseExt(header) {
  // "permessage-deflate; a; b=10" -> {a: true, b: 10}
  const out = {};
  if (!header) return null;
  const first = header.split(',')[0];
  const parts = first.split(';').map((s) => s.trim());
  if (parts[0] !== 'permessage-deflate') return null;
  for (const p of parts.slice(1)) {
    if (!p) continue;
    const [k, v] = p.split('=').map((s) => s.trim());
    out[k] = v === undefined ? true : Number(v.replace(/"/g, ''));
  }
  return out;
}
function sameParams(a, b) {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return JSON.stringify(ka) === JSON.stringify(kb) && ka.every((k) => a[k] === b[k]);
}

async function main() {
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('open timed out')), CASE_MS);
    ws.once('open', () => { clearTimeout(t); resolve(); });
    ws.once('unexpected-response', (_req, res) => { clearTimeout(t); reject(new Error(`status ${res.statusCode}`)); });
    ws.once('error', (e) => { clearTimeout(t); reject(e); });
  });
  const header = answered;
  const got = parseExt(header);
  const pmd = ws._extensions && ws._extensions['permessage-deflate'];
  console.log(`# ${label}: offer ${JSON.stringify(offer)}; server answered Sec-WebSocket-Extensions: ${header || '(none)'}`);
  if (pmd) console.log(`# ${label}: ws accepted params ${JSON.stringify(pmd.params)}`);
  const name = `negotiated ${expect ? JSON.stringify(expect) : 'no extension'}`;
  if (expect === null) {
    if (got === null && !pmd) ok(name); else notOk(name, `server answered "${header}"`);
  } else if (got === null || !pmd) {
    notOk(name, `no permessage-deflate in the answer ("${header}")`);
  } else if (!sameParams(got, expect)) {
    notOk(name, `server answered ${JSON.stringify(got)}`);
  } else {
    ok(name);
  }
  const deflate = !!pmd;
  // RFC 7692 allows a window of 8 bits; zlib cannot compress with it, so
  // duplex sends uncompressed (RSV1 is per message) when it must use 8
  const serverCompresses = deflate && !(got && got.server_max_window_bits === 8);
  const sockIn = () => ws._socket.bytesRead;

  // Echo of every size, kind and type.
  let bigCompressedIn = -1;
  for (const n of SIZES) {
    for (const kind of KINDS) {
      for (const op of OPS) {
        const cname = `echo ${op} ${kind} ${n} bytes`;
        try {
          const data = payload(kind, op, n);
          const before = sockIn();
          await send(data, { binary: op === 'binary', compress: true });
          const m = await next();
          if (m.isBinary !== (op === 'binary')) throw new Error(`type changed (binary=${m.isBinary})`);
          if (m.data.length !== n || Buffer.compare(m.data, data) !== 0) {
            throw new Error(`got ${m.data.length} bytes, sent ${n}, first difference at ${firstDiff(m.data, data)}`);
          }
          if (n === 1048575 && kind === 'compressible' && op === 'binary') bigCompressedIn = m.at - before;
          ok(cname);
        } catch (e) {
          notOk(cname, e.message);
        }
      }
    }
  }
  {
    const cname = serverCompresses ? 'the 1 MiB - 1 compressible echo came compressed (under 1/4 of its size on the wire)'
      : `the 1 MiB - 1 echo came uncompressed (${deflate ? 'server window 8' : 'no extension'})`;
    if (bigCompressedIn < 0) notOk(cname, 'the echo did not arrive');
    else if (serverCompresses ? bigCompressedIn < 1048575 / 4 : bigCompressedIn >= 1048575) ok(cname);
    else notOk(cname, `${bigCompressedIn} bytes read for it`);
    console.log(`# ${label}: 1 MiB - 1 compressible echo: ${bigCompressedIn} bytes on the wire`);
  }

  // Fragmented by ws: pieces of one compressed message.
  const frag = async (cname, pieces, binary) => {
    try {
      const whole = Buffer.concat(pieces);
      for (let i = 0; i < pieces.length; i++) {
        await send(pieces[i], { binary, compress: true, fin: i === pieces.length - 1 });
      }
      const m = await next();
      if (m.isBinary !== binary) throw new Error(`type changed (binary=${m.isBinary})`);
      if (Buffer.compare(m.data, whole) !== 0) throw new Error(`got ${m.data.length} bytes, sent ${whole.length}`);
      ok(cname);
    } catch (e) {
      notOk(cname, e.message);
    }
  };
  const euro = Buffer.from('€uro €uro ', 'utf8');
  const t = Buffer.concat(Array(2000).fill(euro));
  await frag('fragmented text, UTF-8 split across fragments, an empty fragment',
    [t.subarray(0, 1), t.subarray(1, 2), Buffer.alloc(0), t.subarray(2, 7001), t.subarray(7001)], false);
  await frag('fragmented binary 1 + 65536 + 70000 bytes', [randomBytes(1), compressibleText(65536), randomBytes(70000)], true);
  await frag('fragmented binary, 200 fragments of 64 bytes', Array.from({ length: 200 }, () => compressibleText(64)), true);

  // Context takeover as negotiated, seen from the bytes on the wire.
  {
    const noCtx = !serverCompresses || !!(got && got.server_no_context_takeover);
    const cname = noCtx ? 'the same 200 random bytes 5 times: each echo costs them again (no server context takeover, or no compression)'
      : 'the same 200 random bytes 5 times: later echoes are back-references (server context takeover)';
    try {
      const data = randomBytes(200);
      const sizes = [];
      for (let i = 0; i < 5; i++) {
        const before = sockIn();
        await send(data, { binary: true, compress: true });
        const m = await next();
        if (Buffer.compare(m.data, data) !== 0) throw new Error(`echo ${i + 1} differs`);
        sizes.push(m.at - before);
      }
      console.log(`# ${label}: wire bytes of the 5 echoes: ${sizes.join(' ')}`);
      const later = sizes.slice(1);
      if (noCtx ? later.every((s) => s >= 200) : later.every((s) => s < 60)) ok(cname);
      else notOk(cname, `wire bytes per echo ${sizes.join(' ')}`);
    } catch (e) {
      notOk(cname, e.message);
    }
  }

  // Close.
  {
    const cname = 'close 1000 echoed';
    try {
      ws.close(1000, 'done');
      const deadline = Date.now() + 10000;
      while (!closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      if (!closed) throw new Error('no close within 10 s');
      if (closed.code !== 1000) throw new Error(`close code ${closed.code} ${closed.reason}`);
      ok(cname);
    } catch (e) {
      notOk(cname, e.message);
    }
  }
}

try {
  await main();
} catch (e) {
  notOk('connects', e.message);
}
while (reported < PLAN) notOk('planned case', 'not reached');
try { ws.terminate(); } catch { /* already gone */ }
process.exit(failed ? 1 : 0);
