// Node `ws` echo server with permessage-deflate, for deflate_peers.py (the
// duplex client against a compressing peer).
//
//   node deflate_echo_server.mjs --port P --deflate JSON
//
// JSON is ws's perMessageDeflate server option object (serverNoContextTakeover,
// clientNoContextTakeover, serverMaxWindowBits, clientMaxWindowBits,
// threshold; threshold 0 unless given, so every message is compressed), or
// "false" for no extension. Listens on 127.0.0.1:P; echoes every message with
// its type, compressed, except:
//   "negotiated?"  answered with the parameters ws accepted, as JSON
//                  ({} when the client offered nothing ws accepted, else
//                  e.g. {"server_no_context_takeover":true,...})
//   "fragment-me"  answered by "alpha-beta-gamma" in three compressed
//                  frames (text "alpha-", continuations "beta-", "gamma"), as
//                  client_echo_server.mjs does uncompressed
// Prints "listening P" once ready. Runs until killed.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), 'node_modules') + '/');
const { WebSocketServer } = require('ws');

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const port = Number(opt('--port'));
let deflate = JSON.parse(opt('--deflate') || '{}');
if (!port) {
  console.error('usage: deflate_echo_server.mjs --port P --deflate JSON');
  process.exit(2);
}
if (deflate && deflate.threshold === undefined) deflate.threshold = 0;
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: deflate, maxPayload: 64 * 1024 * 1024 });
wss.on('connection', (ws, req) => {
  console.log(`connection: offer "${req.headers['sec-websocket-extensions'] || ''}"`);
  ws.on('message', (data, isBinary) => {
    if (!isBinary && data.length < 32) {
      const s = data.toString();
      if (s === 'negotiated?') {
        const pmd = ws._extensions['permessage-deflate'];
        ws.send(JSON.stringify(pmd ? pmd.params : null));
        return;
      }
      if (s === 'fragment-me') {
        ws.send('alpha-', { fin: false, compress: true });
        ws.send('beta-', { fin: false, compress: true });
        ws.send('gamma', { fin: true, compress: true });
        return;
      }
    }
    ws.send(data, { binary: isBinary, compress: true });
  });
  ws.on('error', (e) => console.log(`connection error: ${e.message}`));
});
wss.on('listening', () => console.log(`listening ${port}`));
