// The Node `ws` peer: an echo (or broadcast) server (benchmarks/run.py). `ws`
// (and, when installed, the native `bufferutil`) are found through NODE_PATH,
// which run.py points at the node_modules folder it installs from
// benchmarks/package-lock.json (see run.py --help).
//   node benchmarks/peers/node_ws_echo.js --port 8765 [--deflate] [--broadcast] [--tls-cert PEM --tls-key PEM]
// --broadcast sends every message to every client (the sender included) with a
// loop over `server.clients`, the way ws's README does it.
'use strict';
const fs = require('fs');
const { WebSocketServer, WebSocket } = require('ws');
const arg = (name) => { const i = process.argv.indexOf(name); return i < 0 ? null : process.argv[i + 1]; };
const flag = (name) => process.argv.includes(name);
const port = Number(arg('--port'));
const deflate = flag('--deflate'), fanOut = flag('--broadcast'), cert = arg('--tls-cert');
const options = { backlog: 1024, perMessageDeflate: deflate, maxPayload: 0x7fffffff };
let httpServer = null;
if (cert) {
  httpServer = require('https').createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(arg('--tls-key')) });
  options.server = httpServer;
} else {
  options.host = '127.0.0.1';
  options.port = port;
}
const server = new WebSocketServer(options);
server.on('connection', (ws) => {
  if (fanOut) {
    ws.on('message', (data, isBinary) => {
      for (const client of server.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
      }
    });
  } else {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  }
  ws.on('error', () => {});
});
let native = 'no';
try { require.resolve('bufferutil'); native = 'yes'; } catch (e) { /* pure JS masking */ }
const ready = () => console.error(
  `ws ${require('ws/package.json').version} on 127.0.0.1:${port}, bufferutil: ${native}, ` +
  `broadcast: ${fanOut}, deflate: ${deflate}, tls: ${!!cert}`);
if (httpServer) httpServer.listen(port, '127.0.0.1', 1024, ready);
else server.on('listening', ready);
process.on('SIGTERM', () => process.exit(0));
