"""socketify peer for the bunws benchmark (bench/README.md, "Server convention").

uWebSockets under Python (cffi). 127.0.0.1:$PORT; /echo echoes with the same opcode,
/sub subscribes to "t", /pub republishes with app.publish (uWS's C++ fan-out).
GET / -> 200 "ok" with Bun's Content-Type. DEFLATE=1 enables a shared compressor;
MAX_PAYLOAD sets max_payload_length.
No idle timeout, no automatic pings; max_backpressure stays at socketify's default
(64 KiB): subscribers over it lose messages, which is socketify's behaviour as shipped.
"""
import os

from socketify import App, AppListenOptions, CompressOptions, OpCode

PORT = int(os.environ.get("PORT", "9001"))
MAX_PAYLOAD = int(os.environ.get("MAX_PAYLOAD", str(64 * 1024 * 1024)))
DEFLATE = os.environ.get("DEFLATE") == "1"

app = App()
COMMON = {
    "compression": CompressOptions.SHARED_COMPRESSOR if DEFLATE else CompressOptions.DISABLED,
    "max_payload_length": MAX_PAYLOAD,
    "idle_timeout": 0,
    "send_pings_automatically": False,
}


def echo_message(ws, message, opcode):
    ws.send(message, opcode)


def sub_open(ws):
    ws.subscribe("t")


def pub_message(ws, message, opcode):
    app.publish("t", message, opcode, DEFLATE)


def index(res, req):
    # the same answer as Bun's new Response("ok"): 200, text/plain;charset=utf-8, body "ok"
    res.write_header("Content-Type", "text/plain;charset=utf-8")
    res.end("ok")


app.ws("/echo", dict(COMMON, message=echo_message))
app.ws("/sub", dict(COMMON, open=sub_open))
app.ws("/pub", dict(COMMON, message=pub_message))
app.get("/", index)
app.listen(AppListenOptions(port=PORT, host="127.0.0.1"),
           lambda config: print(f"socketify listening on 127.0.0.1:{PORT}", flush=True))
app.run()
