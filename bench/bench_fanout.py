"""Per-delivery cost of ``server.publish`` fan-out, without sockets.

``--subscribers`` real upgraded connections on stub transports (bench_dispatch.py's)
subscribe to one topic; each round publishes ``--burst`` messages, then yields to the
loop once so the end-of-tick flush writes every receiver. Deliveries/s is
subscribers × messages / time: the fan-out benchmark's server work minus the kernel.

    python bench/bench_fanout.py [--subscribers 1000] [--size 64] [--burst 8] [--tree DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from bench_dispatch import upgraded  # noqa: E402  (sets sys.path from --tree first)

import bunws  # noqa: E402
from bunws.http import Request  # noqa: E402


async def measure(subscribers: int, size: int, burst: int, repeat: int, rounds: int) -> list[float]:
    def fetch(req: Request, server: bunws.Server) -> None:
        server.upgrade(req)

    handler = bunws.WebSocketHandler(open=lambda ws: ws.subscribe("t"), idle_timeout=0)
    server = await bunws.serve(fetch, handler, port=0)
    transports = [upgraded(server)[1] for _ in range(subscribers)]
    assert server.subscriber_count("t") == subscribers
    payload = b"x" * size
    publish = server.publish
    results = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(rounds):
            for _ in range(burst):
                publish("t", payload, False)
            await asyncio.sleep(0)
        elapsed = time.perf_counter() - start
        results.append(rounds * burst * subscribers / elapsed)
    assert transports[-1].writes >= rounds  # one write per receiver per tick
    await server.stop(True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--burst", type=int, default=8, help="publishes per loop iteration")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--tree", default="", help="import bunws from this checkout instead")
    args = ap.parse_args()
    rates = asyncio.run(measure(args.subscribers, args.size, args.burst, args.repeat, args.rounds))
    median = statistics.median(rates)
    tree = os.path.dirname(os.path.dirname(os.path.abspath(bunws.__file__)))
    print(f"| bunws from | subscribers | size | deliveries/s (median of {args.repeat}) | ns/delivery |")
    print("|---|---|---|---|---|")
    print(f"| `{tree}` | {args.subscribers} | {args.size} B | {median / 1e6:.2f} M | {1e9 / median:.0f} |")


if __name__ == "__main__":
    main()
