// bench/peers/deflate_load.js: the client side of scripts/bench_deflate.sh.
// Node `ws` connections with or without permessage-deflate, carrying the JSON
// of json_gen.js; counts the bytes each socket really moved (bytesWritten,
// bytesRead: frame headers and all), so the wire cost is measured, not
// computed. The server's CPU and memory are read by the caller from /proc.
//
//   node deflate_load.js echo   --url U --conns C --messages M --size S --offer JSON
//        C connections, each echoing M messages one at a time (every echo
//        compared byte for byte); prints one JSON line when done.
//   node deflate_load.js hold   --url U --conns C --size S --offer JSON
//        C connections, each echoing one message (so the server's compressor
//        and decompressor are in use), then prints "ready" and holds them
//        until stdin closes.
//   node deflate_load.js fanout --url U --pub-url P --conns C --rate R --count N --size S --offer JSON
//        C subscribers on U (deflate as offered), one publisher on P (no
//        deflate) sending N messages at R/s; waits until every subscriber
//        got all N (in order, compared), or the publishing time + 60 s
//        (then "finished": false: the server did not keep up), prints one
//        JSON line.
// --offer: ws's perMessageDeflate client options, or false. Exit 1 on any error.
'use strict';

const WebSocket = require('ws');
const { makeMessage } = require('./json_gen.js');

const [mode, ...rest] = process.argv.slice(2);
const o = {};
for (let i = 0; i < rest.length; i += 2) o[rest[i].replace(/^--/, '')] = rest[i + 1];
const conns = Number(o.conns || 1);
const size = Number(o.size || 1024);
const offer = JSON.parse(o.offer || 'false');
if (offer && offer.threshold === undefined) offer.threshold = 0;
const fail = (why) => { console.error(`deflate_load: ${why}`); process.exit(1); };

function open(url, pmd) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: pmd, maxPayload: 64 << 20 });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

async function openAll(url, n, pmd) {
  const out = [];
  for (let i = 0; i < n; i += 100) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + 100); j++) batch.push(open(url, pmd));
    out.push(...(await Promise.all(batch)));
  }
  return out;
}

function echoLoop(ws, msgs) {
  return new Promise((resolve, reject) => {
    let i = 0;
    ws.on('message', (data) => {
      if (Buffer.compare(data, msgs[i % msgs.length]) !== 0) return reject(new Error(`echo ${i} differs`));
      if (++i === msgs.n) return resolve();
      ws.send(msgs[i % msgs.length], { binary: false });
    });
    ws.on('close', () => reject(new Error(`closed after ${i} echoes`)));
    ws.send(msgs[0], { binary: false });
  });
}

function wire(list) {
  let out = 0, inn = 0;
  for (const ws of list) { out += ws._socket.bytesWritten; inn += ws._socket.bytesRead; }
  return { out, inn };
}

async function main() {
  if (mode === 'echo' || mode === 'hold') {
    const m = mode === 'echo' ? Number(o.messages || 1000) : 1;
    const msgs = Array.from({ length: 64 }, (_, k) => makeMessage(k, size));
    msgs.n = m;
    const list = await openAll(o.url, conns, offer);
    const neg = list[0].extensions || '';
    const w0 = wire(list);
    const t0 = process.hrtime.bigint();
    await Promise.all(list.map((ws) => echoLoop(ws, msgs)));
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const w1 = wire(list);
    const res = {
      mode, conns, size, messages: m * conns, secs, negotiated: neg,
      raw_bytes_each_way: m * conns * size,
      wire_out: w1.out - w0.out, wire_in: w1.inn - w0.inn,
    };
    if (mode === 'hold') {
      console.log(JSON.stringify(res));
      console.log('ready');
      process.stdin.resume();
      process.stdin.on('end', () => process.exit(0));
      return;
    }
    console.log(JSON.stringify(res));
    for (const ws of list) ws.terminate();
    process.exit(0);
  }
  if (mode === 'fanout') {
    const count = Number(o.count || 1000);
    const rate = Number(o.rate || 100);
    const subs = await openAll(o.url, conns, offer);
    const msgs = Array.from({ length: 64 }, (_, k) => makeMessage(k, size));
    let done = 0;
    let delivered = 0;
    const finished = new Promise((resolve, reject) => {
      for (const ws of subs) {
        let got = 0;
        ws.on('message', (data) => {
          if (Buffer.compare(data, msgs[got % msgs.length]) !== 0) return reject(new Error(`delivery ${got} differs`));
          delivered++;
          if (++got === count && ++done === subs.length) resolve();
        });
        ws.on('close', () => { if (got < count) reject(new Error(`subscriber closed after ${got}`)); });
      }
    });
    // let every subscription settle before publishing
    await new Promise((r) => setTimeout(r, 500));
    const pub = await open(o['pub-url'], false);
    const w0 = wire(subs);
    const t0 = process.hrtime.bigint();
    let sent = 0;
    const tick = setInterval(() => {
      const due = Math.min(count, Math.floor((Number(process.hrtime.bigint() - t0) / 1e9) * rate) + 1);
      while (sent < due) pub.send(msgs[sent++ % msgs.length], { binary: false });
      if (sent >= count) clearInterval(tick);
    }, 5);
    // A server that cannot keep up is a result, not an error: after the
    // publishing time + 60 s the run ends with what was delivered.
    let finishedOk = true;
    await Promise.race([finished, new Promise((r) => setTimeout(() => { finishedOk = false; r(); },
      (count / rate) * 1000 + 60000))]);
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    const w1 = wire(subs);
    console.log(JSON.stringify({
      mode, conns, size, messages: count, deliveries: delivered, expected: count * conns, finished: finishedOk,
      secs, negotiated: subs[0].extensions || '', raw_bytes_delivered: delivered * size, wire_in: w1.inn - w0.inn,
    }));
    for (const ws of subs) ws.terminate();
    pub.terminate();
    process.exit(0);
  }
  fail('usage: deflate_load.js echo|hold|fanout --url U ... (see the header)');
}

main().catch((e) => fail(e.message));
