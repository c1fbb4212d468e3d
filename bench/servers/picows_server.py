"""picows peer for the bunws benchmark (bench/README.md, "Server convention").

127.0.0.1:$PORT; /echo echoes each frame with its opcode, /sub joins the subscriber set,
/pub sends every message to each subscriber (the idiomatic loop over a set; picows has no
pub/sub). GET / -> 200. UVLOOP=1 runs on uvloop. MAX_PAYLOAD sets max_frame_size.
picows has no permessage-deflate, so DEFLATE is ignored.

Transports: on stock asyncio picows uses aiofastnet (its own default, installed with it);
on uvloop it uses uvloop's transports, because aiofastnet under uvloop 0.23 fails on
file-descriptor reuse ("UVPoll closed" in add_reader) once thousands of sockets come and go.
"""
import asyncio
import os

from picows import (WSListener, WSMsgType, WSUpgradeResponse, WSUpgradeResponseWithListener,
                    ws_create_server)

PORT = int(os.environ.get("PORT", "9001"))
MAX_PAYLOAD = int(os.environ.get("MAX_PAYLOAD", str(64 * 1024 * 1024)))
SUBS = set()
DATA = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)


class Echo(WSListener):
    def on_ws_frame(self, transport, frame):
        mt = frame.msg_type
        if mt in DATA:
            transport.send(mt, frame.get_payload_as_memoryview(), frame.fin)
        elif mt == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


class Sub(WSListener):
    def on_ws_connected(self, transport):
        SUBS.add(transport)

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    def on_ws_disconnected(self, transport):
        SUBS.discard(transport)


class Pub(WSListener):
    def on_ws_frame(self, transport, frame):
        mt = frame.msg_type
        if mt == WSMsgType.TEXT or mt == WSMsgType.BINARY:
            payload = frame.get_payload_as_bytes()
            for sub in SUBS:
                sub.send(mt, payload)
        elif mt == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


ROUTES = {"/echo": Echo, "/sub": Sub, "/pub": Pub}


def listener_factory(request):
    path = request.path.decode().split("?", 1)[0]
    cls = ROUTES.get(path)
    if cls is not None:
        return cls()
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok"), None)


async def main():
    kwargs = {"use_aiofastnet": False} if os.environ.get("UVLOOP") == "1" else {}
    if os.environ.get("PICOWS_AIOFASTNET") in ("0", "1"):  # manual override for experiments
        kwargs["use_aiofastnet"] = os.environ["PICOWS_AIOFASTNET"] == "1"
    server = await ws_create_server(listener_factory, "127.0.0.1", PORT, backlog=4096,
                                    max_frame_size=MAX_PAYLOAD, enable_auto_ping=False, **kwargs)
    print(f"picows listening on 127.0.0.1:{PORT}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    if os.environ.get("UVLOOP") == "1":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
