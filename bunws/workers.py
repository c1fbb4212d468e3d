"""``run(..., workers=N)``: N forked worker processes on one port, and their supervisor.

Each worker is a fork of the calling process running the same app on its own event
loop. By default every worker binds its own listening socket with ``SO_REUSEPORT``
and the kernel spreads new connections over them (by a hash of the address pair);
``socket_sharing="inherit"`` (the fallback where ``SO_REUSEPORT`` is missing)
creates one listening socket in the supervisor that every worker inherits and
accepts from.

The supervisor restarts a worker that dies, after a delay that doubles for a worker
that keeps dying young (capped), and forwards SIGINT/SIGTERM to the workers, which
stop gracefully: Close 1001 to every client, close handlers run, then exit 0. A
second signal kills the workers at once. Worker ``i`` finds its index in the
``BUNWS_WORKER_ID`` environment variable.

Counters are per process too: each worker writes its ``server.stats()`` snapshot
every ``STATS_INTERVAL`` seconds into a directory the supervisor made
(``BUNWS_STATS_DIR``), and :func:`cluster_stats` in any worker sums its own fresh
snapshot with the others' files, so one scrape sees every worker
(:class:`bunws.metrics.PrometheusCollector` uses it).

Topics are per process: give every worker a backplane (``backplane=`` a
:class:`~bunws.backplane.Backplane`, or a zero-argument factory returning one,
called in each worker) so a publish reaches the subscribers of every worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import select
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

__all__ = ["run_workers", "worker_id", "cluster_stats", "STATS_INTERVAL"]

logger = logging.getLogger("bunws.workers")

RESTART_DELAY = 0.1
RESTART_DELAY_MAX = 10.0
# A worker that ran this long before dying restarts after RESTART_DELAY again.
STABLE_AFTER = 30.0
# Seconds between two stats snapshots a worker writes for the others to read.
STATS_INTERVAL = 1.0
STATS_DIR_ENV = "BUNWS_STATS_DIR"


def worker_id() -> int | None:
    """This worker's index (0..N-1), or ``None`` outside ``run(workers=N)``."""
    value = os.environ.get("BUNWS_WORKER_ID")
    return int(value) if value is not None else None


def cluster_stats(server: Any) -> dict[str, Any]:
    """``server.stats()`` summed over every worker of ``run(workers=N)``.

    This worker's part is fresh; the others' are their last snapshot (at most
    ``STATS_INTERVAL`` seconds old). Counters, gauges and the dicts are summed,
    ``loop_lag_ms`` is the worst, and ``workers`` says how many took part. Outside
    ``run(workers=N)`` it is ``server.stats()`` itself.
    """
    from .stats import combine

    own = server.stats()
    directory, index = os.environ.get(STATS_DIR_ENV), worker_id()
    if directory is None or index is None:
        return own
    snapshots = [own]
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    for name in sorted(names):
        if not name.endswith(".json") or name == f"{index}.json":
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                snap = json.load(f)
        except (OSError, ValueError):
            continue  # a worker that is restarting, or a file being replaced
        if _well_formed(snap):
            snapshots.append(snap)
    return combine(snapshots)


def _well_formed(snap: Any) -> bool:
    """A snapshot ``combine`` can sum: numbers, or dicts of numbers (a bool counts
    as one: the backplane's ``connected``)."""
    if not isinstance(snap, dict):
        return False
    for value in snap.values():
        if isinstance(value, dict):
            if not all(isinstance(v, (int, float)) for v in value.values()):
                return False
        elif not isinstance(value, (int, float)):
            return False
    return True


def _write_stats(server: Any, directory: str, index: int) -> None:
    """This worker's snapshot, replaced atomically (readers never see half a file)."""
    snap = server.stats()
    snap["worker"] = index
    path = os.path.join(directory, f"{index}.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(snap, f)
    os.replace(tmp, path)


async def _stats_writer(server: Any, directory: str, index: int) -> None:
    while True:
        try:
            _write_stats(server, directory, index)
        except OSError as exc:  # the supervisor removed the directory (stopping)
            logger.debug("bunws: worker %d cannot write its stats: %s", index, exc)
        await asyncio.sleep(STATS_INTERVAL)


class _Worker:
    __slots__ = ("index", "pid", "started", "ready_fd", "ready", "delay", "restart_at")

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 0
        self.started = 0.0
        self.ready_fd = -1
        self.ready = False
        self.delay = RESTART_DELAY
        self.restart_at: float | None = None


def run_workers(
    fetch: Callable[..., Any],
    websocket: Any,
    *,
    workers: int,
    uvloop: bool | None = None,
    on_start: Callable[[Any], Any] | None = None,
    socket_sharing: str = "auto",
    startup_timeout: float = 30.0,
    **options: Any,
) -> None:
    """Supervise ``workers`` processes serving the app until SIGINT/SIGTERM.

    Args:
        workers: number of processes (≥ 1).
        socket_sharing: ``"reuseport"`` (one ``SO_REUSEPORT`` socket per worker),
            ``"inherit"`` (one socket, inherited) or ``"auto"`` (reuseport when the
            platform has it).
        startup_timeout: seconds for the first generation of workers to listen.
        options: ``serve()``'s options. ``backplane`` may be a factory.

    Raises:
        RuntimeError: a worker of the first generation failed to start (a bad
            option, a port in use): nothing is restarted then.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if socket_sharing not in ("auto", "reuseport", "inherit"):
        raise ValueError(f"socket_sharing must be 'auto', 'reuseport' or 'inherit', got {socket_sharing!r}")
    if not hasattr(os, "fork"):
        raise RuntimeError("run(workers=N) needs os.fork (POSIX)")
    has_reuseport = hasattr(socket, "SO_REUSEPORT")
    if socket_sharing == "auto":
        socket_sharing = "reuseport" if has_reuseport else "inherit"
    elif socket_sharing == "reuseport" and not has_reuseport:
        raise RuntimeError("SO_REUSEPORT is not available here; use socket_sharing='inherit'")
    if options.get("sock") is not None:
        socket_sharing = "inherit"
    hostname = options.get("hostname", "127.0.0.1")
    port = options.get("port", 3000)

    # The supervisor's own socket: for "inherit" the listener itself; for
    # "reuseport" with port 0 a bound (not listening) member of the reuseport
    # group that fixes the port every worker binds to.
    held: socket.socket | None = None
    if socket_sharing == "inherit":
        held = options.pop("sock", None) or _listener(hostname, port, options.get("backlog", 1024))
        options["sock"] = held
    else:
        options["reuse_port"] = True
        if port == 0:
            held = _bound(hostname, 0, reuseport=True)
            options["port"] = held.getsockname()[1]
    options["hostname"] = hostname

    sup = _Supervisor(fetch, websocket, workers, uvloop, on_start, options, held)
    stats_dir = tempfile.mkdtemp(prefix="bunws-stats-")
    previous = os.environ.get(STATS_DIR_ENV)
    os.environ[STATS_DIR_ENV] = stats_dir  # the workers inherit it through fork
    try:
        sup.run(startup_timeout)
    finally:
        if held is not None:
            held.close()
        if previous is None:
            os.environ.pop(STATS_DIR_ENV, None)
        else:
            os.environ[STATS_DIR_ENV] = previous
        shutil.rmtree(stats_dir, ignore_errors=True)


def _bound(hostname: str, port: int, reuseport: bool) -> socket.socket:
    family, type_, proto, _, addr = socket.getaddrinfo(
        hostname, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def _listener(hostname: str, port: int, backlog: int) -> socket.socket:
    sock = _bound(hostname, port, reuseport=False)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class _Supervisor:
    def __init__(
        self,
        fetch: Callable[..., Any],
        websocket: Any,
        count: int,
        uvloop: bool | None,
        on_start: Callable[[Any], Any] | None,
        options: dict[str, Any],
        held: socket.socket | None,
    ) -> None:
        self.fetch = fetch
        self.websocket = websocket
        self.uvloop = uvloop
        self.on_start = on_start
        self.options = options
        self.held = held
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False
        self.signals = 0
        self.pid = os.getpid()
        self.close_timeout = float(options.get("close_timeout", 10.0))

    # ------------------------------------------------------------------ supervisor
    def run(self, startup_timeout: float) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self.wake_r, self.wake_w = wake_r, wake_w
        old_wakeup = signal.set_wakeup_fd(wake_w)
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select() through the fd
        try:
            for w in self.workers:
                self._spawn(w)
            self._wait_ready(startup_timeout)
            logger.info(
                "bunws: %d workers serving on %s:%s (%s)",
                len(self.workers),
                self.options["hostname"],
                self.options.get("port"),
                "inherited socket" if self.held is not None and "sock" in self.options else "SO_REUSEPORT",
            )
            self._loop()
        finally:
            self._shutdown()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old.items():
                signal.signal(s, h)
            os.close(wake_r)
            os.close(wake_w)

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if not self.stopping:
            self.stopping = True
            for w in self.workers:
                if w.pid:
                    _kill(w.pid, signal.SIGTERM)
        elif self.signals >= 2:
            for w in self.workers:
                if w.pid:
                    _kill(w.pid, signal.SIGKILL)

    def _wait(self, timeout: float) -> None:
        fds = [self.wake_r] + [w.ready_fd for w in self.workers if w.ready_fd >= 0]
        try:
            readable, _, _ = select.select(fds, [], [], max(0.0, timeout))
        except InterruptedError:  # pragma: no cover - PEP 475 retries select
            return
        for fd in readable:
            if fd == self.wake_r:
                try:
                    while os.read(fd, 512):
                        pass
                except BlockingIOError:
                    pass
                continue
            for w in self.workers:
                if w.ready_fd == fd:
                    try:
                        data = os.read(fd, 16)
                    except OSError:
                        data = b""
                    if data:
                        w.ready = True
                    os.close(fd)
                    w.ready_fd = -1

    def _reap(self) -> list[tuple[_Worker, int | None]]:
        """The workers that exited, with their wait statuses.

        Waits for each worker's pid, never for any child (pid -1): the application
        may have children of its own whose exit statuses belong to it.
        """
        dead = []
        for w in self.workers:
            if not w.pid:
                continue
            try:
                pid, status = os.waitpid(w.pid, os.WNOHANG)
            except ChildProcessError:  # someone else reaped it: the status is lost
                pid, status = w.pid, None
            if pid == 0:
                continue
            w.pid = 0
            if w.ready_fd >= 0:
                os.close(w.ready_fd)
                w.ready_fd = -1
            dead.append((w, status))
        return dead

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(w.ready for w in self.workers):
            if self.stopping:
                return
            for w, status in self._reap():
                if not w.ready:
                    raise RuntimeError(f"bunws worker {w.index} failed to start ({_describe(status)})")
            now = time.monotonic()
            if now >= deadline:
                raise RuntimeError(f"bunws workers did not start listening within {timeout} s")
            self._wait(min(0.5, deadline - now))

    def _loop(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            for w, status in self._reap():
                uptime = now - w.started
                # The first restart is quick; a worker that keeps dying young waits
                # twice as long each time (capped); one that ran long starts over.
                if uptime >= STABLE_AFTER:
                    w.delay = RESTART_DELAY
                w.restart_at = now + w.delay
                delay, w.delay = w.delay, min(w.delay * 2, RESTART_DELAY_MAX)
                logger.warning(
                    "bunws: worker %d died (%s) after %.1f s; restarting in %.1f s",
                    w.index, _describe(status), uptime, delay,
                )
            next_at = None
            for w in self.workers:
                if w.pid == 0 and w.restart_at is not None:
                    if w.restart_at <= now:
                        self._spawn(w)
                    elif next_at is None or w.restart_at < next_at:
                        next_at = w.restart_at
            if self.stopping:
                break
            self._wait(1.0 if next_at is None else min(1.0, next_at - now))

    def _shutdown(self) -> None:
        for w in self.workers:
            if w.pid:
                _kill(w.pid, signal.SIGTERM)
        # Workers wait up to close_timeout for their clients' Close answers.
        deadline = time.monotonic() + self.close_timeout + 5.0
        while any(w.pid for w in self.workers):
            for w, status in self._reap():
                if status != 0:
                    logger.warning("bunws: worker %d exited (%s)", w.index, _describe(status))
            if not any(w.pid for w in self.workers):
                break
            if time.monotonic() >= deadline:
                for w in self.workers:
                    if w.pid:
                        logger.warning("bunws: worker %d did not stop in time; killing it", w.index)
                        _kill(w.pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
            self._wait(0.1)
        for w in self.workers:
            if w.ready_fd >= 0:
                os.close(w.ready_fd)
                w.ready_fd = -1

    def _spawn(self, w: _Worker) -> None:
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(ready_r)
                code = self._worker_main(w.index, ready_w)
            except BaseException:
                try:
                    logger.exception("bunws: worker %d crashed", w.index)
                except BaseException:
                    pass
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        os.close(ready_w)
        w.pid = pid
        w.started = time.monotonic()
        w.ready = False
        w.ready_fd = ready_r
        w.restart_at = None

    # ------------------------------------------------------------------ worker
    def _worker_main(self, index: int, ready_w: int) -> int:
        signal.set_wakeup_fd(-1)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        os.close(self.wake_r)
        os.close(self.wake_w)
        for other in self.workers:
            if other.ready_fd >= 0:
                os.close(other.ready_fd)
        _die_with_parent(self.pid)
        os.environ["BUNWS_WORKER_ID"] = str(index)
        options = dict(self.options)
        if self.held is not None and options.get("sock") is None:
            self.held.close()  # the port-reservation socket; the worker binds its own
        backplane = options.get("backplane")
        if backplane is not None and not hasattr(backplane, "start") and callable(backplane):
            options["backplane"] = backplane()

        from .server import new_event_loop, serve

        loop = new_event_loop(self.uvloop)
        asyncio.set_event_loop(loop)

        async def main() -> None:
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            server = await serve(self.fetch, self.websocket, **options)
            directory = os.environ.get(STATS_DIR_ENV)
            writer = None
            if directory is not None:
                writer = loop.create_task(_stats_writer(server, directory, index))
            try:
                if self.on_start is not None:
                    result = self.on_start(server)
                    if asyncio.iscoroutine(result):
                        await result
                os.write(ready_w, b"R")
                os.close(ready_w)
                await stop.wait()
            finally:
                if writer is not None:
                    writer.cancel()
                await server.stop()

        try:
            loop.run_until_complete(main())
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
        return 0


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _describe(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = str(os.WTERMSIG(status))
        return f"killed by {name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM this worker if the supervisor dies (no orphaned workers)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except Exception:  # pragma: no cover - best effort
            pass
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(1)

