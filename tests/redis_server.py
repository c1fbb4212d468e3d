"""A private ``redis-server`` on a free loopback port, for the tests and bench/.

``find_or_install()`` looks for ``redis-server`` on PATH and otherwise installs
Debian's package (``apt-get install -y redis-server``, with ``apt-get update`` on a
first failure); it returns ``None`` with the reason when that is impossible.
``RedisServer`` runs one instance with no persistence in a temp dir and can be
killed and restarted on the same port (the reconnect tests). ``RedisCluster``
runs a cluster of such servers (``--cluster-enabled yes``, built with
``redis-cli --cluster create``) on ports below 55535, whose bus ports (+10000) are
free too.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import random
import tempfile
import time
from collections.abc import Iterator

from installs import one_at_a_time

_install_error: str | None = None


def find_or_install() -> tuple[str | None, str]:
    """``(path to redis-server, "")`` or ``(None, why not)``."""
    path = shutil.which("redis-server")
    if path:
        return path, ""
    if _install_error is not None:
        return None, _install_error
    with one_at_a_time():
        return _install()


def _install() -> tuple[str | None, str]:
    global _install_error
    path = shutil.which("redis-server")
    if path:  # another worker installed it while we waited for the lock
        return path, ""
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


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(count: int) -> list[int]:
    """``count`` free ports below 55535 whose cluster bus ports (+10000) are free."""
    rng = random.Random()
    ports: list[int] = []
    for _ in range(2000):
        if len(ports) == count:
            return ports
        port = rng.randrange(20000, 55535)
        if port not in ports and _port_free(port) and _port_free(port + 10000):
            ports.append(port)
    raise RuntimeError("no free port pairs for a Redis Cluster")


class RedisServer:
    """One private redis-server; ``url`` stays valid across ``kill()``/``start()``."""

    def __init__(self, path: str, port: int | None = None, extra: list[str] | None = None) -> None:
        self.path = path
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="bunws-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra = extra or []

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [
                self.path, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
                *self.extra,
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


def running_redis() -> Iterator[RedisServer]:
    """Body of a fixture: one started redis-server (installed if need be), or a skip."""
    import pytest

    path, why = find_or_install()
    if path is None:
        pytest.skip(f"redis-server unavailable: {why}")
    server = RedisServer(path)
    server.start()
    yield server
    server.stop()


def _as_dict(entry: object) -> dict[str, object]:
    """A CLUSTER SHARDS entry as a dict (redis-py parses it into one; raw is flat)."""
    if isinstance(entry, dict):
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    return {entry[i].decode(): entry[i + 1] for i in range(0, len(entry), 2)}  # type: ignore[index]


class RedisCluster:
    """``masters`` masters with ``replicas`` replicas each, on loopback.

    ``cluster-node-timeout`` is short (``node_timeout_ms``) so a killed master is
    failed over in about a second. ``nodes`` lists every server; which are masters
    changes with failovers, so ask ``master_ports()``.
    """

    def __init__(self, path: str, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        self.path = path
        self.cli = os.path.join(os.path.dirname(path), "redis-cli")
        if not os.path.exists(self.cli):
            self.cli = shutil.which("redis-cli") or "redis-cli"
        self.masters = masters
        self.replicas = replicas
        ports = free_cluster_ports(masters * (1 + replicas))
        self.nodes = [
            RedisServer(path, port, [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-require-full-coverage", "no", "--cluster-allow-reads-when-down", "yes",
                "--repl-diskless-sync-delay", "0",
            ])
            for port in ports
        ]
        self.urls = [n.url for n in self.nodes]

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        r = subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {r.stdout[-400:]} {r.stderr[-400:]}")
        self.wait_healthy(timeout)

    def call(self, port: int, *args: object) -> object:
        import redis

        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=5) as r:
            return r.execute_command(*args)

    def shards(self, port: int | None = None) -> list[dict[str, object]]:
        """``[{"slots": [...], "master": port, "replicas": [ports], "master_id": id}]``."""
        reply = self.call(port or self.live_ports()[0], "CLUSTER", "SHARDS")
        out = []
        for entry in reply:  # type: ignore[union-attr]
            fields = _as_dict(entry)
            shard: dict[str, object] = {"slots": fields["slots"], "replicas": [], "replicas_online": 0}
            for node in fields["nodes"]:  # type: ignore[union-attr]
                info = _as_dict(node)
                if info["role"] == b"master":
                    shard["master"] = int(info["port"])  # type: ignore[call-overload]
                    shard["master_id"] = info["id"].decode()  # type: ignore[union-attr]
                    shard["health"] = info["health"].decode()  # type: ignore[union-attr]
                else:
                    shard["replicas"].append(int(info["port"]))  # type: ignore[union-attr, call-overload]
                    shard["replicas_online"] += info["health"] == b"online"  # type: ignore[operator]
            out.append(shard)
        return out

    def live_ports(self) -> list[int]:
        return [n.port for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def master_of_slot(self, slot: int, port: int | None = None) -> int:
        for shard in self.shards(port):
            slots = shard["slots"]
            for i in range(0, len(slots), 2):  # type: ignore[arg-type]
                if slots[i] <= slot <= slots[i + 1]:  # type: ignore[index]
                    return shard["master"]  # type: ignore[return-value]
        raise LookupError(f"slot {slot} is not served")

    def node_id(self, port: int) -> str:
        return self.call(port, "CLUSTER", "MYID").decode()  # type: ignore[union-attr]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and sees one master per shard
        with all its replicas online, and every replica is in sync with its master."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ok = True
                for port in self.live_ports():
                    info = self.call(port, "CLUSTER", "INFO").decode()  # type: ignore[union-attr]
                    if "cluster_state:ok" not in info:
                        ok = False
                        break
                    masters = [s for s in self.shards(port) if s.get("health") == "online" and s["slots"]]
                    # A restarted old master rejoins as a replica only after gossip:
                    # until then its shard lacks the replica a failover test needs.
                    if len(masters) != self.masters or any(
                        s["replicas_online"] < self.replicas for s in masters  # type: ignore[operator]
                    ):
                        ok = False
                        break
                    role = self.call(port, "ROLE")
                    if role[0] == b"slave" and role[3] != b"connected":  # type: ignore[index]
                        ok = False
                        break
                if ok:
                    return
            except Exception:
                pass
            time.sleep(0.05)
        raise RuntimeError("the Redis Cluster did not become healthy in time")

    def move_slot(self, slot: int, to_port: int) -> None:
        """Migrate ``slot`` to the master at ``to_port`` (SETSLOT IMPORTING/MIGRATING,
        MIGRATE of its keys, SETSLOT NODE on both sides), as redis-cli reshard does."""
        src = self.master_of_slot(slot, to_port)
        if src == to_port:
            return
        src_id, dst_id = self.node_id(src), self.node_id(to_port)
        self.call(to_port, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        self.call(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        while True:
            keys = self.call(src, "CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            self.call(src, "MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)  # type: ignore[misc]
        self.call(to_port, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        self.call(src, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for port in self.live_ports():
            if port not in (src, to_port):
                try:
                    self.call(port, "CLUSTER", "SETSLOT", slot, "NODE", dst_id)
                except Exception:
                    pass  # replicas refuse; they learn it from their master

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
