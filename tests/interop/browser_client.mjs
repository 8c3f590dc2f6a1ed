// Headless Chromium against duplex serve (run by harness.py, which starts the
// servers and passes their URLs in DX_* environment variables).
//
// Drives Debian's /usr/bin/chromium with npm playwright-core (never a
// downloaded browser) in a fresh profile under DX_TMP. The test page
// (browser/, served by duplex serve --static) echoes text and ArrayBuffer
// messages over ws:// and wss:// and publishes window.dxResult; this script
// asserts it. Chromium trusts the test certificate through
// --ignore-certificate-errors-spki-list with its SPKI hash, no blanket
// "ignore HTTPS errors". Prints "plan N" and "ok - / not ok - " lines; exits 0
// only if everything passed.

import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), 'node_modules') + '/');
const { chromium } = require('playwright-core');

const env = (k) => {
  const v = process.env[k];
  if (!v) { console.log(`missing environment variable ${k} (run through run.sh)`); process.exit(2); }
  return v;
};

const pages = [
  { label: 'page over http', base: env('DX_HTTP_URL'), urls: [env('DX_WS_URL'), env('DX_WSS_URL')],
    sizes: [0, 1, 125, 126, 65535, 65536, 1048576, 16 * 1024 * 1024] },
  // A page over https may only open wss:// (mixed content), and checks static files over TLS.
  { label: 'page over https', base: env('DX_HTTPS_URL'), urls: [env('DX_WSS_URL')],
    sizes: [0, 125, 126, 65535, 65536, 1048576] },
];
// Per page: loads + per URL (connect + text and binary per size + close).
const plan = pages.reduce((n, p) => n + 1 + p.urls.length * (2 + 2 * p.sizes.length), 0);
console.log(`plan ${plan}`);

let failed = 0;
const ok = (name) => console.log(`ok - ${name}`);
const notOk = (name, why) => { failed++; console.log(`not ok - ${name}: ${String(why).split('\n')[0]}`); };

const profile = fs.mkdtempSync(path.join(env('DX_TMP'), 'chromium-profile-'));
let context = null;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: env('DX_CHROMIUM'),
    headless: true,
    timeout: 60000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync',
           `--ignore-certificate-errors-spki-list=${env('DX_SPKI')}`],
  });
  console.log(`# chromium ${context.browser() ? context.browser().version() : '(persistent context)'}`);
  for (const pg of pages) {
    const page = await context.newPage();
    page.on('pageerror', (e) => console.log(`# ${pg.label}: page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') console.log(`# ${pg.label}: console error: ${m.text()}`); });
    const q = new URLSearchParams();
    for (const u of pg.urls) q.append('url', u);
    q.set('sizes', pg.sizes.join(','));
    const href = `${pg.base}/index.html?${q}`;
    const name = `${pg.label} loads from --static (${pg.base})`;
    let loaded = false;
    try {
      const resp = await page.goto(href, { timeout: 30000 });
      if (!resp || resp.status() !== 200) throw new Error(`status ${resp ? resp.status() : 'none'}`);
      loaded = true;
      ok(name);
    } catch (e) {
      notOk(name, e.message);
    }
    const expected = pg.urls.length * (2 + 2 * pg.sizes.length);
    if (!loaded) {
      for (let i = 0; i < expected; i++) notOk(`${pg.label}: case ${i + 1}`, 'page did not load');
      continue;
    }
    let result;
    try {
      await page.waitForFunction(() => window.dxResult && window.dxResult.done, null, { timeout: 180000 });
      result = await page.evaluate(() => window.dxResult);
    } catch (e) {
      const partial = await page.evaluate(() => document.getElementById('log').textContent).catch(() => '');
      console.log(`# ${pg.label}: page log so far:\n${partial}`);
      result = { cases: [], error: e.message };
    }
    for (const line of result.info || []) console.log(`# chromium ${line}`);
    if (result.error) console.log(`# ${pg.label}: page error: ${result.error}`);
    for (const c of result.cases) {
      if (c.ok) ok(`chromium ${c.name}`); else notOk(`chromium ${c.name}`, c.detail);
    }
    for (let i = result.cases.length; i < expected; i++) notOk(`${pg.label}: case ${i + 1}`, 'did not run');
    await page.close();
  }
} catch (e) {
  notOk('chromium', e.message);
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
