// web/duplex.js with JWT authentication in headless Chromium against
// `duplex serve --static web --jwt-secret S --anonymous off`: the token goes
// through the subprotocol slot (`token.<jwt>`), the selected subprotocol is
// duplex.v1 (never the token), the page receives what a backend publishes on
// its user:<sub> topic, refresh() is acknowledged (and refused with 4401 for
// another user), a token left to expire ends the client (close 4001, state
// "closed"), a socket without a token is refused, over SSE the token
// travels in ?token=, and the demo page (web/index.html?token=) connects and
// publishes with one and never opens without.
//
//   node tests/interop/gateway_auth.mjs --duplex build/duplex [--web DIR] [--timeout S]
//
// Tokens are HS256, minted here with node:crypto. Starts its own server on a
// free loopback port (setpriv --pdeathsig), stops it by PID. Prints
// "ok - / not ok - " lines and "gateway-auth: N passed, M failed".

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, def) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : def; };
const DUPLEX = path.resolve(opt('--duplex', process.env.DUPLEX || path.join(here, '../../build/duplex')));
const WEB = path.resolve(opt('--web', path.join(here, '../../web')));
const TIMEOUT = Number(opt('--timeout', '180')) * 1000;
const CHROMIUM = '/usr/bin/chromium';
const SECRET = crypto.randomBytes(32).toString('hex');
const API_KEY = `k-${crypto.randomBytes(8).toString('hex')}`;

const PLAN = 9;
let passed = 0;
let failed = 0;
let ran = 0;
const ok = (name) => { ran++; passed++; console.log(`ok - ${name}`); };
const notOk = (name, why) => { ran++; failed++; console.log(`not ok - ${name}: ${String(why).split('\n')[0]}`); };
function finish() {
  for (; ran < PLAN;) notOk(`case ${ran + 1}`, 'did not run');
  console.log(`gateway-auth: ${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}
async function check(name, fn) {
  try { await fn(); ok(name); } catch (e) { notOk(name, e && e.message ? e.message : e); }
}

console.log(`plan ${PLAN}`);
const missing = [];
if (!fs.existsSync(DUPLEX)) missing.push(`duplex binary ${DUPLEX}`);
if (!fs.existsSync(CHROMIUM)) missing.push(`${CHROMIUM} (apt-get install chromium)`);
if (!fs.existsSync('/usr/bin/setpriv')) missing.push('/usr/bin/setpriv (apt-get install util-linux)');
let chromium = null;
try {
  ({ chromium } = createRequire(path.join(here, 'node_modules') + '/')('playwright-core'));
} catch (e) {
  missing.push('playwright-core (cd tests/interop && npm ci)');
}
if (missing.length) {
  for (const m of missing) notOk('peer missing', m);
  process.exit(finish());
}

const b64u = (b) => Buffer.from(b).toString('base64url');
function mint(sub, expIn = 600) {
  const now = Math.floor(Date.now() / 1000);
  const h = b64u(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const p = b64u(JSON.stringify({ sub, iat: now, exp: now + expIn }));
  const s = crypto.createHmac('sha256', SECRET).update(`${h}.${p}`).digest('base64url');
  return `${h}.${p}.${s}`;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dx-gateway-auth-'));
const logPath = path.join(tmp, 'server.log');
let server = null;
let context = null;
let base = '';
const hardStop = setTimeout(() => { notOk('timeout', `not done within ${TIMEOUT / 1000} s`); cleanup().then(() => process.exit(finish())); }, TIMEOUT);

async function cleanup() {
  if (context) { try { await context.close(); } catch (e) { /* already gone */ } context = null; }
  if (server) {
    const s = server;
    server = null;
    s.p.kill('SIGTERM');
    await Promise.race([s.exited, new Promise((r) => setTimeout(r, 10000))]);
  }
}

async function publish(topic, body) {
  const r = await fetch(`${base}/api/publish?topic=${encodeURIComponent(topic)}`, {
    method: 'POST', headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'text/plain' }, body,
  });
  if (r.status !== 200) throw new Error(`publish ${topic}: ${r.status} ${await r.text()}`);
}

try {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  await check('duplex serve with --jwt-secret and --anonymous off starts', async () => {
    const log = fs.openSync(logPath, 'w');
    const p = spawn('/usr/bin/setpriv', ['--pdeathsig', 'KILL', '--', DUPLEX, 'serve', '--host', '127.0.0.1',
      '--port', String(port), '--static', WEB, '--workers', '1', '--jwt-secret', SECRET, '--jwt-leeway', '0',
      '--anonymous', 'off', '--api-key', API_KEY], { stdio: ['ignore', 'pipe', log] });
    const exited = new Promise((resolve) => p.once('exit', (code, sig) => resolve({ code, sig })));
    server = { p, exited };
    const serving = await new Promise((resolve) => {
      let buf = '';
      const t = setTimeout(() => resolve(false), 15000);
      p.stdout.on('data', (d) => { buf += d; if (/duplex: serving http:\/\//.test(buf)) { clearTimeout(t); resolve(true); } });
      exited.then(() => { clearTimeout(t); resolve(false); });
    });
    if (!serving) throw new Error(`did not print "duplex: serving" (log ${logPath})`);
  });

  const profile = fs.mkdtempSync(path.join(tmp, 'chromium-profile-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, timeout: 60000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // any same-origin document will do: duplex.js is imported into it
  const resp = await page.goto(`${base}/duplex.js`, { timeout: 30000 });
  if (!resp || resp.status() !== 200) throw new Error(`GET /duplex.js: ${resp ? resp.status() : 'no answer'}`);
  await page.evaluate(async () => {
    const m = await import('/duplex.js');
    window.Duplex = m.Duplex;
    window.got = [];
  });

  await check('the token goes through the subprotocol slot; duplex.v1 is selected, never token.*', async () => {
    const r = await page.evaluate(async (token) => {
      const c = new window.Duplex('/ws', { token, transport: 'ws' });
      window.c = c;
      await new Promise((resolve, reject) => {
        const off = c.on('state', (s) => { if (s === 'open') { off(); resolve(); } });
        setTimeout(() => reject(new Error('not open within 15 s')), 15000);
      });
      return c._ws.protocol;
    }, mint('alice'));
    if (r !== 'duplex.v1') throw new Error(`selected subprotocol ${JSON.stringify(r)}`);
  });

  await check('the page receives what a backend publishes on user:alice', async () => {
    await page.evaluate(() => window.c.subscribe('user:alice', (m) => window.got.push(m.data)));
    await publish('user:alice', 'for alice');
    await page.waitForFunction(() => window.got.includes('for alice'), null, { timeout: 15000 });
  });

  await check('refresh(token) is acknowledged; another user\'s token is refused with 4401', async () => {
    const r = await page.evaluate(async ([good, other]) => {
      await window.c.refresh(good);
      try { await window.c.refresh(other); return 'resolved'; } catch (e) { return e.code; }
    }, [mint('alice', 900), mint('mallory', 900)]);
    if (r !== 4401) throw new Error(`refresh with another user's token: ${r}`);
  });

  await check('a token left to expire ends the client: close 4001, state "closed"', async () => {
    const r = await page.evaluate(async (token) => {
      const c = new window.Duplex('/ws', { token, transport: 'ws' });
      return await new Promise((resolve) => {
        c.on('state', (s, info) => { if (s === 'closed') resolve(info && info.code); });
        setTimeout(() => resolve('still open after 20 s'), 20000);
      });
    }, mint('bob', 2));
    if (r !== 4001) throw new Error(`closed with ${JSON.stringify(r)}`);
  });

  await check('a WebSocket without a token is refused (anonymous off)', async () => {
    const r = await page.evaluate(() => new Promise((resolve) => {
      const ws = new WebSocket(`ws://${location.host}/ws`, ['duplex.v1']);
      ws.onopen = () => resolve('opened');
      ws.onclose = (e) => resolve(e.code);
      setTimeout(() => resolve('no answer'), 15000);
    }));
    if (r !== 1006) throw new Error(`expected a failed handshake (1006), got ${r}`);
  });

  await check('over SSE the token travels in ?token= and user:carol is delivered', async () => {
    await page.evaluate(async (token) => {
      window.gotSse = [];
      const c = new window.Duplex('/ws', { token, transport: 'sse' });
      window.s = c;
      await c.subscribe('user:carol', (m) => window.gotSse.push(m.data));
    }, mint('carol'));
    await publish('user:carol', 'for carol');
    await page.waitForFunction(() => window.gotSse.includes('for carol'), null, { timeout: 15000 });
    await page.evaluate(() => { window.s.close(); window.c.close(); });
  });

  await check('the demo page with ?token= connects and publishes; without a token it never opens', async () => {
    const demo = await context.newPage();
    demo.on('pageerror', (e) => pageErrors.push(`demo: ${e.message}`));
    const r = await demo.goto(`${base}/?room=authroom&nick=dora&token=${mint('dora')}`, { timeout: 30000 });
    if (!r || r.status() !== 200) throw new Error(`demo page: ${r ? r.status() : 'no answer'}`);
    await demo.waitForFunction(() => document.getElementById('state').dataset.state === 'open', null, { timeout: 20000 });
    const pub = await demo.evaluate(() => window.duplex.publish('chat.authroom', 'hi').then((a) => typeof a.offset, (e) => e.message));
    if (pub !== 'number') throw new Error(`publish from the demo with a token: ${pub}`);
    await demo.evaluate(() => window.duplex.close());
    const anon = await context.newPage();
    await anon.goto(`${base}/?room=authroom&nick=eve&transport=ws`, { timeout: 30000 });
    await anon.waitForFunction(() => document.getElementById('state').dataset.state === 'reconnecting', null, { timeout: 20000 });
    const st = await anon.evaluate(() => document.getElementById('state').dataset.state);
    if (st === 'open') throw new Error('a page without a token opened');
    await anon.evaluate(() => window.duplex.close());
    await demo.close();
    await anon.close();
  });

  await check('no page error, and no token in the server log', async () => {
    if (pageErrors.length) throw new Error(pageErrors.join('; '));
    const log = fs.readFileSync(logPath, 'utf8');
    if (log.includes(SECRET)) throw new Error('the secret is in the log');
    if (/eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}/.test(log)) throw new Error('a JWT is in the log');
  });
} catch (e) {
  notOk('unexpected error', e && e.stack ? e.stack : e);
}
clearTimeout(hardStop);
await cleanup();
process.exit(finish());
