// bench/peers/ws_echo.js: the Node `ws` peer for scripts/bench_echo.sh.
// A WebSocket echo server on ws://HOST:PORT/echo: each message goes back
// with its type (binary or text). No compression (perMessageDeflate: false)
// unless --deflate JSON gives ws's perMessageDeflate server options
// (scripts/bench_deflate.sh), 64 MiB max payload. Node runs JavaScript on
// one thread; the script pins the whole process to one core.
//
//   node ws_echo.js [--host 127.0.0.1] [--port 9003] [--deflate JSON]   SIGTERM/SIGINT: exit 0
'use strict';

const { WebSocketServer } = require('ws');

let host = '127.0.0.1';
let port = 9003;
let deflate = false;
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--host' && i + 1 < args.length) host = args[++i];
  else if (args[i] === '--port' && i + 1 < args.length) port = Number(args[++i]);
  else if (args[i] === '--deflate' && i + 1 < args.length) deflate = JSON.parse(args[++i]);
  else {
    console.error('usage: node ws_echo.js [--host IPV4] [--port P] [--deflate JSON]');
    process.exit(2);
  }
}

const wss = new WebSocketServer({
  host,
  port,
  path: '/echo',
  perMessageDeflate: deflate,
  maxPayload: 64 * 1024 * 1024,
  clientTracking: false,
});

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
wss.on('listening', () => {
  const { version } = require('ws/package.json');
  console.error(`ws_echo: node ${process.version}, ws ${version}, listening on ${host}:${port}/echo`);
});

function stop() {
  console.error('ws_echo: stopping');
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
