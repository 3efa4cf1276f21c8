// The Node `ws` peer: an echo server (benchmarks/run.py). `ws` (and, when
// installed, the native `bufferutil`) are found through NODE_PATH, which
// run.py points at a node_modules folder it finds (see run.py --help).
//   node benchmarks/peers/node_ws_echo.js --port 8765
'use strict';
const { WebSocketServer } = require('ws');
const at = process.argv.indexOf('--port');
const port = Number(process.argv[at + 1]);
const server = new WebSocketServer({ host: '127.0.0.1', port, backlog: 1024,
                                     perMessageDeflate: false, maxPayload: 0x7fffffff });
server.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
let native = 'no';
try { require.resolve('bufferutil'); native = 'yes'; } catch (e) { /* pure JS masking */ }
server.on('listening', () => console.error(
  `ws ${require('ws/package.json').version} on 127.0.0.1:${port}, bufferutil: ${native}`));
process.on('SIGTERM', () => process.exit(0));
