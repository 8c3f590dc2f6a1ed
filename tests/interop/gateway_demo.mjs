// The chat demo (web/index.html + web/duplex.js) in headless Chromium against
// `duplex serve --static web --demo`: two pages chat, presence, the ticker,
// history on join, resume after a dropped socket (exactly once, in order),
// the SSE fallback and a plain EventSource page, and a server restart (both
// pages reconnect, say they missed messages, and chat again; a page that was
// away while the new epoch got messages catches up on them).
//
//   node tests/interop/gateway_demo.mjs --duplex build/duplex [--web DIR] [--timeout S] [--keep]
//
// Starts its own server on a free loopback port (through setpriv --pdeathsig,
// so it dies with this script), stops it by PID. Drives Debian's
// /usr/bin/chromium with npm playwright-core from tests/interop/node_modules.
// Prints "plan N", "ok - / not ok - " lines and "gateway-demo: N passed, M failed".

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';

const here = path.dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const opt = (name, def) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : def; };
const DUPLEX = path.resolve(opt('--duplex', process.env.DUPLEX || path.join(here, '../../build/duplex')));
const WEB = path.resolve(opt('--web', path.join(here, '../../web')));
const TIMEOUT = Number(opt('--timeout', '240')) * 1000;
const KEEP = args.includes('--keep');
const CHROMIUM = '/usr/bin/chromium';

const PLAN = 38;
let passed = 0;
let failed = 0;
let ran = 0;
const ok = (name) => { ran++; passed++; console.log(`ok - ${name}`); };
const notOk = (name, why) => { ran++; failed++; console.log(`not ok - ${name}: ${String(why).split('\n')[0]}`); };
function finish() {
  for (; ran < PLAN; ) notOk(`case ${ran + 1}`, 'did not run');
  console.log(`gateway-demo: ${passed} passed, ${failed} failed`);
  return failed ? 1 : 0;
}

console.log(`plan ${PLAN}`);
const missing = [];
if (!fs.existsSync(DUPLEX)) missing.push(`duplex binary ${DUPLEX} (build the duplex target, or pass --duplex)`);
if (!fs.existsSync(CHROMIUM)) missing.push(`${CHROMIUM} (apt-get install chromium)`);
if (!fs.existsSync('/usr/bin/setpriv')) missing.push('/usr/bin/setpriv (apt-get install util-linux)');
if (!fs.existsSync(path.join(WEB, 'index.html')) || !fs.existsSync(path.join(WEB, 'duplex.js'))) missing.push(`the demo in ${WEB}`);
let chromium = null;
let WebSocketNode = null;
try {
  const require = createRequire(path.join(here, 'node_modules') + '/');
  ({ chromium } = require('playwright-core'));
  WebSocketNode = require('ws');
} catch (e) {
  missing.push('playwright-core and ws (cd tests/interop && npm ci)');
}
if (missing.length) {
  for (const m of missing) notOk('peer missing', m);
  process.exit(finish());
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'dx-gateway-demo-'));
const deadline = Date.now() + TIMEOUT;
const left = () => Math.max(1000, deadline - Date.now());
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

// ---------------------------------------------------------------- the server

let server = null;
let serverRuns = 0;
async function startServer(port, extra = []) {
  serverRuns++;
  const log = fs.openSync(path.join(tmp, `server-${serverRuns}.log`), 'w');
  const argv = ['--pdeathsig', 'KILL', '--', DUPLEX, 'serve', '--host', '127.0.0.1', '--port', String(port),
                '--static', WEB, '--demo', '--demo-interval', '200ms', '--workers', '2', ...extra];
  const p = spawn('/usr/bin/setpriv', argv, { stdio: ['ignore', 'pipe', log] });
  const exited = new Promise((resolve) => p.once('exit', (code, sig) => resolve({ code, sig })));
  const serving = await new Promise((resolve) => {
    let buf = '';
    const t = setTimeout(() => resolve(false), 15000);
    p.stdout.on('data', (d) => {
      buf += d;
      fs.appendFileSync(path.join(tmp, `server-${serverRuns}.log`), d);
      if (/duplex: serving http:\/\//.test(buf)) { clearTimeout(t); resolve(true); }
    });
    exited.then(() => { clearTimeout(t); resolve(false); });
  });
  server = { p, exited, port };
  if (!serving) throw new Error(`did not print "duplex: serving" (log: ${tmp}/server-${serverRuns}.log)`);
  return server;
}

async function stopServer() {
  if (!server) return null;
  const s = server;
  server = null;
  s.p.kill('SIGTERM'); // by PID: setpriv exec'd duplex, so the child is the server
  const r = await Promise.race([s.exited, sleep(10000).then(() => null)]);
  if (!r) { s.p.kill('SIGKILL'); await s.exited; throw new Error('still running 10 s after SIGTERM (killed)'); }
  return r;
}

// ---------------------------------------------------------------- the pages

const pageErrors = [];
async function openPage(context, label, query, init) {
  const page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(`${label}: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !/WebSocket|ERR_CONNECTION_REFUSED|EventSource|404/.test(m.text())) pageErrors.push(`${label}: console: ${m.text()}`); });
  if (init) await page.addInitScript(init);
  const resp = await page.goto(`${base}/${query}`, { timeout: 30000 });
  if (!resp || resp.status() !== 200) throw new Error(`${label}: status ${resp ? resp.status() : 'none'}`);
  page.label = label;
  return page;
}

const stateOf = (page) => page.$eval('#state', (e) => e.dataset.state);
const waitState = (page, states, timeout = 20000) =>
  page.waitForFunction((s) => s.includes(document.getElementById('state').dataset.state), states, { timeout });
const texts = (page, room) => page.$$eval(`ol.log[data-room="${room}"] li.msg .text`, (els) => els.map((e) => e.textContent));
const offsets = (page, room) => page.$$eval(`ol.log[data-room="${room}"] li.msg`, (els) => els.map((e) => Number(e.dataset.offset)));
const missedCount = (page, room) => page.$$eval(`ol.log[data-room="${room}"] li.notice.missed`, (els) => els.length);
async function waitTexts(page, room, want, timeout = 15000) {
  try {
    await page.waitForFunction(([r, w]) => {
      const have = [...document.querySelectorAll(`ol.log[data-room="${r}"] li.msg .text`)].map((e) => e.textContent);
      return w.every((x) => have.includes(x));
    }, [room, want], { timeout });
  } catch (e) {
    throw new Error(`${page.label} has ${JSON.stringify(await texts(page, room))}, wants ${JSON.stringify(want)}`);
  }
}
async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}
// Exactly once and in order: each wanted text once, in the given order, offsets strictly increasing.
async function checkOnceInOrder(page, room, want) {
  const have = await texts(page, room);
  for (const w of want) {
    const n = have.filter((x) => x === w).length;
    if (n !== 1) throw new Error(`${page.label}: "${w}" shown ${n} times`);
  }
  const idx = want.map((w) => have.indexOf(w));
  if (idx.some((v, i) => i && v < idx[i - 1])) throw new Error(`${page.label}: out of order: ${JSON.stringify(have)}`);
  const offs = await offsets(page, room);
  const epochs = await page.$$eval(`ol.log[data-room="${room}"] li.msg .off`, (els) => els.map((e) => e.title.split('epoch ')[1]));
  for (let i = 1; i < offs.length; i++) {
    if (epochs[i] === epochs[i - 1] && offs[i] <= offs[i - 1]) throw new Error(`${page.label}: offsets ${JSON.stringify(offs)}`);
  }
}
async function tickerN(page) { return Number(await page.$eval('#ticker', (e) => e.dataset.n || -1)); }
async function tickerMoves(page) {
  const n0 = await tickerN(page);
  await page.waitForFunction((n) => Number(document.getElementById('ticker').dataset.n || -1) > n, n0, { timeout: 10000 });
}

async function check(name, fn) {
  try {
    await Promise.race([fn(), sleep(Math.min(60000, left())).then(() => { throw new Error('timed out'); })]);
    ok(name);
    return true;
  } catch (e) {
    notOk(name, e.message);
    return false;
  }
}

// ---------------------------------------------------------------- the run

let base = '';
let context = null;
let status = 1;
const globalTimer = setTimeout(() => { notOk('gateway-demo', `timed out after ${TIMEOUT / 1000} s`); cleanup().then(() => process.exit(finish())); }, TIMEOUT);

async function cleanup() {
  if (context) await context.close().catch(() => {});
  context = null;
  if (server) { try { await stopServer(); } catch (_) { /* killed */ } }
}

try {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  console.log(`# duplex=${DUPLEX} web=${WEB} tmp=${tmp} ${base}`);
  await check('duplex serve --static web --demo starts', () => startServer(port));

  const profile = fs.mkdtempSync(path.join(tmp, 'chromium-profile-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, timeout: 60000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const room = `t${Date.now() % 100000}`;
  let A, B;
  await check('two pages load the demo and connect (state "open")', async () => {
    A = await openPage(context, 'alice', `?room=${room}&nick=alice`);
    B = await openPage(context, 'bob', `?room=${room}&nick=bob`);
    await waitState(A, ['open']);
    await waitState(B, ['open']);
  });
  await check('alice types a message: both pages show it', async () => {
    await say(A, 'hello from alice');
    await waitTexts(A, room, ['hello from alice']);
    await waitTexts(B, room, ['hello from alice']);
  });
  await check('bob answers: alice sees it', async () => {
    await say(B, 'hi alice');
    await waitTexts(A, room, ['hi alice']);
  });
  await check('presence shows 2 on both pages, with both nicknames', async () => {
    for (const p of [A, B]) {
      await p.waitForFunction(() => document.getElementById('presence-count').textContent === '2' &&
        /alice/.test(document.getElementById('presence-names').textContent) &&
        /bob/.test(document.getElementById('presence-names').textContent), null, { timeout: 15000 });
    }
  });
  await check('the ticker (demo.ticker, published by the server) updates', async () => {
    await tickerMoves(A);
    await tickerMoves(B);
    const price = await A.$eval('#ticker-price', (e) => e.textContent);
    if (!/^\d+\.\d\d$/.test(price)) throw new Error(`price shown: ${price}`);
  });
  let C;
  await check('a third page joining the room shows the history (since offset 0)', async () => {
    C = await openPage(context, 'carol', `?room=${room}&nick=carol`);
    await waitState(C, ['open']);
    await waitTexts(C, room, ['hello from alice', 'hi alice']);
    await checkOnceInOrder(C, room, ['hello from alice', 'hi alice']);
    await C.waitForFunction(() => document.getElementById('presence-count').textContent === '3', null, { timeout: 15000 });
  });
  await check('when the third page leaves, presence goes back to 2', async () => {
    await C.close();
    await A.waitForFunction(() => document.getElementById('presence-count').textContent === '2', null, { timeout: 15000 });
  });
  await check('switching rooms: a message in another room counts as unread', async () => {
    await B.click('#rooms li[data-room="random"] button');
    await A.click('#rooms li[data-room="random"] button');
    await say(A, 'in random');
    await waitTexts(B, 'random', ['in random']);
    await B.click(`#rooms li[data-room="${room}"] button`);
    await say(A, 'unread for bob');
    await B.waitForFunction(() => document.querySelector('#rooms li[data-room="random"] .unread').textContent === '1', null, { timeout: 10000 });
    await A.click(`#rooms li[data-room="${room}"] button`);
  });

  // Resume: bob goes offline (disconnect(): the socket closes and stays closed), alice publishes, bob comes back.
  const away = ['while away 1', 'while away 2', 'while away 3'];
  await check('bob disconnects: state "offline", alice publishes 3 messages', async () => {
    await B.evaluate(() => window.duplex.disconnect());
    await waitState(B, ['offline']);
    for (const t of away) await say(A, t);
    await waitTexts(A, room, away);
    await sleep(300);
    const have = await texts(B, room);
    if (away.some((t) => have.includes(t))) throw new Error('bob received while offline');
  });
  await check('bob reconnects: he shows the 3 messages exactly once, in order, and no "missed" notice', async () => {
    await B.evaluate(() => window.duplex.connect());
    await waitState(B, ['open']);
    await waitTexts(B, room, away);
    await sleep(500);
    await checkOnceInOrder(B, room, ['hello from alice', 'hi alice', ...away]);
    if (await missedCount(B, room)) throw new Error('a "missed" notice after a resumable reconnect');
  });
  const dropped = ['after drop 1', 'after drop 2', 'after drop 3', 'after drop 4'];
  await check('bob\'s WebSocket is closed under the client: it shows "reconnecting", then "open"', async () => {
    await B.evaluate(() => { window.duplex._ws.close(); });
    await waitState(B, ['reconnecting', 'connecting']);
    for (const t of dropped) await say(A, t); // published while bob is away (or coming back)
    await waitState(B, ['open']);
  });
  await check('messages published meanwhile arrive exactly once, in order (resume)', async () => {
    await waitTexts(B, room, dropped);
    await say(A, 'after drop live');
    await waitTexts(B, room, ['after drop live']);
    await checkOnceInOrder(B, room, ['hello from alice', 'hi alice', ...away, ...dropped, 'after drop live']);
    if (await missedCount(B, room)) throw new Error('a "missed" notice after a resumable reconnect');
  });

  await check('randomized: 2000+ messages while a subscriber\'s socket is closed at random (15+ times): each once, in order', async () => {
    const r = await A.evaluate(async (topic) => {
      const { Duplex } = await import('./duplex.js');
      const sub = new Duplex('/ws', { backoff: { base: 20, cap: 200 } });
      const pub = new Duplex('/ws');
      const got = [];
      let missed = 0;
      let drops = 0;
      sub.on('missed', () => { missed++; });
      await sub.subscribe(topic, (m) => got.push([m.offset, m.data]));
      const dropper = setInterval(() => {
        if (sub._ws && sub._ws.readyState === 1 && Math.random() < 0.5) { sub._ws.close(); drops++; }
      }, 25);
      // At least 2000 messages and 15 dropped sockets (at most 20000 messages).
      let N = 0;
      while ((N < 2000 || drops < 15) && N < 20000) {
        await Promise.all(Array.from({ length: 20 }, (_, k) => pub.publish(topic, N + k + 1)));
        N += 20;
        await new Promise((res) => setTimeout(res, 10));
      }
      clearInterval(dropper);
      const t0 = Date.now();
      while (got.length < N && Date.now() - t0 < 20000) await new Promise((res) => setTimeout(res, 50));
      sub.close();
      pub.close();
      const offsOk = got.every(([o], i) => o === i + 1);
      const seen = new Set(got.map(([, d]) => d));
      return { N, n: got.length, offsOk, distinct: seen.size, drops, missed };
    }, `stress.${room}`);
    if (r.n !== r.N || !r.offsOk || r.distinct !== r.N) throw new Error(JSON.stringify(r));
    if (r.missed) throw new Error(`"missed" reported: ${JSON.stringify(r)}`);
    if (r.drops < 15) throw new Error(`only ${r.drops} drops: the run did not test resuming`);
    console.log(`# randomized resume: ${r.n} messages, ${r.drops} dropped sockets`);
  });

  // SSE: the client forced into SSE mode, a page without WebSocket, WebSocket that never connects, plain EventSource.
  let D;
  await check('a page in SSE mode (transport=sse): state "sse", history, sending disabled', async () => {
    D = await openPage(context, 'dave-sse', `?room=${room}&nick=dave&transport=sse`);
    await D.waitForFunction(() => document.getElementById('state').dataset.state === 'sse' &&
      /receive-only/.test(document.getElementById('state').textContent), null, { timeout: 15000 });
    await waitTexts(D, room, ['hello from alice', ...away]);
    await checkOnceInOrder(D, room, ['hello from alice', 'hi alice', ...away, ...dropped]);
    if (!await D.$eval('#text', (e) => e.disabled)) throw new Error('the message input is enabled over SSE');
  });
  await check('the SSE page receives what alice publishes, and the ticker', async () => {
    await say(A, 'to everyone');
    await waitTexts(D, room, ['to everyone']);
    await tickerMoves(D);
  });
  await check('publish over SSE rejects (receive-only)', async () => {
    const r = await D.evaluate(() => window.duplex.publish('chat.x', 'no').then(() => 'resolved', (e) => e.message));
    if (!/receive-only/.test(r)) throw new Error(`publish: ${r}`);
  });
  let E;
  await check('a page where WebSocket does not exist falls back to SSE and receives', async () => {
    E = await openPage(context, 'erin-nows', `?room=${room}&nick=erin`, () => { delete window.WebSocket; });
    await waitState(E, ['sse']);
    await E.waitForFunction(() => /receive-only/.test(document.getElementById('state').textContent), null, { timeout: 15000 });
    await say(A, 'to erin');
    await waitTexts(E, room, ['to erin']);
    await E.close();
  });
  await check('WebSocket that never connects (404 URL): after 3 failures the client uses SSE', async () => {
    const r = await A.evaluate(async (topic) => {
      const { Duplex } = await import('./duplex.js');
      const states = [];
      const c = new Duplex('/nope', { sseUrl: '/sse', backoff: { base: 50 }, onState: (s, i) => states.push(s + (i.connected ? '+' : '')) });
      window.fallback = { states, got: [] };
      await c.subscribe(topic, (m) => window.fallback.got.push(m.data.text), { since: { offset: 0 } });
      window.fallbackClient = c;
      return states;
    }, `chat.${room}`);
    if (r.filter((s) => s === 'connecting').length < 3 || !r.includes('sse')) throw new Error(`states ${JSON.stringify(r)}`);
    await A.waitForFunction(() => window.fallback.got.includes('to erin'), null, { timeout: 10000 });
    await A.evaluate(() => window.fallbackClient.close());
  });
  await check('a WebSocket handshake that hangs (a silent TCP listener) times out; after 3 the client uses SSE', async () => {
    const held = [];
    const silent = net.createServer((sock) => { held.push(sock); sock.on('error', () => {}); });
    await new Promise((res) => silent.listen(0, '127.0.0.1', res));
    try {
      const r = await A.evaluate(async ([wsUrl, topic]) => {
        const { Duplex } = await import('./duplex.js');
        const states = [];
        const c = new Duplex(wsUrl, { sseUrl: '/sse', connectTimeout: 300, backoff: { base: 50 }, onState: (s, i) => states.push(s + (i.reason ? `(${i.reason})` : '')) });
        const got = [];
        await c.subscribe(topic, (m) => got.push(m.data.text), { since: { offset: 0 } });
        const t0 = Date.now();
        while (!got.includes('to erin') && Date.now() - t0 < 10000) await new Promise((res) => setTimeout(res, 50));
        c.close();
        return { states, got: got.includes('to erin') };
      }, [`ws://127.0.0.1:${silent.address().port}/ws`, `chat.${room}`]);
      if (!r.got || !r.states.includes('sse') || r.states.filter((s) => s === 'connecting').length !== 3 || r.states.filter((s) => /no answer within 300 ms/.test(s)).length !== 2) throw new Error(JSON.stringify(r));
    } finally {
      for (const sock of held) sock.destroy();
      silent.close();
    }
  });
  let F;
  await check('a plain EventSource page (sse.html) receives the same topic', async () => {
    F = await openPage(context, 'eventsource', `sse.html?topic=chat.${room}`);
    await F.waitForFunction(() => document.getElementById('status').dataset.state === 'open', null, { timeout: 15000 });
    await say(A, 'to eventsource');
    await F.waitForFunction(() => [...document.querySelectorAll('#events li.msg')].some((l) => l.textContent.includes('to eventsource')), null, { timeout: 10000 });
    await F.close();
  });

  // Restart: the in-memory store loses everything, so every topic gets a new epoch.
  const before = await texts(B, room);
  await check('SIGTERM the server (by PID): it exits 0, every page shows it is reconnecting', async () => {
    const r = await stopServer();
    if (r.code !== 0) throw new Error(`exit ${JSON.stringify(r)}`);
    await waitState(A, ['reconnecting', 'connecting']);
    await waitState(B, ['reconnecting', 'connecting']);
    await D.waitForFunction(() => /reconnecting/.test(document.getElementById('state').textContent), null, { timeout: 15000 });
  });
  await check('restarted on the same port: both pages reconnect ("open")', async () => {
    await startServer(port);
    await waitState(A, ['open'], 45000);
    await waitState(B, ['open'], 45000);
  });
  await check('both pages say they missed messages (the epoch changed)', async () => {
    for (const p of [A, B]) {
      await p.waitForFunction((r) => document.querySelectorAll(`ol.log[data-room="${r}"] li.notice.missed`).length === 1, room, { timeout: 10000 });
      const t = await p.$eval(`ol.log[data-room="${room}"] li.notice.missed`, (e) => e.textContent);
      if (!/restarted|epoch/.test(t)) throw new Error(`notice: ${t}`);
    }
  });
  await check('the earlier messages stay on the page, nothing was delivered twice', async () => {
    const now = await texts(B, room);
    if (JSON.stringify(now.slice(0, before.length)) !== JSON.stringify(before) || now.length !== before.length) {
      throw new Error(`before ${before.length}, now ${JSON.stringify(now)}`);
    }
  });
  await check('messages sent after the restart arrive on both pages', async () => {
    await say(B, 'after restart from bob');
    await say(A, 'after restart from alice');
    await waitTexts(A, room, ['after restart from bob', 'after restart from alice']);
    await waitTexts(B, room, ['after restart from bob', 'after restart from alice']);
    await checkOnceInOrder(A, room, ['after restart from bob', 'after restart from alice']);
  });
  await check('the SSE page resumes by itself (Last-Event-ID), says it missed messages, receives new ones', async () => {
    await D.waitForFunction(() => /receive-only/.test(document.getElementById('state').textContent), null, { timeout: 20000 });
    await D.waitForFunction((r) => document.querySelectorAll(`ol.log[data-room="${r}"] li.notice.missed`).length >= 1, room, { timeout: 10000 });
    await say(A, 'after restart to sse');
    await waitTexts(D, room, ['after restart to sse']);
    await checkOnceInOrder(D, room, ['after restart to sse']);
  });

  await check('presence shows 3 again (alice, bob and the SSE page) and the ticker runs again', async () => {
    try {
      await A.waitForFunction(() => document.getElementById('presence-count').textContent === '3', null, { timeout: 15000 });
    } catch (e) {
      const shown = await A.$eval('#presence', (el) => el.textContent);
      const asked = await A.evaluate((r) => window.duplex.presence(`chat.${r}`), room);
      throw new Error(`alice shows "${shown}", presence op now: ${JSON.stringify(asked)}`);
    }
    await tickerMoves(A);
  });
  // Catch-up: bob is away across a restart while alice publishes in the new epoch.
  await check('bob goes offline; the server restarts again; alice reconnects and publishes', async () => {
    await B.evaluate(() => window.duplex.disconnect());
    await waitState(B, ['offline']);
    const r = await stopServer();
    if (r.code !== 0) throw new Error(`exit ${JSON.stringify(r)}`);
    await waitState(A, ['reconnecting', 'connecting']);
    await startServer(port);
    await waitState(A, ['open'], 45000);
    await say(A, 'new epoch 1');
    await say(A, 'new epoch 2');
    await waitTexts(A, room, ['new epoch 1', 'new epoch 2']);
  });
  await check('bob comes back: a "missed" notice, then what the new epoch already had, once and in order', async () => {
    const n0 = await missedCount(B, room);
    await B.evaluate(() => window.duplex.connect());
    await waitState(B, ['open']);
    await waitTexts(B, room, ['new epoch 1', 'new epoch 2']);
    await say(A, 'new epoch 3');
    await waitTexts(B, room, ['new epoch 3']);
    await checkOnceInOrder(B, room, ['after restart from alice', 'new epoch 1', 'new epoch 2', 'new epoch 3']);
    if (await missedCount(B, room) !== n0 + 1) throw new Error(`missed notices ${n0} -> ${await missedCount(B, room)}`);
  });
  await check('alice also got one more "missed" notice for the second restart', async () => {
    if (await missedCount(A, room) !== 2) throw new Error(`${await missedCount(A, room)} notices`);
  });
  await check('bob\'s state badge reads "connected"', async () => {
    const t = await B.$eval('#state', (e) => e.textContent);
    if (t !== 'connected') throw new Error(t);
  });
  await check('a screenshot of the demo is taken', async () => {
    await A.screenshot({ path: path.join(tmp, 'demo.png') });
  });
  await check('no page error on any page', async () => {
    if (pageErrors.length) throw new Error(pageErrors.join(' | '));
  });
  await check('close(): state "closed", no reconnect', async () => {
    await A.evaluate(() => window.duplex.close());
    await waitState(A, ['closed']);
    await sleep(700);
    if (await stateOf(A) !== 'closed') throw new Error(await stateOf(A));
  });
  await check('the server exits 0 on SIGTERM', async () => {
    const r = await stopServer();
    if (r.code !== 0) throw new Error(`exit ${JSON.stringify(r)}`);
  });

  // gap: a page that stops reading (its main thread blocked) under --slow-policy drop-oldest.
  let G;
  await check('drop-oldest: a page blocked while 3000 messages flood in gets gap events; received + gaps = 3000, in order', async () => {
    const gport = await freePort();
    await startServer(gport, ['--slow-policy', 'drop-oldest', '--sub-queue', '64KiB']);
    base = `http://127.0.0.1:${gport}`;
    G = await openPage(context, 'gap', 'sse.html?topic=none');
    await G.evaluate(async () => {
      const { Duplex } = await import('./duplex.js');
      const c = new Duplex('/ws');
      window.flood = { n: 0, last: 0, bad: 0, gaps: [], gapCalls: 0, client: c };
      c.on('gap', (g) => window.flood.gaps.push(g));
      await c.subscribe('flood', (m) => {
        const f = window.flood;
        if (m.offset <= f.last) f.bad++;
        f.n++;
        f.last = m.offset;
      }, { onGap: () => { window.flood.gapCalls++; } });
    });
    const p = new WebSocketNode(`ws://127.0.0.1:${gport}/ws`, 'duplex.v1');
    await new Promise((res, rej) => { p.once('open', res); p.once('error', rej); });
    let acks = 0;
    p.on('message', (d) => { if (JSON.parse(d).op === 'ack') acks++; });
    const busy = G.evaluate(() => { const t = Date.now(); while (Date.now() - t < 4000); });
    // random base64: permessage-deflate (on by default in serve) cannot shrink it
    for (let i = 1; i <= 3000; i++) {
      const pad = randomBytes(1500).toString('base64');
      p.send(JSON.stringify({ op: 'pub', id: i, topic: 'flood', data: { i, pad } }));
    }
    await busy;
    await G.waitForFunction(() => window.flood.last === 3000, null, { timeout: 20000 });
    const f = await G.evaluate(() => ({ ...window.flood, client: undefined, state: window.flood.client.state }));
    p.close();
    const dropped = f.gaps.reduce((n, g) => n + g.to - g.from + 1, 0);
    console.log(`# drop-oldest: ${f.n} received, ${f.gaps.length} gaps (${dropped} messages), ${acks} publishes acked`);
    if (!f.gaps.length) throw new Error('no gap: the page was not slow enough to test it');
    if (f.n + dropped !== 3000 || f.bad || f.gapCalls !== f.gaps.length || f.state !== 'open') throw new Error(JSON.stringify({ ...f, gaps: f.gaps.length, dropped }));
  });
  await check('that server exits 0 on SIGTERM too', async () => {
    await context.close();
    context = null;
    const r = await stopServer();
    if (r.code !== 0) throw new Error(`exit ${JSON.stringify(r)}`);
  });
} catch (e) {
  notOk('gateway-demo', e.stack || e.message);
} finally {
  clearTimeout(globalTimer);
  await cleanup();
  status = finish();
  if (status === 0 && !KEEP) fs.rmSync(tmp, { recursive: true, force: true });
  else {
    console.log(`# kept ${tmp}`);
    for (const f of fs.readdirSync(tmp).filter((x) => x.endsWith('.log'))) {
      if (status) console.log(`# ---- ${f}\n${fs.readFileSync(path.join(tmp, f), 'utf8').split('\n').slice(-40).map((l) => '# ' + l).join('\n')}`);
    }
  }
  process.exit(status);
}
