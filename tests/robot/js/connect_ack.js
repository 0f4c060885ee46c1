// A default-options socket.io-client 4.x connects, emits "echo" and waits for the ack.
//   node connect_ack.js <url> [token] [query-token]
// With a token it is sent as socket.io-client's `auth: {token}` option; with
// "query" as third argument it goes in the `?token=` query instead.
// Prints one JSON object: {ok, connect_ms, ack_ms, ack, transport} or {ok: false, error, data}.
"use strict";

const { io } = require("socket.io-client");

const [url, token, how] = process.argv.slice(2);
const options = { reconnection: false };
if (token && how === "query") options.query = { token };
else if (token) options.auth = { token };

const started = Date.now();
const socket = io(url, options);
const timer = setTimeout(() => finish({ ok: false, error: "timeout after 20 s" }), 20000);

function finish(out) {
  clearTimeout(timer);
  console.log(JSON.stringify(out));
  socket.close();
  process.exit(out.ok ? 0 : 1);
}

socket.on("connect_error", (err) => finish({ ok: false, error: err.message, data: err.data || null }));
socket.on("connect", async () => {
  const connect_ms = Date.now() - started;
  try {
    const ack = await socket.timeout(10000).emitWithAck("echo", { hello: "crowd" });
    finish({ ok: true, connect_ms, ack_ms: Date.now() - started, ack, transport: socket.io.engine.transport.name });
  } catch (e) {
    finish({ ok: false, error: String(e) });
  }
});
