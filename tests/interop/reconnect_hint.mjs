// web/duplex.js and a draining server (docs/gateway.md "Drain"): on SIGTERM
// `duplex serve --reconnect-hint 1500ms` closes the client with 1012
// "retry=1500"; the client waits between 1500 and 3000 ms (the hint plus a
// random jitter up to the hint) before it reconnects, never at once, and
// reconnects to the restarted server. Also retryHint() on odd reasons.
//
//   node tests/interop/reconnect_hint.mjs --duplex build/duplex
//
// duplex.js runs in Node with npm `ws` (tests/interop/node_modules) as its
// WebSocket. The server is started on a free loopback port and stopped by
// PID. Prints "ok - " / "not ok - " lines and "reconnect-hint: N passed, M failed".

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, def) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : def; };
const DUPLEX = path.resolve(opt('--duplex', path.join(here, '../../build/duplex')));
const HINT = 1500;

let passed = 0;
let failed = 0;
const ok = (n) => { passed++; console.log(`ok - ${n}`); };
const notOk = (n, why) => { failed++; console.log(`not ok - ${n}: ${String(why).split('\n')[0]}`); };
async function check(name, fn) {
  try { await fn(); ok(name); } catch (e) { notOk(name, e && e.stack ? e.stack : e); }
}

const require = createRequire(path.join(here, 'node_modules') + '/');
globalThis.WebSocket = require('ws'); // a missing `ws` fails here: no skip
const { Duplex, retryHint } = await import(pathToFileURL(path.join(here, '../../web/duplex.js')).href);

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
    s.on('error', reject);
  });
}

function start(port) {
  const p = spawn(DUPLEX, ['serve', '--host', '127.0.0.1', '--port', String(port), '--workers', '1',
    '--reconnect-hint', `${HINT}ms`, '--drain', '5s'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const ready = new Promise((resolve, reject) => {
    const on = (d) => { out += d; if (out.includes(`serving http://127.0.0.1:${port}/`)) resolve(); };
    p.stdout.on('data', on);
    p.stderr.on('data', on);
    p.on('exit', (c) => reject(new Error(`serve exited ${c}: ${out}`)));
    setTimeout(() => reject(new Error('serve did not start in 20 s')), 20000);
  });
  const exited = new Promise((resolve) => p.on('exit', (c) => resolve(c)));
  return { p, ready, exited };
}

await check('retryHint parses only "retry=MS"', async () => {
  const cases = [['retry=2000', 2000], ['retry=0', 0], ['retry=', null], ['retry=-1', null], ['x retry=5', null],
    ['retry=5 ', null], ['', null], [undefined, null], ['retry=99999999', 600000]];
  for (const [r, want] of cases) {
    const got = retryHint(r);
    if (got !== want) throw new Error(`retryHint(${JSON.stringify(r)}) = ${got}, expected ${want}`);
  }
});

if (!fs.existsSync(DUPLEX)) {
  notOk('duplex binary', `${DUPLEX} missing`);
} else {
  const port = await freePort();
  let srv = start(port);
  await srv.ready;
  const states = [];
  let waiter = null;
  const c = new Duplex(`ws://127.0.0.1:${port}/ws`, {
    sseAfter: 0,
    onState: (s, info) => { states.push({ s, info, t: Date.now() }); if (waiter) waiter(); },
  });
  const waitState = (pred, ms, what) => new Promise((resolve, reject) => {
    const tick = () => { const x = states.find(pred); if (x) { waiter = null; resolve(x); } };
    waiter = tick;
    tick();
    setTimeout(() => reject(new Error(`timed out waiting for ${what}; states: ${JSON.stringify(states.map((x) => x.s))}`)), ms);
  });
  try {
    await check('connects', async () => { await waitState((x) => x.s === 'open', 15000, 'open'); });
    let term = 0;
    await check('SIGTERM: close 1012 "retry=1500", the reconnect delay is in [1500, 3000] ms', async () => {
      term = Date.now();
      srv.p.kill('SIGTERM');
      const r = await waitState((x) => x.s === 'reconnecting', 15000, 'reconnecting');
      if (r.info.code !== 1012) throw new Error(`close code ${r.info.code}`);
      if (r.info.reason !== `retry=${HINT}`) throw new Error(`close reason ${JSON.stringify(r.info.reason)}`);
      if (!(r.info.delay >= HINT && r.info.delay <= 2 * HINT)) throw new Error(`delay ${r.info.delay}`);
      const code = await srv.exited;
      if (code !== 0) throw new Error(`serve exited ${code}`);
    });
    await check('no connection attempt before the hint, then it reconnects to the restarted server', async () => {
      srv = start(port);
      await srv.ready;
      const again = await waitState((x) => x.s === 'open' && x.t > term, 20000, 'open again');
      if (again.t - term < HINT) throw new Error(`reconnected ${again.t - term} ms after the SIGTERM`);
      const early = states.find((x) => x.s === 'connecting' && x.t > term && x.t - term < HINT);
      if (early) throw new Error(`a connection attempt ${early.t - term} ms after the SIGTERM`);
    });
  } finally {
    c.close();
    srv.p.kill('SIGTERM');
    await srv.exited;
  }
}
console.log(`reconnect-hint: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
