// bench/peers/ws_client.js: the Node `ws` CLIENT peer of scripts/bench_echo.sh
// (client-throughput row): the same workload as `duplex bench` in echo mode,
// so the two clients can be compared against the same server.
//
//   node ws_client.js -c CONNS -d DEPTH -s SIZE -t SECONDS -w WARMUP URL
//
// N connections, D messages in flight on each, S-byte binary messages whose
// first 8 bytes carry the message's sequence number (as duplex bench does);
// every echo is checked (length, sequence, the rest of the payload) and a
// mismatch counts an error. Latency goes into a log-linear histogram (16
// sub-buckets per power of two, like duplex bench). Prints one JSON line
// with the field names of `duplex bench --json` (msgs_per_s, mb_per_s,
// lat_p50_us, lat_p99_us, cpu_pct, errors, total_msgs). Node runs the
// JavaScript on one thread; pin the process with taskset to compare cores.
'use strict';

const WebSocket = require('ws');

const opt = { c: 100, d: 1, s: 16, t: 4, w: 1 };
let url = null;
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  let a = args[i];
  if (a === '--size') a = '-s'; // duplex bench spells these out (its -s/-w are free for connect's meanings)
  if (a === '--warmup') a = '-w';
  if (/^-[cdstw]$/.test(a) && i + 1 < args.length) opt[a[1]] = Number(args[++i]);
  else if (!url && /^wss?:\/\//.test(a)) url = a;
  else {
    console.error('usage: node ws_client.js -c N -d D -s S -t SECONDS -w WARMUP URL');
    process.exit(2);
  }
}
if (!url || !(opt.c > 0 && opt.d > 0 && opt.s > 0 && opt.t > 0 && opt.w >= 0)) {
  console.error('usage: node ws_client.js -c N -d D -s S -t SECONDS -w WARMUP URL');
  process.exit(2);
}

const SEQ = 8;
const pattern = Buffer.alloc(opt.s);
let x = 0x9e3779b9;
for (let i = 0; i < opt.s; i++) {
  x ^= x << 13; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
  pattern[i] = 32 + (x % 95);
}
function seqBytes(buf, seq) {
  for (let i = 0; i < SEQ && i < buf.length; i++) buf[i] = 97 + (Math.floor(seq / 2 ** (5 * i)) & 31);
}

// log-linear histogram of nanoseconds
const SUB = 16;
const hist = new Float64Array(64 * SUB);
let histN = 0;
let histMax = 0;
function histAdd(ns) {
  let idx;
  if (ns < SUB) idx = ns;
  else {
    const msb = Math.floor(Math.log2(ns));
    idx = (msb - 3) * SUB + (Math.floor(ns / 2 ** (msb - 4)) & (SUB - 1));
  }
  hist[idx]++;
  histN++;
  if (ns > histMax) histMax = ns;
}
function quantile(p) {
  if (!histN) return 0;
  const target = Math.max(1, Math.round(p * histN));
  let acc = 0;
  for (let i = 0; i < hist.length; i++) {
    acc += hist[i];
    if (acc >= target) {
      if (i < SUB) return i;
      const m = Math.floor(i / SUB), sub = i % SUB;
      const mid = ((SUB + sub) * 2 ** (m - 1) + (SUB + sub + 1) * 2 ** (m - 1)) / 2;
      return Math.min(mid, histMax);
    }
  }
  return histMax;
}

let measuring = false;
let stopping = false;
let msgs = 0;
let total = 0;
let errors = 0;
let open = 0;
let closed = 0;
const conns = [];
const now = () => Number(process.hrtime.bigint());

function sendOne(k) {
  const buf = Buffer.from(pattern);
  seqBytes(buf, k.sent);
  k.ts[k.sent % opt.d] = now();
  k.sent++;
  k.ws.send(buf, { binary: true });
}

function start(i) {
  const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 * 1024 * 1024 });
  const k = { ws, sent: 0, recv: 0, ts: new Array(opt.d).fill(0), expect: Buffer.from(pattern) };
  conns.push(k);
  ws.on('open', () => {
    open++;
    for (let j = 0; j < opt.d; j++) sendOne(k);
    if (open === opt.c) allOpen();
  });
  ws.on('message', (data, isBinary) => {
    const t = now();
    seqBytes(k.expect, k.recv);
    if (!isBinary || data.length !== opt.s || !k.expect.equals(data)) {
      errors++;
      ws.terminate();
      return;
    }
    const lat = t - k.ts[k.recv % opt.d];
    k.recv++;
    total++;
    if (measuring) {
      msgs++;
      histAdd(lat);
    }
    if (!stopping) sendOne(k);
  });
  ws.on('error', () => { errors++; });
  ws.on('close', () => {
    closed++;
    if (!stopping) errors++;
  });
  void i;
}

let tMeasure = 0;
let cpu0 = null;
function allOpen() {
  setTimeout(() => {
    measuring = true;
    tMeasure = now();
    cpu0 = process.cpuUsage();
    setTimeout(finish, opt.t * 1000);
  }, opt.w * 1000);
}

function finish() {
  const secs = (now() - tMeasure) / 1e9;
  measuring = false;
  stopping = true;
  const cpu = process.cpuUsage(cpu0);
  const res = {
    tool: 'node ws client', ws: require('ws/package.json').version, node: process.version,
    conns: opt.c, open, depth: opt.d, size: opt.s, seconds: Number(secs.toFixed(3)), msgs,
    msgs_per_s: Math.round(msgs / secs), mb_per_s: Number((msgs * opt.s / secs / 1e6).toFixed(3)),
    lat_p50_us: Number((quantile(0.5) / 1e3).toFixed(1)), lat_p99_us: Number((quantile(0.99) / 1e3).toFixed(1)),
    lat_max_us: Number((histMax / 1e3).toFixed(1)), total_msgs: total,
    cpu_pct: Number((100 * (cpu.user + cpu.system) / 1e6 / secs).toFixed(1)), errors,
  };
  console.log(JSON.stringify(res));
  for (const k of conns) k.ws.terminate();
  setTimeout(() => process.exit(errors ? 1 : 0), 50);
}

for (let i = 0; i < opt.c; i++) start(i);
setTimeout(() => {
  if (!measuring && !stopping) {
    console.error(`ws_client: only ${open} of ${opt.c} connections opened in 30 s`);
    errors += opt.c - open;
    finish();
  }
}, 30000 + opt.w * 1000);
