"""permessage-deflate negotiation (RFC 7692 §7) with Bun's compression modes.

Three pieces:

* :func:`parse_extensions` tokenizes a ``Sec-WebSocket-Extensions`` header
  (RFC 7230 §3.2.6 tokens and quoted-strings) in one linear pass, without regex.
* :class:`DeflateConfig` validates the ``per_message_deflate`` option exactly like
  Bun's ``perMessageDeflate``.
* :func:`negotiate` picks an offer and answers with the header Bun sends for
  that mode (docs/bun-behaviour.md §10; measured with raw handshakes against Bun
  1.4.4 and 1.4.5), returning an :class:`Agreement` that builds the codec objects.

Answers of a shared compressor (``per_message_deflate=True``), the same as Bun's,
whatever client parameters come with the offer:

* ``permessage-deflate`` or ``…; server_no_context_takeover`` ->
  ``permessage-deflate; client_no_context_takeover; server_no_context_takeover``
* ``…; server_max_window_bits=15``, with or without ``server_no_context_takeover``
  -> the same plus ``; server_max_window_bits=15``
* ``…; server_max_window_bits=8`` … ``14`` -> declined (no extension; the
  handshake goes on, or the next offer is tried)

Decisions (documented differences from Bun are marked "Bun:"):

* Malformed offers are *dropped*: :func:`parse_extensions` returns only the
  well-formed elements of the list, so a broken element never hides a good one
  and never raises. At most 16 list elements are looked at; an element with more
  than 16 parameters counts as malformed.
* An offer with an unknown, duplicated or invalid parameter (window bits other
  than the strings ``"8"`` … ``"15"``, a value on a ``*_no_context_takeover``,
  a bare ``server_max_window_bits``) is declined, and the next
  ``permessage-deflate`` offer is tried (RFC 7692 §5: the server picks an
  acceptable offer). Bun 1.4.5 does the same.
* A quoted value is unquoted before validation, as RFC 7692 §7.1 requires
  (``client_max_window_bits="10"`` equals ``client_max_window_bits=10``).
* Extension and parameter names are matched case-insensitively, and spaces
  around ``=`` are allowed. Bun: declines ``PERMESSAGE-DEFLATE``,
  ``Server_Max_Window_Bits=15`` and ``server_max_window_bits = 15``.
* ``server_max_window_bits=N``: accepting it means answering it with N or less
  (RFC 7692 §7.1.2.1). The shared compressor's window is fixed at 15 bits, so it
  accepts N = 15 only; a smaller N is declined, as Bun does, because a stateless
  15-bit stream may reach back farther than the client keeps. A disabled
  compressor answers like the shared one. A dedicated compressor answers
  ``min(N, its window)``.
* ``server_no_context_takeover`` is always honoured: the shared compressor is
  stateless anyway, and a dedicated one then becomes the shared stateless one
  (15 bits, memLevel 8), as in Bun.
* An offer with both ``server_no_context_takeover`` and ``server_max_window_bits=N``
  is answered, for a dedicated compressor, with both parameters, ``min(N, its
  window)``, and compressed by a stateless deflater of that window. Bun: the
  offer switches every compressor to the shared 15-bit one, so Bun declines
  N < 15 and answers 15 even for a smaller dedicated size (``"3KB"`` … ``"128KB"``).
* Client side: a shared decompressor always answers ``client_no_context_takeover``
  and never ``client_max_window_bits`` (a stateless 15-bit inflater reads any
  client window); a dedicated one echoes an offered ``client_no_context_takeover``
  and answers ``client_max_window_bits=N`` for an offered N < 15. Both as in Bun.
* Parameters are answered in Bun's order: the client's, then
  ``server_no_context_takeover``, then ``server_max_window_bits``.
* Window bits 8 are answered as 8 but run as 9 in zlib (zlib cannot produce
  raw 8-bit-window streams; see ``bunws._deflate``).
* ``decompress: "3KB"`` … ``"256KB"``: Bun maps these to *compressor* constants
  (a quirk, PR #41637). bunws treats them as ``"dedicated"`` (15-bit inflate
  window with client context takeover), so the answer for ``{decompress: "3KB"}``
  is the ``dedicated`` decompressor's answer, not Bun's.
* ``{"compress": ..., "decompress": ..., "level": N}``: ``level`` (zlib's -1..9,
  default 1) is a bunws addition; Bun compresses at zlib's default level (6). Any
  other key raises ``InvalidArgument`` (Bun ignores unknown keys; a typo should not
  silently turn compression off).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ._deflate import Deflater, Inflater, stateless_deflater
from .errors import InvalidArgument, InvalidType

__all__ = [
    "MAX_OFFERS",
    "MAX_PARAMS",
    "COMPRESS_MODES",
    "COMPRESSION_LEVEL",
    "DECOMPRESS_MODES",
    "Agreement",
    "DeflateConfig",
    "negotiate",
    "parse_extensions",
    "shared_deflater",
]

MAX_OFFERS = 16
MAX_PARAMS = 16

# Bun's dedicated compressor sizes -> (windowBits, memLevel) (uWS PerMessageDeflate.h).
_SIZES: dict[str, tuple[int, int]] = {
    "3KB": (9, 1),
    "4KB": (9, 2),
    "8KB": (10, 3),
    "16KB": (11, 4),
    "32KB": (12, 5),
    "64KB": (13, 6),
    "128KB": (14, 7),
    "256KB": (15, 8),
    "dedicated": (15, 8),
}
COMPRESS_MODES = ("disable", "shared", *_SIZES)

# zlib level for outbound messages (``per_message_deflate={"level": N}``). Bun (uWS)
# uses zlib's default, 6; bunws defaults to 1: on JSON-like text it is about 4x
# faster for frames about 20 % larger (bench/RESULTS.md, "Echo with permessage-deflate"),
# and CPU, not bandwidth, is what limits a fan-out server.
COMPRESSION_LEVEL = 1
DECOMPRESS_MODES = COMPRESS_MODES

# RFC 7230 §3.2.6 tchar.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OWS = " \t"
_WINDOW_VALUES = {str(n): n for n in range(8, 16)}

Offer = tuple[str, list[tuple[str, "str | None"]]]


# -- tokenizer ---------------------------------------------------------------


def _skip_ows(s: str, i: int, n: int) -> int:
    while i < n and s[i] in _OWS:
        i += 1
    return i


def _token(s: str, i: int, n: int) -> int:
    """Return the end of the token starting at ``i`` (``i`` itself if none)."""
    while i < n and s[i] in _TCHAR:
        i += 1
    return i


def _quoted(s: str, i: int, n: int) -> tuple[str, int] | None:
    """Parse a quoted-string starting at the ``"`` at ``i``: (value, end) or None."""
    out: list[str] = []
    i += 1
    while i < n:
        c = s[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            i += 1
            if i >= n:
                return None
            c = s[i]
        if c < " " and c != "\t" or c == "\x7f":
            return None
        out.append(c)
        i += 1
    return None


def _skip_element(s: str, i: int, n: int) -> int:
    """Skip to the comma ending the current list element, honouring quotes."""
    while i < n:
        c = s[i]
        if c == ",":
            return i
        if c == '"':
            q = _quoted(s, i, n)
            if q is None:
                return n
            i = q[1]
            continue
        i += 1
    return n


def _element(s: str, i: int, n: int) -> tuple[Offer | None, int]:
    """Parse one extension at ``i``; return (offer or None if malformed, end)."""
    end = _token(s, i, n)
    if end == i:
        return None, i
    name = s[i:end].lower()
    params: list[tuple[str, str | None]] = []
    i = end
    while True:
        i = _skip_ows(s, i, n)
        if i >= n or s[i] == ",":
            return (name, params), i
        if s[i] != ";":
            return None, i
        i = _skip_ows(s, i + 1, n)
        end = _token(s, i, n)
        if end == i:
            return None, i
        pname = s[i:end].lower()
        i = _skip_ows(s, end, n)
        value: str | None = None
        if i < n and s[i] == "=":
            i = _skip_ows(s, i + 1, n)
            if i < n and s[i] == '"':
                q = _quoted(s, i, n)
                if q is None:
                    return None, n
                value, i = q
            else:
                end = _token(s, i, n)
                if end == i:
                    return None, i
                value = s[i:end]
                i = end
        if len(params) == MAX_PARAMS:
            return None, i
        params.append((pname, value))


def parse_extensions(header_value: str | None) -> list[Offer]:
    """Tokenize a ``Sec-WebSocket-Extensions`` value (RFC 6455 §9.1, RFC 7230 §7).

    Args:
        header_value: the header value (several headers joined with ``", "``), or
            None.

    Returns:
        The well-formed offers in order, as ``(name, [(param, value|None), ...])``
        with names lower-cased and quoted values unquoted. Malformed elements are
        left out; only the first 16 list elements are considered. Never raises
        on any str input; the work is linear in the length of the header.

    Raises:
        InvalidType: ``header_value`` is not a str or None.
    """
    if header_value is None:
        return []
    if not isinstance(header_value, str):
        raise InvalidType(f"header_value must be a str, got {type(header_value).__name__}")
    s = header_value
    n = len(s)
    i = 0
    seen = 0
    offers: list[Offer] = []
    while i < n and seen < MAX_OFFERS:
        i = _skip_ows(s, i, n)
        if i >= n:
            break
        if s[i] == ",":  # empty list element (RFC 7230 §7)
            i += 1
            continue
        seen += 1
        offer, i = _element(s, i, n)
        if offer is None:
            i = _skip_element(s, i, n)
        else:
            offers.append(offer)
        if i < n:  # at a comma
            i += 1
    return offers


# -- configuration -----------------------------------------------------------


def _mode(key: str, value: object) -> str:
    if value is None or value is False:
        return "disable"
    if value is True:
        return "shared"
    if isinstance(value, str):
        if value in _SIZES or value in ("disable", "shared"):
            return value
        raise InvalidArgument(
            f"per_message_deflate[{key!r}] must be a bool or one of "
            f"{', '.join(map(repr, COMPRESS_MODES))}, got {value!r}"
        )
    raise InvalidType(
        f"per_message_deflate[{key!r}] must be a bool or a mode string, got {type(value).__name__}"
    )


@dataclass(frozen=True)
class DeflateConfig:
    """A validated ``per_message_deflate`` option.

    ``compress`` is ``"disable"``, ``"shared"`` or a dedicated size
    (``"dedicated"`` is kept as given and means ``"256KB"``); ``decompress`` is
    ``"disable"``, ``"shared"`` or a dedicated mode (any size counts as
    ``"dedicated"``, see the module docstring).
    """

    compress: str = "shared"
    decompress: str = "shared"
    level: int = None  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        if self.level is None:
            object.__setattr__(self, "level", COMPRESSION_LEVEL)

    @classmethod
    def from_option(cls, value: object) -> DeflateConfig | None:
        """Validate the ``per_message_deflate`` option of ``serve()``.

        Args:
            value: ``True`` (shared compressor and decompressor), ``False``/``None``
                (off), or a mapping with optional keys ``"compress"`` and
                ``"decompress"``, each a bool, None or a mode string
                (case-sensitive). ``{}`` and all-disabled mappings mean off.

        Returns:
            The config, or None when compression is off.

        Raises:
            InvalidType: a bare string, a number or another wrong type (Bun:
                TypeError "…boolean or an object").
            InvalidArgument: an unknown mode string or an unknown key.
        """
        if value is None or value is False:
            return None
        if value is True:
            return cls("shared", "shared")
        if isinstance(value, Mapping):
            unknown = [k for k in value if k not in ("compress", "decompress", "level")]
            if unknown:
                raise InvalidArgument(
                    "per_message_deflate accepts only the keys 'compress', 'decompress' "
                    f"and 'level', got {unknown[0]!r}"
                )
            compress = _mode("compress", value.get("compress"))
            decompress = _mode("decompress", value.get("decompress"))
            level = value.get("level", COMPRESSION_LEVEL)
            if isinstance(level, bool) or not isinstance(level, int):
                raise InvalidType(
                    f"per_message_deflate['level'] must be an int, got {type(level).__name__}"
                )
            if not -1 <= level <= 9:
                raise InvalidArgument(
                    f"per_message_deflate['level'] must be -1..9 (zlib levels), got {level}"
                )
            if compress == "disable" and decompress == "disable":
                return None
            return cls(compress, decompress, level)
        raise InvalidType(
            "per_message_deflate must be a boolean or an object (a dict with "
            f"'compress'/'decompress'), got {type(value).__name__}"
        )

    @property
    def compress_enabled(self) -> bool:
        """The server may compress (``compress`` is not ``"disable"``)."""
        return self.compress != "disable"

    @property
    def compress_window(self) -> int:
        """Wanted server window: 0 for the shared (or no) compressor."""
        return _SIZES[self.compress][0] if self.compress in _SIZES else 0

    @property
    def compress_mem_level(self) -> int:
        """zlib memLevel of the configured compressor size (8 when shared)."""
        return _SIZES[self.compress][1] if self.compress in _SIZES else 8

    @property
    def inflate_window(self) -> int:
        """Wanted client window: 0 (no context takeover) for shared/disabled."""
        return 15 if self.decompress in _SIZES else 0


# -- negotiation -------------------------------------------------------------

def shared_deflater(
    window_bits: int = 15, mem_level: int = 8, level: int | None = None
) -> Deflater:
    """The module-level stateless compressor for one (window bits, memLevel, level).

    Bun's shared compressor is the 15-bit, memLevel 8 one. Every connection that
    negotiated ``server_no_context_takeover`` with the same parameters gets the same
    object (``_deflate.stateless_deflater`` keeps the one cache), so a publish
    compresses once for all of them; it holds no per-connection state.
    """
    return stateless_deflater(window_bits, mem_level, COMPRESSION_LEVEL if level is None else level)


@dataclass(frozen=True)
class Agreement:
    """The outcome of a successful negotiation.

    Attributes:
        response: the ``Sec-WebSocket-Extensions`` value to answer with.
        server_no_context_takeover: outbound messages are compressed without
            context (the server resets its compressor after each message).
        client_no_context_takeover: the client resets after each message, so
            inbound messages are inflated statelessly.
        server_max_window_bits: the window our compressor uses (8..15).
        client_max_window_bits: the window the client may use (8..15).
        compress_enabled: outbound frames may be compressed at all.
        shared_deflate: outbound frames go through a module-level stateless
            deflater shared by every connection with the same window, so one
            compressed payload serves all of them (compressed-once fan-out).
    """

    response: str
    server_no_context_takeover: bool
    client_no_context_takeover: bool
    server_max_window_bits: int
    client_max_window_bits: int
    compress_enabled: bool
    shared_deflate: bool
    compress_mem_level: int = 8
    config: DeflateConfig = field(default_factory=DeflateConfig)

    def make_deflater(self) -> Deflater | None:
        """The compressor for one connection (None when compression is disabled).

        Shared mode returns the one module-level Deflater every such
        connection uses; it holds no per-connection state.
        """
        if not self.compress_enabled:
            return None
        if self.shared_deflate:
            return shared_deflater(
                self.server_max_window_bits, self.compress_mem_level, self.config.level
            )
        return Deflater(
            self.server_max_window_bits,
            self.compress_mem_level,
            self.config.level,
            no_context_takeover=self.server_no_context_takeover,
        )

    def make_inflater(self) -> Inflater:
        """The decompressor for one connection (always: Bun inflates even with
        ``decompress`` disabled)."""
        if self.client_no_context_takeover:
            return Inflater(15, no_context_takeover=True)
        return Inflater(self.client_max_window_bits, no_context_takeover=False)


def _check_params(params: list[tuple[str, str | None]]) -> dict[str, int | None] | None:
    """Validate a permessage-deflate offer's parameters (RFC 7692 §7.1)."""
    got: dict[str, int | None] = {}
    for name, value in params:
        if name in got:
            return None  # RFC 7692 §7.1: duplicated parameter -> decline
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
            got[name] = None
        elif name == "server_max_window_bits":
            if value is None or value not in _WINDOW_VALUES:
                return None
            got[name] = _WINDOW_VALUES[value]
        elif name == "client_max_window_bits":
            if value is None:
                got[name] = None
            elif value in _WINDOW_VALUES:
                got[name] = _WINDOW_VALUES[value]
            else:
                return None
        else:
            return None
    return got


def _server_side(
    wanted: int, got: dict[str, int | None]
) -> tuple[int, bool, list[str]] | None:
    """Our compressor's side of the answer: (window bits, no context takeover,
    response parameters), or None to decline the offer.

    ``wanted`` is the dedicated compressor's window, 0 for the shared (or a
    disabled) one. The parameters come in Bun's order: no-context-takeover first.
    """
    no_ctx = wanted == 0 or "server_no_context_takeover" in got
    parts = ["server_no_context_takeover"] if no_ctx else []
    offered = got.get("server_max_window_bits")
    if offered is not None:
        if wanted == 0 and offered < 15:
            # The shared compressor's window is fixed at 15 bits, so it can honour a
            # limit of 15 but no smaller one (Bun declines those too).
            return None
        bits = min(offered, wanted or 15)
        parts.append(f"server_max_window_bits={bits}")
        return bits, no_ctx, parts
    if no_ctx:
        return 15, True, parts  # the shared compressor's window
    if wanted < 15:
        parts.append(f"server_max_window_bits={wanted}")  # Bun announces it even unasked
    return wanted, False, parts


def _answer(config: DeflateConfig, got: dict[str, int | None]) -> Agreement | None:
    parts = ["permessage-deflate"]

    # Client side (our inflater), written first like Bun.
    client_window = config.inflate_window
    if "client_no_context_takeover" in got:
        client_window = 0
    else:
        offered = got.get("client_max_window_bits")
        if offered is not None and offered < client_window:
            client_window = offered
    if client_window == 0:
        parts.append("client_no_context_takeover")
    elif client_window < 15:
        parts.append(f"client_max_window_bits={client_window}")

    # Server side (our deflater).
    wanted = config.compress_window
    server = _server_side(wanted, got)
    if server is None:
        return None
    server_bits, server_no_ctx, server_parts = server
    parts += server_parts

    # Any stateless compressor is shared by every connection with the same window.
    shared = server_no_ctx and config.compress_enabled
    return Agreement(
        response="; ".join(parts),
        server_no_context_takeover=server_no_ctx,
        client_no_context_takeover=client_window == 0,
        server_max_window_bits=server_bits,
        client_max_window_bits=client_window if client_window else 15,
        compress_enabled=config.compress_enabled,
        shared_deflate=shared,
        # Without a window request a stateless compressor is Bun's shared (15, 8) one.
        compress_mem_level=(
            8
            if shared and (wanted == 0 or "server_max_window_bits" not in got)
            else config.compress_mem_level
        ),
        config=config,
    )


def negotiate(config: DeflateConfig | None, header_value: str | None) -> Agreement | None:
    """Answer a client's ``Sec-WebSocket-Extensions`` offers.

    Args:
        config: the server's validated option (None: compression off).
        header_value: the request's header value, or None when absent.

    Returns:
        The agreement for the first acceptable ``permessage-deflate`` offer, or
        None (no extension header in the response; the handshake goes on).
        ``x-webkit-deflate-frame`` and other extensions are never accepted.
    """
    if config is None or not header_value:
        return None
    for name, params in parse_extensions(header_value):
        if name != "permessage-deflate":
            continue
        got = _check_params(params)
        if got is None:
            continue
        agreement = _answer(config, got)
        if agreement is not None:
            return agreement
    return None
