// Node `ws` echo server for the duplex client interop tests (client_peers.py).
//
//   node client_echo_server.mjs --port P [--tls-cert FILE --tls-key FILE]
//
// Listens on 127.0.0.1:P (wss:// when given a certificate), echoes every
// message with its type (text stays text, binary stays binary), except the
// text "fragment-me", answered by "alpha-beta-gamma" in three frames; answers
// pings (ws does so itself) and echoes the close code it receives (ws does
// too). Prints "listening P" once ready. Runs until killed.
import { readFileSync } from 'node:fs';
import { createServer as createHttp } from 'node:http';
import { createServer as createHttps } from 'node:https';
import { WebSocketServer } from 'ws';

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const port = Number(opt('--port'));
const cert = opt('--tls-cert');
const key = opt('--tls-key');
if (!port) {
  console.error('usage: client_echo_server.mjs --port P [--tls-cert FILE --tls-key FILE]');
  process.exit(2);
}
const server = cert
  ? createHttps({ cert: readFileSync(cert), key: readFileSync(key) })
  : createHttp();
const wss = new WebSocketServer({ server, maxPayload: 64 * 1024 * 1024 });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    if (!isBinary && data.toString() === 'fragment-me') {
      // one message in three frames: text, continuation, continuation
      ws.send('alpha-', { fin: false });
      ws.send('beta-', { fin: false });
      ws.send('gamma', { fin: true });
      return;
    }
    ws.send(data, { binary: isBinary });
  });
  ws.on('error', () => {});
});
server.listen(port, '127.0.0.1', () => console.log(`listening ${port}`));
