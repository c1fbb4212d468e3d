"""A private ``redis-server`` on a free loopback port, for the tests and bench/.

``find_or_install()`` looks for ``redis-server`` on PATH and otherwise installs
Debian's package (``apt-get install -y redis-server``, with ``apt-get update`` on a
first failure); it returns ``None`` with the reason when that is impossible.
``RedisServer`` runs one instance with no persistence in a temp dir and can be
killed and restarted on the same port (the reconnect tests).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

_install_error: str | None = None


def find_or_install() -> tuple[str | None, str]:
    """``(path to redis-server, "")`` or ``(None, why not)``."""
    global _install_error
    path = shutil.which("redis-server")
    if path:
        return path, ""
    if _install_error is not None:
        return None, _install_error
    apt = shutil.which("apt-get")
    if apt is None:
        _install_error = "redis-server is not on PATH and apt-get is not available"
        return None, _install_error
    if os.geteuid() != 0:
        _install_error = "redis-server is not on PATH and installing it needs root (apt-get install redis-server)"
        return None, _install_error
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = [apt, "install", "-y", "--no-install-recommends", "redis-server"]
    log = ""
    for attempt in range(2):
        if attempt:
            r = subprocess.run([apt, "update"], env=env, capture_output=True, text=True, timeout=300)
            log += r.stdout[-500:] + r.stderr[-500:]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        log += r.stdout[-500:] + r.stderr[-500:]
        path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
        if r.returncode == 0 and path:
            # Debian's postinst may start a system instance on 6379; ours is private.
            return path, ""
    _install_error = f"could not install redis-server with apt-get: {log.strip()[-400:]}"
    return None, _install_error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def version(path: str) -> tuple[int, ...]:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    for word in out.split():
        if word.startswith("v="):
            return tuple(int(x) for x in word[2:].split(".") if x.isdigit())
    return (0,)


class RedisServer:
    """One private redis-server; ``url`` stays valid across ``kill()``/``start()``."""

    def __init__(self, path: str, port: int | None = None) -> None:
        self.path = path
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="bunws-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [
                self.path, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if self.ping():
                return
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING in time")

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def ping(self) -> bool:
        try:
            with self.client() as r:
                return bool(r.ping())
        except Exception:
            return False

    def numsub(self, channel: str, sharded: bool = False) -> int:
        """Subscribers of ``channel`` (``PUBSUB NUMSUB`` / ``SHARDNUMSUB``)."""
        with self.client() as r:
            reply = r.execute_command("PUBSUB", "SHARDNUMSUB" if sharded else "NUMSUB", channel)
        return int(reply[1])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
