// bench/peers/ws_broadcast.js: the Node `ws` yardstick of the gateway fan-out
// benchmark (scripts/bench_gateway.sh). The usual Node broadcast server:
// WebSocket clients on ws://HOST:PORT/ws; a connection whose query has
// `publish=` is a publisher, any other one a subscriber; each message from
// a publisher is sent to every open subscriber with a loop over
// wss.clients (client.send(data)), type kept. No compression (unless
// --deflate JSON gives ws's perMessageDeflate server options: then ws
// compresses each send for each client, scripts/bench_deflate.sh), no topics
// (the benchmark uses one), no backpressure (ws buffers without bound),
// as the common examples do.
//
//   node ws_broadcast.js [--host 127.0.0.1] [--port 9004] [--deflate JSON]   SIGTERM/SIGINT: exit 0
'use strict';

const { WebSocketServer, WebSocket } = require('ws');

let host = '127.0.0.1';
let port = 9004;
let deflate = false;
const args = process.argv.slice(2);
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--host' && i + 1 < args.length) host = args[++i];
  else if (args[i] === '--port' && i + 1 < args.length) port = Number(args[++i]);
  else if (args[i] === '--deflate' && i + 1 < args.length) deflate = JSON.parse(args[++i]);
  else {
    console.error('usage: node ws_broadcast.js [--host IPV4] [--port P] [--deflate JSON]');
    process.exit(2);
  }
}

const wss = new WebSocketServer({ host, port, path: '/ws', perMessageDeflate: deflate });

wss.on('connection', (ws, req) => {
  ws.on('error', () => {});
  if (!/[?&]publish=/.test(req.url)) {
    ws.subscriber = true;
    return;
  }
  ws.on('message', (data, isBinary) => {
    for (const client of wss.clients) {
      if (client.subscriber && client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
    }
  });
});
wss.on('listening', () => {
  const { version } = require('ws/package.json');
  console.error(`ws_broadcast: node ${process.version}, ws ${version}, listening on ${host}:${port}/ws`);
});

function stop() {
  console.error('ws_broadcast: stopping');
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
