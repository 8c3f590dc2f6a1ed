// Headless Chromium with permessage-deflate against duplex serve (run by
// deflate_peers.py, mode browser, which starts `duplex serve --deflate=`
// and passes DX_WS_URL, DX_HTTP_URL, DX_TMP, DX_CHROMIUM, DX_EXPECT).
//
// Chromium offers "permessage-deflate; client_max_window_bits" on every
// WebSocket. The page is the server's own /healthz (same origin); the script
// checks in it that the connection's `extensions` is the answer DX_EXPECT
// (the harness's model of docs/deflate.md), then echoes compressible text
// (JSON-like, multi-byte) and ArrayBuffers of 0, 1, 125, 126, 65536 bytes,
// 1 MiB - 1 and 2 MiB - 1, and incompressible random ArrayBuffers of 1 MiB,
// compared byte for byte, and closes with 4000. The server's /metrics (read
// by the harness) shows the compressed messages. Prints "plan N", "ok - /
// not ok - " lines; exits 0 only if every case passed.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), 'node_modules') + '/');
const { chromium } = require('playwright-core');

const env = (k) => {
  const v = process.env[k];
  if (v === undefined) { console.log(`missing environment variable ${k} (run through deflate_peers.py)`); process.exit(2); }
  return v;
};
const SIZES = [0, 1, 125, 126, 65536, 1048575, 2097151];
const PLAN = 1 + 2 * SIZES.length + 1 + 1;
console.log(`plan ${PLAN}`);
let failed = 0;
let reported = 0;
const ok = (name) => { reported++; console.log(`ok - chromium: ${name}`); };
const notOk = (name, why) => { reported++; failed++; console.log(`not ok - chromium: ${name}: ${String(why).split('\n')[0]}`); };

const expect = JSON.parse(env('DX_EXPECT'));
const expectHeader = ['permessage-deflate', ...Object.entries(expect).map(([k, v]) => (v === true ? k : `${k}=${v}`))];

const profile = fs.mkdtempSync(path.join(env('DX_TMP'), 'chromium-profile-'));
let context = null;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: env('DX_CHROMIUM'),
    headless: true,
    timeout: 60000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.log(`# page error: ${e.message}`));
  const resp = await page.goto(`${env('DX_HTTP_URL')}/healthz`, { timeout: 30000 });
  if (!resp || resp.status() !== 200) throw new Error(`/healthz status ${resp ? resp.status() : 'none'}`);
  page.setDefaultTimeout(120000);
  const result = await page.evaluate(async ({ url, sizes }) => {
    const cases = [];
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    const inbox = [];
    let wake = null;
    let closed = null;
    ws.onmessage = (e) => { inbox.push(e.data); if (wake) { const w = wake; wake = null; w(); } };
    ws.onclose = (e) => { closed = { code: e.code, reason: e.reason }; if (wake) { const w = wake; wake = null; w(); } };
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error('connection failed')); });
    const extensions = ws.extensions;
    const next = () => new Promise((resolve, reject) => {
      const take = () => {
        if (inbox.length) return resolve(inbox.shift());
        if (closed) return reject(new Error(`closed ${closed.code}`));
        const t = setTimeout(() => { wake = null; reject(new Error('no echo in 30 s')); }, 30000);
        wake = () => { clearTimeout(t); take(); };
      };
      take();
    });
    const json = (n) => {
      let s = '';
      for (let i = 0; s.length < n; i++) s += `{"id":${i},"user":"u${i % 89}","text":"héllo €${i % 7}"},`;
      // exactly n UTF-8 bytes: cut on bytes, drop a cut character, pad with ASCII
      let b = new TextEncoder().encode(s).slice(0, n);
      let t = new TextDecoder('utf-8', { fatal: false }).decode(b).replace(/\uFFFD+$/, '');
      const have = new TextEncoder().encode(t).length;
      return t + 'a'.repeat(n - have);
    };
    let x = 0x12345678;
    const random = (n) => {
      const a = new Uint8Array(n);
      for (let i = 0; i < n; i++) { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; a[i] = x & 0xff; }
      return a;
    };
    const same = (a, b) => {
      if (a.length !== b.length) return `got ${a.length}, sent ${b.length}`;
      for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return `first difference at ${i}`;
      return null;
    };
    for (const n of sizes) {
      let name = `echo compressible text of ${n} bytes`;
      try {
        const t = json(n);
        ws.send(t);
        const got = await next();
        cases.push({ name, ok: got === t, detail: typeof got === 'string' ? `got ${got.length} chars, sent ${t.length}` : 'got binary' });
      } catch (e) { cases.push({ name, ok: false, detail: e.message }); }
      name = `echo compressible ArrayBuffer of ${n} bytes`;
      try {
        const b = new TextEncoder().encode(json(n));
        ws.send(b.buffer);
        const got = await next();
        const d = got instanceof ArrayBuffer ? same(new Uint8Array(got), b) : 'got text';
        cases.push({ name, ok: !d, detail: d });
      } catch (e) { cases.push({ name, ok: false, detail: e.message }); }
    }
    {
      const name = 'echo random ArrayBuffer of 1 MiB';
      try {
        const b = random(1048576);
        ws.send(b.buffer);
        const got = await next();
        const d = got instanceof ArrayBuffer ? same(new Uint8Array(got), b) : 'got text';
        cases.push({ name, ok: !d, detail: d });
      } catch (e) { cases.push({ name, ok: false, detail: e.message }); }
    }
    ws.close(4000, 'bye');
    const t0 = Date.now();
    while (!closed && Date.now() - t0 < 10000) await new Promise((r) => setTimeout(r, 20));
    cases.push({ name: 'close 4000 echoed', ok: !!closed && closed.code === 4000, detail: JSON.stringify(closed) });
    return { extensions, cases };
  }, { url: env('DX_WS_URL'), sizes: SIZES });
  console.log(`# chromium: Sec-WebSocket-Extensions answered: ${result.extensions}`);
  const got = result.extensions.split(';').map((s) => s.trim()).filter(Boolean);
  const name = `negotiated "${expectHeader.join('; ')}"`;
  if (JSON.stringify([...got].sort()) === JSON.stringify([...expectHeader].sort())) ok(name);
  else notOk(name, `answered "${result.extensions}"`);
  for (const c of result.cases) { if (c.ok) ok(c.name); else notOk(c.name, c.detail); }
} catch (e) {
  notOk('chromium', e.message);
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
}
while (reported < PLAN) notOk('planned case', 'not reached');
process.exit(failed ? 1 : 0);
