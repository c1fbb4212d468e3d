"""``python -m bunws``: serve an ASGI app, or the demo chat (see :mod:`bunws.demo`), until Ctrl-C.

Usage: ``python -m bunws [MODULE:APP] [--host 127.0.0.1] [--port 3000] [--workers N]
[--uvloop/--no-uvloop] [--root-path P] [--lifespan auto|on|off] [--redis URL]``.
Without ``MODULE:APP`` the demo chat is served. Ctrl-C or SIGTERM stops
gracefully: every client gets a Close frame with 1001.
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
    parser.add_argument(
        "app", nargs="?", metavar="MODULE:APP",
        help="an ASGI app to serve, e.g. main:app (default: the demo chat)",
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
    parser.add_argument(
        "--uvloop", action=argparse.BooleanOptionalAction, default=None,
        help="use uvloop (default: when installed)",
    )
    parser.add_argument("--root-path", default="", help="ASGI root_path (an app mounted below a prefix)")
    parser.add_argument(
        "--lifespan", choices=("auto", "on", "off"), default="auto",
        help="ASGI lifespan protocol (default auto: used when the app supports it)",
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

    if args.app is not None:
        return _serve_asgi_app(parser, args)
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
        run(app.fetch, app.websocket, on_start=started, uvloop=args.uvloop, **options)
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


def load_app(spec: str) -> Any:
    """``MODULE:APP`` (``APP`` may be dotted, ``MODULE`` imported from the current
    directory first) -> the object."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected MODULE:APP, got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _serve_asgi_app(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .asgi import run_asgi

    try:
        app = load_app(args.app)
    except (ImportError, AttributeError, ValueError) as exc:
        parser.error(f"cannot load {args.app}: {exc}")
    options: dict[str, Any] = dict(
        hostname=args.host, port=args.port, root_path=args.root_path, lifespan=args.lifespan,
        uvloop=args.uvloop, workers=args.workers,
    )
    if args.redis is not None:
        from .backplane import RedisBackplane

        url = args.redis
        options["backplane"] = lambda: RedisBackplane(url)

    def started(server: Server) -> None:
        if os.environ.get("BUNWS_WORKER_ID", "0") == "0":
            print(f"bunws {__version__} serving {args.app} on {_browser_url(args.host, server.port)}", flush=True)

    try:
        run_asgi(app, on_start=started, **options)
    except OSError as exc:
        print(f"python -m bunws: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
