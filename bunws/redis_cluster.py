"""Redis Cluster facts the backplane routes by: key slots, redirections, topology.

Pure functions over bytes and parsed replies, no I/O: ``key_slot`` (CRC16 with
hash tags, 16384 slots), ``parse_redirect`` (``MOVED``/``ASK`` errors) and
``parse_shards``/``parse_slots`` (``CLUSTER SHARDS`` on Redis 7+, ``CLUSTER SLOTS``
before), which give a :class:`Topology`. Replies come from the network, so every
parser checks shapes and raises :class:`ClusterReplyError` instead of crashing on a
reply it does not understand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import WebSocketError

__all__ = [
    "SLOTS",
    "ClusterReplyError",
    "Redirect",
    "Shard",
    "Topology",
    "crc16",
    "key_slot",
    "parse_redirect",
    "parse_shards",
    "parse_slots",
]

SLOTS = 16384


class ClusterReplyError(WebSocketError):
    """A Redis Cluster reply (topology, redirection) that is not what the protocol says."""


def _crc16_table() -> tuple[int, ...]:
    # CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, no reflection.
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM) of ``data``, the checksum Redis Cluster hashes keys with."""
    crc = 0
    table = _TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: bytes) -> int:
    """The cluster slot (0..16383) of a key or sharded channel.

    A hash tag, the part between the first ``{`` and the next ``}`` when it is not
    empty, is hashed instead of the whole key, so ``{room}:a`` and ``{room}:b``
    share a slot (and a shard).
    """
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % SLOTS


@dataclass(frozen=True)
class Redirect:
    """A ``-MOVED`` or ``-ASK`` error: ``slot`` is served at ``host:port``."""

    kind: str  # "MOVED" or "ASK"
    slot: int
    host: str
    port: int


def parse_redirect(message: str | bytes) -> Redirect | None:
    """The redirection in an error message (``"MOVED 3999 127.0.0.1:6381"``), or
    ``None`` when it is another error. A malformed redirection raises
    :class:`ClusterReplyError`."""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    words = message.split()
    if not words or words[0] not in ("MOVED", "ASK"):
        return None
    if len(words) != 3:
        raise ClusterReplyError(f"malformed {words[0]} redirection: {message[:100]!r}")
    host, sep, port = words[2].rpartition(":")
    if not (words[1].isdigit() and sep and port.isdigit()):
        raise ClusterReplyError(f"malformed {words[0]} redirection: {message[:100]!r}")
    slot, port_n = int(words[1]), int(port)
    if slot >= SLOTS or not 0 < port_n < 65536:
        raise ClusterReplyError(f"{words[0]} redirection out of range: {message[:100]!r}")
    return Redirect(words[0], slot, host.strip("[]"), port_n)


Address = tuple[str, int]


@dataclass
class Shard:
    """One shard: its slot ranges (inclusive), its master and its online replicas."""

    ranges: list[tuple[int, int]]
    master: Address
    replicas: list[Address] = field(default_factory=list)


@dataclass
class Topology:
    """Which node serves each slot, as one node of the cluster reported it."""

    shards: list[Shard]
    _owner: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        owner = [-1] * SLOTS
        for index, shard in enumerate(self.shards):
            for start, end in shard.ranges:
                for slot in range(start, end + 1):
                    owner[slot] = index
        self._owner = owner

    def shard_of(self, slot: int) -> Shard | None:
        """The shard serving ``slot``, or ``None`` while no node claims it."""
        index = self._owner[slot]
        return None if index < 0 else self.shards[index]

    @property
    def masters(self) -> list[Address]:
        """Every shard's master, in the order the cluster listed them."""
        return [s.master for s in self.shards]

    @property
    def addresses(self) -> list[Address]:
        """Every node, masters first: where to ask for the topology next time."""
        seen = dict.fromkeys(self.masters)
        for shard in self.shards:
            seen.update(dict.fromkeys(shard.replicas))
        return list(seen)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise ClusterReplyError(f"expected a string in a cluster reply, got {type(value).__name__}")


def _port(value: object) -> int:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        port = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ClusterReplyError(f"bad port in a cluster reply: {value!r}") from None
    if not 0 < port < 65536:
        raise ClusterReplyError(f"port out of range in a cluster reply: {port}")
    return port


def _slot_range(start: object, end: object) -> tuple[int, int]:
    if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start <= end < SLOTS:
        raise ClusterReplyError(f"bad slot range in a cluster reply: {start!r}-{end!r}")
    return start, end


def _host(announced: str, fallback: str) -> str:
    # A node that does not know its own address announces "" (or "?"): it is
    # reachable where we reached the node that answered.
    return fallback if announced in ("", "?") else announced


def _pairs(flat: object) -> dict[str, object]:
    if not isinstance(flat, list) or len(flat) % 2:
        raise ClusterReplyError("expected a flat list of name/value pairs in CLUSTER SHARDS")
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def parse_shards(reply: object, fallback_host: str) -> Topology:
    """A :class:`Topology` from a RESP2 ``CLUSTER SHARDS`` reply (Redis 7+).

    A master that is not online still owns its slots (the cluster has not failed
    it over yet); replicas the cluster marked failed are left out.
    """
    if not isinstance(reply, list):
        raise ClusterReplyError("CLUSTER SHARDS did not answer a list")
    shards = []
    for entry in reply:
        fields = _pairs(entry)
        slots = fields.get("slots")
        if not isinstance(slots, list) or len(slots) % 2:
            raise ClusterReplyError("CLUSTER SHARDS: bad slots field")
        ranges = [_slot_range(slots[i], slots[i + 1]) for i in range(0, len(slots), 2)]
        nodes = fields.get("nodes")
        if not isinstance(nodes, list):
            raise ClusterReplyError("CLUSTER SHARDS: bad nodes field")
        master: Address | None = None
        replicas: list[Address] = []
        for node in nodes:
            info = _pairs(node)
            if "port" not in info and "tls-port" not in info:
                raise ClusterReplyError("CLUSTER SHARDS: a node without a port")
            host = _host(_text(info.get("endpoint", info.get("ip", b""))), fallback_host)
            address = (host, _port(info.get("port", info.get("tls-port"))))
            role = _text(info.get("role", b""))
            if role == "master":
                master = address
            elif _text(info.get("health", b"online")) != "fail":
                # "loading" also covers a synced replica of a shard that has never
                # been written to (its replication offset is still 0).
                replicas.append(address)
        if ranges and master is not None:
            shards.append(Shard(ranges, master, replicas))
    return Topology(shards)


def parse_slots(reply: object, fallback_host: str) -> Topology:
    """A :class:`Topology` from a ``CLUSTER SLOTS`` reply (servers before Redis 7)."""
    if not isinstance(reply, list):
        raise ClusterReplyError("CLUSTER SLOTS did not answer a list")
    by_master: dict[Address, Shard] = {}
    for entry in reply:
        if not isinstance(entry, list) or len(entry) < 3:
            raise ClusterReplyError("CLUSTER SLOTS: bad entry")
        slot_range = _slot_range(entry[0], entry[1])
        nodes = []
        for node in entry[2:]:
            if not isinstance(node, list) or len(node) < 2:
                raise ClusterReplyError("CLUSTER SLOTS: bad node")
            nodes.append((_host(_text(node[0]), fallback_host), _port(node[1])))
        shard = by_master.setdefault(nodes[0], Shard([], nodes[0], nodes[1:]))
        shard.ranges.append(slot_range)
    return Topology(list(by_master.values()))
