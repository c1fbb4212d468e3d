"""Per-message cost of the server's hot path, without sockets.

Feeds pipelined masked frames to a real upgraded ``Connection`` whose transport is a
stub (``write`` only counts bytes), with a plain Python ``message`` handler that calls
``ws.send``: exactly the echo benchmark's per-message work minus the kernel. This is
the figure used to decide what moves into Cython (see bunws/_wscore.pyx).

    python bench/bench_dispatch.py [--frames 128] [--size 16] [--repeat 7] [--tree DIR]

``--tree DIR`` imports bunws from another (built) checkout, e.g. a worktree of an
older commit, so two versions can be measured back to back on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
if "--tree" in sys.argv:  # before importing bunws: which checkout to measure
    sys.path.insert(0, os.path.abspath(sys.argv[sys.argv.index("--tree") + 1]))
else:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import wire  # noqa: E402

import bunws  # noqa: E402
from bunws.http import Headers, Request  # noqa: E402
from bunws.protocol import Connection  # noqa: E402


class StubTransport:
    def __init__(self) -> None:
        self.written = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.writes += 1

    def writelines(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return False


def upgraded(server: bunws.Server) -> tuple[Connection, StubTransport]:
    """A real Connection on a stub transport, upgraded by the server's ``fetch``."""
    conn = Connection(server)
    transport = StubTransport()
    conn.connection_made(transport)
    req = Request(
        "GET",
        "/",
        Headers(
            [
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Version", "13"),
            ]
        ),
        connection=conn,
    )
    assert server.upgrade(req)
    return conn, transport


async def measure(frames: int, size: int, repeat: int, rounds: int) -> list[float]:
    def echo(ws: bunws.ServerWebSocket, msg: object) -> None:
        ws.send(msg)

    def fetch(req: Request, server: bunws.Server) -> None:
        server.upgrade(req)

    server = await bunws.serve(fetch, bunws.WebSocketHandler(message=echo), port=0)
    conn, transport = upgraded(server)
    batch = wire.client(wire.BINARY, b"x" * size) * frames
    if hasattr(conn, "get_buffer"):
        # A BufferedProtocol: copy into its buffer as the transport's recv_into would.
        def feed() -> None:
            buf = conn.get_buffer(-1)
            buf[: len(batch)] = batch
            conn.buffer_updated(len(batch))
    else:
        def feed() -> None:
            conn.data_received(batch)

    results = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(rounds):
            feed()
        elapsed = time.perf_counter() - start
        results.append(rounds * frames / elapsed)
    assert transport.writes >= rounds  # one write per read batch
    await server.stop(True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=128, help="frames per read batch")
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--tree", default="", help="import bunws from this checkout instead")
    args = ap.parse_args()
    rates = asyncio.run(measure(args.frames, args.size, args.repeat, args.rounds))
    median = statistics.median(rates)
    tree = os.path.dirname(os.path.dirname(os.path.abspath(bunws.__file__)))
    print(f"| bunws from | frames/batch | size | msgs/s (median of {args.repeat}) | ns/msg |")
    print("|---|---|---|---|---|")
    print(f"| `{tree}` | {args.frames} | {args.size} B | {median / 1e6:.2f} M | {1e9 / median:.0f} |")


if __name__ == "__main__":
    main()
