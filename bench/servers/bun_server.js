// Bun peer for the bunws benchmark (bench/README.md, "Server convention").
// 127.0.0.1:$PORT; /echo echoes with the same opcode, /sub subscribes to "t",
// /pub republishes every message to "t" with server.publish; GET / -> 200.
// DEFLATE=1 enables permessage-deflate; MAX_PAYLOAD sets maxPayloadLength.
const port = Number(process.env.PORT || 9001);
const deflate = process.env.DEFLATE === "1";
const maxPayload = Number(process.env.MAX_PAYLOAD || 64 * 1024 * 1024);

const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch(req, server) {
    const path = new URL(req.url).pathname;
    if (path === "/echo" || path === "/sub" || path === "/pub") {
      if (server.upgrade(req, { data: { path } })) return undefined;
      return new Response("upgrade failed", { status: 400 });
    }
    return new Response("ok");
  },
  websocket: {
    perMessageDeflate: deflate,
    maxPayloadLength: maxPayload,
    idleTimeout: 0,        // no idle timeout
    sendPings: false,      // no pings interfering
    open(ws) {
      if (ws.data.path === "/sub") ws.subscribe("t");
    },
    message(ws, msg) {
      const path = ws.data.path;
      if (path === "/echo") ws.send(msg, deflate);         // string -> text, Buffer -> binary; compressed when DEFLATE=1
      else if (path === "/pub") server.publish("t", msg, deflate);
    },
  },
});
console.log(`bun listening on ${server.hostname}:${server.port}`);
