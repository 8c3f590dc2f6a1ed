// bench/peers/json_gen.js: realistic JSON messages for the permessage-deflate
// benchmark (scripts/bench_deflate.sh): what a real-time app sends, e.g. an
// order-book / activity feed update: an envelope (type, sequence, timestamp,
// channel) and a list of records with ids, user objects, prices, quantities,
// enums, tags and short free text. Values come from a seeded generator, so
// no two messages are equal (context takeover must earn its ratio, not find
// the previous message verbatim) while the keys and the vocabulary repeat as
// they do in real feeds.
//
//   const { makeMessage } = require('./json_gen.js');
//   makeMessage(seq, bytes) -> Buffer of exactly `bytes` bytes of valid JSON (bytes >= 128)
'use strict';

const WORDS = ('order filled partially cancelled replaced new pending settled matched rejected expired ' +
  'limit market stop iceberg maker taker buy sell bid ask spread depth volume liquidity ' +
  'alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia peggy rupert sybil trent victor walter').split(' ');
const SYMBOLS = ['BTC-EUR', 'ETH-EUR', 'SOL-USD', 'ADA-USD', 'XRP-EUR', 'DOT-USD', 'AAPL', 'MSFT', 'TSLA', 'NVDA'];
const STATUS = ['open', 'filled', 'partial', 'cancelled'];

function rng(seed) {
  let x = (seed * 2654435761) >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x / 4294967296;
  };
}

function record(r, seq, k) {
  const user = Math.floor(r() * 5000);
  const price = (1000 + r() * 60000).toFixed(2);
  const words = [];
  for (let i = 0, n = 3 + Math.floor(r() * 6); i < n; i++) words.push(WORDS[Math.floor(r() * WORDS.length)]);
  return {
    id: `ord_${(seq * 131 + k).toString(36)}${Math.floor(r() * 1e9).toString(36)}`,
    symbol: SYMBOLS[Math.floor(r() * SYMBOLS.length)],
    side: r() < 0.5 ? 'buy' : 'sell',
    price: Number(price),
    qty: Math.floor(1 + r() * 500) / 10,
    status: STATUS[Math.floor(r() * STATUS.length)],
    user: { id: user, name: `${WORDS[20 + (user % 17)]}${user}`, verified: user % 3 !== 0 },
    ts: 1764536400000 + seq * 37 + k,
    tags: words.slice(0, 2),
    note: words.join(' '),
  };
}

function makeMessage(seq, bytes) {
  if (bytes < 128) throw new Error('makeMessage: at least 128 bytes');
  const r = rng(seq + 1);
  const env = { type: 'update', seq, ts: new Date(1764536400000 + seq * 37).toISOString(), channel: 'orders.eu-west-1', items: [] };
  let s = JSON.stringify(env);
  for (let k = 0; ; k++) {
    env.items.push(record(r, seq, k));
    const t = JSON.stringify(env);
    if (Buffer.byteLength(t) + 12 > bytes) { env.items.pop(); break; }
    s = t;
  }
  // pad to the exact size with a "pad" field of words
  const head = s.slice(0, -1) + ',"pad":"';
  let pad = '';
  while (Buffer.byteLength(head) + pad.length + 2 < bytes) pad += WORDS[Math.floor(r() * WORDS.length)] + ' ';
  pad = pad.slice(0, bytes - Buffer.byteLength(head) - 2);
  const out = Buffer.from(head + pad + '"}');
  if (out.length !== bytes) throw new Error(`makeMessage: ${out.length} != ${bytes}`);
  return out;
}

module.exports = { makeMessage };
