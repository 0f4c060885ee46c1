// The robot flow with the real socket.io-client 4.x, default options (polling, then
// upgrade to WebSocket). Run by tests/robot/test_robot_node_client.py:
//   node robot_flow.js <url> <zip file> <max_execution_time seconds>
// Prints one JSON object with everything observed; exits 0 unless something threw.
"use strict";

const fs = require("fs");
const { io } = require("socket.io-client");

const [url, zipPath, maxExec] = process.argv.slice(2);
const out = { version: require("socket.io-client/package.json").version };

function waitFor(predicate, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const timer = setInterval(() => {
      if (predicate()) { clearInterval(timer); resolve(); }
      else if (Date.now() - started > timeoutMs) { clearInterval(timer); reject(new Error("timeout: " + what)); }
    }, 10);
  });
}

function once(socket, event, timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no " + event)), timeoutMs);
    socket.once(event, (...args) => { clearTimeout(timer); resolve(args); });
  });
}

function proc(socket, object, method, args) {
  return socket.timeout(20000).emitWithAck("process", { params: { object, method, args: args || {} } });
}

async function main() {
  const socket = io(url);  // default client options
  // The transport the session opened on. Read at "open", not at "connect": the upgrade
  // probe starts as soon as the engine opens and may finish before the CONNECT ack
  // arrives (a loaded host), so at "connect" the transport can already be websocket.
  socket.io.once("open", () => { out.first_transport = socket.io.engine.transport.name; });
  await once(socket, "connect", 10000);
  await waitFor(() => socket.io.engine.transport.name === "websocket", 10000, "upgrade to websocket");
  out.upgraded_transport = socket.io.engine.transport.name;

  const zip = fs.readFileSync(zipPath).toString("base64");
  out.update = await socket.timeout(20000).emitWithAck("update", { data: zip });
  out.start = await socket.timeout(20000).emitWithAck("start", {});
  out.add = await proc(socket, "robot", "add", { a: 20, b: 22 });
  out.fail = await proc(socket, "robot", "fail");

  const pushed = once(socket, "task_completed", 10000);
  out.notify = await proc(socket, "robot", "notify_later", { delay: 0.05 });
  out.pushed = (await pushed)[0];

  // binary payload through an event the bridge echoes
  const echoed = await socket.timeout(5000).emitWithAck("echo", { bytes: Buffer.from([0, 1, 254, 255]) });
  out.echo_binary = Array.from(echoed.bytes);

  // A second client is refused while this one is connected.
  const second = io(url, { forceNew: true, reconnection: false });
  const [err] = await once(second, "connect_error", 10000);
  out.second_refused = { message: err.message, data: err.data };
  second.close();

  const started = Date.now();
  out.slow = await proc(socket, "robot", "sleep", { seconds: Number(maxExec) * 10 });
  out.slow_elapsed = (Date.now() - started) / 1000;
  out.after_slow = await proc(socket, "robot", "add", { a: 1, b: 1 });
  out.crash = await proc(socket, "robot", "crash");
  out.after_crash = await proc(socket, "robot", "add", { a: 2, b: 2 });
  out.final_transport = socket.io.engine.transport.name;
  socket.disconnect();
}

main().then(
  () => { console.log(JSON.stringify(out)); process.exit(0); },
  (e) => { out.error = String(e && e.stack || e); console.log(JSON.stringify(out)); process.exit(1); },
);
