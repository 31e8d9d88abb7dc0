// A small Node app profiled by the real @pyroscope/nodejs SDK (wall with CPU time, and heap).
// Usage: NODE_PATH=<dir>/node_modules node pyroscope_node_app.js SERVER_URL APP_NAME SECONDS
'use strict';
const Pyroscope = require('@pyroscope/nodejs');

const [server, appName, seconds] = [process.argv[2], process.argv[3] || 'node-app', Number(process.argv[4] || 3)];
Pyroscope.init({
  serverAddress: server,
  appName,
  flushIntervalMs: 1000,
  wall: {samplingDurationMs: 1000, collectCpuTime: true},
  heap: {samplingIntervalBytes: 16 * 1024},
});
Pyroscope.start();

const keep = [];
function burnCpuAlpha(until) {
  let acc = 0;
  while (Date.now() < until) {
    for (let i = 0; i < 5000; i++) acc = (acc * 31 + i) % 1000003;
  }
  return acc;
}
function allocateBeta() {
  const a = [];
  for (let i = 0; i < 2000; i++) a.push({i, s: 'x'.repeat(64)});
  keep.push(a);
  if (keep.length > 50) keep.shift();
}
const end = Date.now() + seconds * 1000;
function step() {
  if (Date.now() >= end) {
    Pyroscope.stop().then(() => process.exit(0));
    return;
  }
  burnCpuAlpha(Date.now() + 30);
  allocateBeta();
  setTimeout(step, 20);  // idle: only the wall profile sees it
}
step();
