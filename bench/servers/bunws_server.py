"""bunws server for the benchmark and conformance tools (fixed convention).

Listens on 127.0.0.1:$PORT. ``/echo`` sends back every message with the same
opcode; ``/sub`` subscribes to topic "t"; ``/pub`` republishes every message to "t".
``DEFLATE=shared`` (or ``1``) enables ``per_message_deflate=True`` (Bun's shared
mode) and echo replies are then sent compressed;
``DEFLATE=dedicated`` uses a dedicated compressor and decompressor per socket
(accepts the peer's window-bit parameters); unset, empty or ``0`` is off, any
other value is an error; ``MAX_PAYLOAD`` sets
``max_payload_length``; ``UVLOOP=1`` runs on uvloop; ``FAST_TRANSPORT=1`` listens
through aiofastnet (``fast_transport=True``). No pings, no idle timeout.
Plain HTTP requests get 200 (readiness check).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import bunws  # noqa: E402

ROUTES = {"/echo": "echo", "/sub": "sub", "/pub": "pub"}
DEFLATE_MODES = {
    "": False,
    "0": False,
    "1": True,
    "shared": True,
    "dedicated": {"compress": "dedicated", "decompress": "dedicated"},
}
DEFLATE = os.environ.get("DEFLATE", "")
if DEFLATE not in DEFLATE_MODES:
    # A typo must not silently run a conformance suite without compression.
    sys.exit(f"DEFLATE must be one of {sorted(DEFLATE_MODES)}, got {DEFLATE!r}")
# With compression negotiated, echo replies are compressed too (as bun_server.js does).
COMPRESS = DEFLATE_MODES[DEFLATE] is not False


def fetch(req, server):
    role = ROUTES.get(req.path)
    if role is not None and server.upgrade(req, data=role):
        return None
    return bunws.Response("ok")


def open_(ws):
    if ws.data == "sub":
        ws.subscribe("t")


def message(ws, msg):
    role = ws.data
    if role == "echo":
        ws.send(msg, COMPRESS)
    elif role == "pub":
        ws.publish("t", msg)


def main() -> None:
    handler = bunws.WebSocketHandler(
        open=open_,
        message=message,
        idle_timeout=0,
        send_pings=False,
        per_message_deflate=DEFLATE_MODES[DEFLATE],
        max_payload_length=int(os.environ.get("MAX_PAYLOAD", str(64 * 1024 * 1024))),
        backpressure_limit=int(os.environ.get("BACKPRESSURE", str(64 * 1024 * 1024))),
    )
    bunws.run(
        fetch,
        handler,
        hostname="127.0.0.1",
        port=int(os.environ.get("PORT", "9001")),
        uvloop=os.environ.get("UVLOOP") == "1",
        backlog=4096,
        max_pending_handshakes=100_000,
        fast_transport=os.environ.get("FAST_TRANSPORT") == "1",
    )


if __name__ == "__main__":
    main()
