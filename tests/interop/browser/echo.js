// duplex interop, browser side: opens each ?url= WebSocket, echoes text and
// binary (ArrayBuffer) messages of each ?sizes= size, checks every byte,
// closes with 4000 and checks the echoed code. Publishes
//   window.dxResult = { done: true, cases: [{ name, ok, detail }], info: [string] }
// and the same JSON in #result, for ../browser_client.mjs to assert.
'use strict';

(function () {
  const q = new URLSearchParams(location.search);
  const urls = q.getAll('url');
  const sizes = (q.get('sizes') || '0,125,126,65535,65536').split(',').map(Number);
  const CASE_MS = 30000;
  const cases = [];
  const info = [];
  const logEl = document.getElementById('log');
  const log = (s) => { logEl.textContent += s + '\n'; console.log(s); };

  let seed = 0x12345678;
  function randomBytes(n) {
    const b = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5;
      b[i] = seed & 0xff;
    }
    return b;
  }
  // Exactly n UTF-8 bytes mixing 1- to 4-byte characters.
  function utf8Text(n) {
    const unit = 'a\u00e9\u20ac\u{1F600}'; // 1 + 2 + 3 + 4 = 10 bytes
    return unit.repeat(Math.floor(n / 10)) + 'x'.repeat(n % 10);
  }
  function diff(got, want) {
    if (got.length !== want.length) return `got ${got.length}, sent ${want.length}`;
    for (let i = 0; i < got.length; i++) if (got[i] !== want[i]) return `first difference at ${i}`;
    return null;
  }

  function open(url) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.binaryType = 'arraybuffer';
      const queue = [];
      let waiter = null;
      let closed = null;
      const kick = () => { if (waiter) { const w = waiter; waiter = null; w(); } };
      ws.onmessage = (ev) => { queue.push(ev.data); kick(); };
      ws.onclose = (ev) => { closed = { code: ev.code, reason: ev.reason, clean: ev.wasClean }; kick(); reject(new Error(`closed ${ev.code} before open`)); };
      ws.onerror = () => { kick(); };
      ws.onopen = () => resolve({
        ws,
        next() {
          return new Promise((res, rej) => {
            const test = () => {
              if (queue.length) return res(queue.shift());
              if (closed) return rej(new Error(`connection closed (${closed.code}) while waiting for a message`));
              waiter = test;
            };
            test();
          });
        },
        closed() {
          return new Promise((res) => { const test = () => (closed ? res(closed) : (waiter = test)); test(); });
        },
      });
    });
  }

  async function run(name, fn) {
    let timer;
    try {
      await Promise.race([fn(), new Promise((_, rej) => { timer = setTimeout(() => rej(new Error('timed out')), CASE_MS); })]);
      cases.push({ name, ok: true });
      log('ok - ' + name);
    } catch (e) {
      cases.push({ name, ok: false, detail: String(e && e.message || e) });
      log('not ok - ' + name + ': ' + (e && e.message || e));
    } finally { clearTimeout(timer); }
  }

  async function main() {
    for (const url of urls) {
      const tag = url.replace(/^(wss?):\/\/.*/, '$1') + ' (page ' + location.protocol.replace(':', '') + ')';
      let c = null;
      await run(`${tag}: connect`, async () => { c = await open(url); info.push(`${tag}: extensions "${c.ws.extensions}"`); });
      for (const n of sizes) {
        await run(`${tag}: text echo ${n} bytes`, async () => {
          if (!c) throw new Error('not connected');
          const s = utf8Text(n);
          c.ws.send(s);
          const got = await c.next();
          if (typeof got !== 'string') throw new Error('echo is not text');
          if (got !== s) throw new Error('text differs: ' + diff(got, s));
        });
        await run(`${tag}: binary (ArrayBuffer) echo ${n} bytes`, async () => {
          if (!c) throw new Error('not connected');
          const b = randomBytes(n);
          c.ws.send(b.buffer);
          const got = await c.next();
          if (!(got instanceof ArrayBuffer)) throw new Error('echo is not an ArrayBuffer');
          const d = diff(new Uint8Array(got), b);
          if (d) throw new Error('bytes differ: ' + d);
        });
      }
      await run(`${tag}: close 4000 is echoed with code 4000`, async () => {
        if (!c) throw new Error('not connected');
        c.ws.close(4000, 'bye from the browser');
        const cl = await c.closed();
        info.push(`${tag}: close answered ${cl.code} ${JSON.stringify(cl.reason)} clean=${cl.clean}`);
        if (cl.code !== 4000) throw new Error(`close answered ${cl.code}`);
      });
    }
    window.dxResult = { done: true, cases, info };
    document.getElementById('result').textContent = JSON.stringify(window.dxResult);
  }

  main().catch((e) => {
    window.dxResult = { done: true, cases, info, error: String(e && e.stack || e) };
    document.getElementById('result').textContent = JSON.stringify(window.dxResult);
  });
})();
