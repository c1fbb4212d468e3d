"""``python -m bunws``: serve the demo chat (see :mod:`bunws.demo`) until Ctrl-C.

Usage: ``python -m bunws [--host 127.0.0.1] [--port 3000] [--workers N]``.
Ctrl-C or SIGTERM stops gracefully: every client gets a Close frame with 1001.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .demo import ChatDemo
from .server import Server, run

__all__ = ["main"]


def _run_accepts(option: str) -> bool:
    return option in inspect.signature(run).parameters


def _browser_url(host: str, port: int) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bunws",
        description="bunws demo: a chat with rooms, join/leave notices and a live member "
        "count, plus an echo socket. Open the printed URL in two browser tabs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3000, help="port (default 3000; 0 picks a free one)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the port (default 1)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="with --workers: relay room messages between workers through Redis "
        "(e.g. redis://127.0.0.1:6379/0); member counts stay per worker",
    )
    parser.add_argument("--version", action="version", version=f"bunws {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    if args.workers < 1:
        parser.error(f"--workers must be 1 or more, got {args.workers}")

    app = ChatDemo()
    options: dict[str, Any] = dict(app.serve_options, hostname=args.host, port=args.port)
    if args.workers > 1:
        if not _run_accepts("workers"):
            print(
                f"python -m bunws: error: --workers {args.workers} needs multi-process workers "
                f"(bunws.run(workers=...)), which bunws {__version__} does not have yet; "
                "run without --workers",
                file=sys.stderr,
            )
            return 2
        options["workers"] = args.workers
        if args.redis is None:
            print(
                f"python -m bunws: note: topics are per process, so with {args.workers} workers "
                "two tabs may land in different workers and not see each other; "
                "add --redis URL to relay messages between them",
                file=sys.stderr,
            )
    if args.redis is not None:
        try:
            from .backplane import RedisBackplane
        except ImportError as exc:
            print(f"python -m bunws: error: --redis needs the Redis backplane: {exc}", file=sys.stderr)
            return 2
        url = args.redis
        # A factory: each worker builds its own connection after the fork.
        options["backplane"] = lambda: RedisBackplane(url, channel_prefix="bunws-demo:")

    def started(server: Server) -> None:
        if os.environ.get("BUNWS_WORKER_ID", "0") != "0":
            return  # with --workers, one banner (from worker 0) is enough
        url = _browser_url(args.host, server.port)
        ws = url.replace("http://", "ws://", 1)
        print(
            f"bunws {__version__} demo chat on {url}\n"
            f"  open it in two browser tabs, pick a name, chat\n"
            f"  sockets:  {ws}chat?name=NAME&room=ROOM   {ws}echo\n"
            f"  publish:  curl -d 'hello' {url}rooms/lobby/messages\n"
            f"  Ctrl-C stops (clients get 1001)",
            flush=True,
        )

    try:
        run(app.fetch, app.websocket, on_start=started, **options)
    except OSError as exc:
        print(
            f"python -m bunws: error: cannot listen on {args.host}:{args.port}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during the graceful stop
        pass
    print("bunws demo stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
