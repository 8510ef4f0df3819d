"""Link frame codec (sans-I/O): bytes in, frames out, and back.

Frame = 10-byte header + payload::

    type u8 | flags u8 | flow id u32 | payload length u32 | payload

Everything is network byte order. The declared length is checked against
MAX_PAYLOAD as soon as the header is complete, before any payload is
buffered, so a peer cannot make us hold more than one frame's worth.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from skiff_router.config import MODES, SITE_RE, WIRE_ROUTER_ID_RE, Mode, router_of_site

PROTOCOL_VERSION = 1
HEADER = struct.Struct("!BBII")
HEADER_SIZE = HEADER.size
MAX_DATA = 64 * 1024  # largest DATA payload a sender produces
MAX_PAYLOAD = MAX_DATA + 1024  # accepted payload limit: 64 KiB + margin for control frames
MAX_FLOW_ID = 0xFFFFFFFF
INSTANCE_RE = re.compile(r"^[0-9a-f]{8,64}$")
_WINDOW = struct.Struct("!I")


class FrameType(IntEnum):
    HELLO = 1  # link: JSON {"v", "id", "cost"}
    PING = 2  # link: opaque <= 8 bytes, echoed in PONG
    PONG = 3
    LSA = 4  # link: JSON link-state advertisement, flooded
    CLOSE = 5  # link: short public reason, then the sender closes
    OPEN = 6  # flow: JSON {"key", "dest", "src"}
    DATA = 7  # flow: bytes
    END = 8  # flow: half-close of the sender's direction
    RESET = 9  # flow: abort both directions; short public reason
    WINDOW = 10  # flow: u32 credit increment
    ACCEPT = 11  # flow: the destination's connector took the connection (travels back)
    MCAST = 12  # link: multicast message (origin, seq, address, payload), flooded
    DRAIN = 13  # link: a newer link replaces this one; it takes no new flows


LINK_FRAMES = frozenset(
    {
        FrameType.HELLO,
        FrameType.PING,
        FrameType.PONG,
        FrameType.LSA,
        FrameType.CLOSE,
        FrameType.MCAST,
        FrameType.DRAIN,
    }
)
FLOW_FRAMES = frozenset(FrameType) - LINK_FRAMES


class ProtocolError(Exception):
    """The peer broke the protocol. ``reason`` is for our log only, never sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# A decoded frame: (type, flow id, payload). A plain tuple, not a class: the
# data path handles one per DATA frame and pays for every attribute lookup.
RawFrame = tuple[FrameType, int, "bytes | memoryview"]


def encode_frame(ftype: FrameType, flow: int = 0, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("payload too large")
    return HEADER.pack(ftype, 0, flow, len(payload)) + payload


# Header validation tables, indexed by the raw type byte: the FrameType (None if
# unknown) and whether the type is a link frame (flow id must be 0).
_TYPES: tuple[FrameType | None, ...] = tuple(
    FrameType(i) if i in FrameType._value2member_map_ else None for i in range(256)
)
_LINK_TYPE: tuple[bool, ...] = tuple(t in LINK_FRAMES for t in _TYPES)
_DATA = FrameType.DATA


class FrameDecoder:
    """Incremental decoder. Once it raised ProtocolError it stays broken.

    Frames are parsed straight out of each chunk fed; only a trailing partial
    frame is buffered. ``feed`` hands out (type, flow id, payload) tuples; a
    DATA payload taken whole from an immutable ``bytes`` chunk is a read-only
    memoryview slice of it (no copy), every other payload is ``bytes``.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max = max_payload
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _check(self, data: Any, pos: int) -> tuple[FrameType, int, int]:
        ftype, flags, flow, length = HEADER.unpack_from(data, pos)
        # Validate the header before waiting for (and buffering) the payload.
        if length > self._max:
            raise ProtocolError(f"frame payload length {length} exceeds limit {self._max}")
        t = _TYPES[ftype]
        if t is None:
            raise ProtocolError(f"unknown frame type {ftype}")
        if flags:
            raise ProtocolError(f"unsupported flags {flags:#x} on {t.name}")
        if (flow == 0) != _LINK_TYPE[ftype]:
            raise ProtocolError(f"bad flow id {flow} for {t.name}")
        return t, flow, length

    def feed(self, data: bytes) -> list[RawFrame]:
        if self._error is not None:
            raise self._error
        frames: list[RawFrame] = []
        end = len(data)
        pos = 0
        buf = self._buf
        # Slices of an immutable bytes object stay valid; anything else is copied.
        mv = memoryview(data) if isinstance(data, bytes) else None
        check = self._check
        try:
            if buf:
                # Complete the partial frame left over from the previous chunk.
                have = len(buf)
                if have < HEADER_SIZE:
                    take = min(HEADER_SIZE - have, end)
                    buf += data[:take]
                    pos = take
                    if len(buf) < HEADER_SIZE:
                        return frames
                t, flow, length = check(buf, 0)
                need = HEADER_SIZE + length - len(buf)
                take = min(need, end - pos)
                if take:
                    buf += data[pos : pos + take]
                    pos += take
                if take < need:
                    return frames
                frames.append((t, flow, bytes(buf[HEADER_SIZE:])))
                self._buf = buf = bytearray()
            while end - pos >= HEADER_SIZE:
                t, flow, length = check(data, pos)
                start = pos + HEADER_SIZE
                stop = start + length
                if stop > end:
                    break
                if t is _DATA and mv is not None:
                    frames.append((t, flow, mv[start:stop]))
                else:
                    frames.append((t, flow, bytes(data[start:stop])))
                pos = stop
            if pos < end:
                buf += data[pos:]
        except ProtocolError as exc:
            self._error = exc
            self._buf = bytearray()
            raise
        return frames


# -- typed payloads -----------------------------------------------------------------------


def _json(payload: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ProtocolError(f"{what}: payload is not JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: payload is not an object")
    return value


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _router(value: Any, what: str) -> str:
    if not isinstance(value, str) or not WIRE_ROUTER_ID_RE.match(value):
        raise ProtocolError(f"{what}: invalid router id")
    return value


def _site(value: Any, what: str) -> str:
    if not isinstance(value, str) or not SITE_RE.match(value):
        raise ProtocolError(f"{what}: invalid site name")
    return value


def _site_of(d: dict[str, Any], router: str, what: str) -> str:
    """The ``site`` of a router described by ``d``. A router of an older release
    sends none: its id is its site name."""
    site = _site(d.get("site", router), f"{what}.site")
    if not router_of_site(router, site):
        raise ProtocolError(f"{what}.id: not a router id of its site")
    return site


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(f"{what}: integer out of range")
    return value


def _keys(value: Any, what: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(k, str) and k for k in value):
        raise ProtocolError(f"{what}: not a list of routing keys")
    return frozenset(value)


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    router: str  # the router id
    site: str  # the site the router belongs to (replicas of one site share it)
    cost: int  # the dialer's configured link cost; the acceptor adopts it
    mode: Mode = Mode.INTERIOR
    # The sender understands DRAIN (routers before it close a link on that frame).
    drain: bool = True
    # This run of the sending router, shared by its workers and links (random at
    # start): a credential is bound to the routers holding it. "" from older routers.
    instance: str = ""


def encode_hello(h: Hello) -> bytes:
    d: dict[str, Any] = {"v": h.version, "id": h.router, "site": h.site, "cost": h.cost}
    if h.mode is not Mode.INTERIOR:
        d["mode"] = h.mode.value
    if h.drain:
        d["drain"] = True
    if h.instance:
        d["instance"] = h.instance
    return _dump(d)


def decode_hello(payload: bytes) -> Hello:
    d = _json(payload, "HELLO")
    version = _int(d.get("v"), "HELLO.v", 0, 1 << 31)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version}")
    mode = d.get("mode", Mode.INTERIOR.value)
    if not isinstance(mode, str) or mode not in MODES:
        raise ProtocolError("HELLO.mode: unknown mode")
    router = _router(d.get("id"), "HELLO.id")
    site = _site_of(d, router, "HELLO")
    cost = _int(d.get("cost", 1), "HELLO.cost", 1, 1_000_000)
    instance = d.get("instance", "")
    if not isinstance(instance, str) or (instance and not INSTANCE_RE.match(instance)):
        raise ProtocolError("HELLO.instance: invalid")
    return Hello(version, router, site, cost, Mode(mode), d.get("drain") is True, instance)


@dataclass(frozen=True, slots=True)
class EdgeInfo:
    """An edge router attached to the advertising interior (advertised on its behalf)."""

    router: str
    cost: int
    connectors: frozenset[str]
    listeners: frozenset[str]
    site: str = ""  # "" = the router id

    def __post_init__(self) -> None:
        if not self.site:
            object.__setattr__(self, "site", self.router)


@dataclass(frozen=True, slots=True)
class Lsa:
    """Link-state advertisement: who a router is, whom it reaches, what it serves."""

    router: str
    seq: int
    links: tuple[tuple[str, int], ...]  # (neighbour id, cost), sorted
    connectors: frozenset[str]
    listeners: frozenset[str]
    edges: tuple[EdgeInfo, ...] = ()  # sorted by router id
    site: str = ""  # the router's site; "" = the router id

    def __post_init__(self) -> None:
        if not self.site:
            object.__setattr__(self, "site", self.router)

    @property
    def neighbours(self) -> dict[str, int]:
        return dict(self.links)


def encode_lsa(lsa: Lsa) -> bytes:
    d: dict[str, Any] = {
        "id": lsa.router,
        "seq": lsa.seq,
        "links": dict(lsa.links),
        "connectors": sorted(lsa.connectors),
        "listeners": sorted(lsa.listeners),
    }
    if lsa.site != lsa.router:
        d["site"] = lsa.site
    if lsa.edges:
        d["edges"] = {e.router: _edge_dict(e) for e in lsa.edges}
    return _dump(d)


def _edge_dict(e: EdgeInfo) -> dict[str, Any]:
    d: dict[str, Any] = {
        "cost": e.cost,
        "connectors": sorted(e.connectors),
        "listeners": sorted(e.listeners),
    }
    if e.site != e.router:
        d["site"] = e.site
    return d


def decode_lsa(payload: bytes) -> Lsa:
    d = _json(payload, "LSA")
    links = d.get("links")
    if not isinstance(links, dict):
        raise ProtocolError("LSA.links: not an object")
    pairs = tuple(
        sorted(
            (_router(k, "LSA.links"), _int(v, "LSA.links", 1, 1_000_000)) for k, v in links.items()
        )
    )
    raw_edges = d.get("edges", {})
    if not isinstance(raw_edges, dict):
        raise ProtocolError("LSA.edges: not an object")
    edges = []
    for k, v in sorted(raw_edges.items()):
        if not isinstance(v, dict):
            raise ProtocolError("LSA.edges: entry is not an object")
        edges.append(
            EdgeInfo(
                _router(k, "LSA.edges"),
                _int(v.get("cost"), "LSA.edges.cost", 1, 1_000_000),
                _keys(v.get("connectors"), "LSA.edges.connectors"),
                _keys(v.get("listeners"), "LSA.edges.listeners"),
                _site_of(v, k, "LSA.edges"),
            )
        )
    router = _router(d.get("id"), "LSA.id")
    return Lsa(
        router=router,
        seq=_int(d.get("seq"), "LSA.seq", 0, (1 << 63) - 1),
        links=pairs,
        connectors=_keys(d.get("connectors"), "LSA.connectors"),
        listeners=_keys(d.get("listeners"), "LSA.listeners"),
        edges=tuple(edges),
        site=_site_of(d, router, "LSA"),
    )


@dataclass(frozen=True, slots=True)
class Open:
    key: str
    dest: str
    src: str
    hops: int = 0  # routers passed so far; bounds a flow caught in a transient loop


MAX_HOPS = 32


# A router opens flows for few (key, dest, src, hops) combinations: both ways of
# the OPEN payload are cached (immutable values; errors are never cached).
@functools.lru_cache(maxsize=4096)
def encode_open(o: Open) -> bytes:
    return _dump({"key": o.key, "dest": o.dest, "src": o.src, "hops": o.hops})


def decode_open(payload: bytes) -> Open:
    if not isinstance(payload, bytes):
        payload = bytes(payload)
    return _decode_open(payload)


@functools.lru_cache(maxsize=4096)
def _decode_open(payload: bytes) -> Open:
    d = _json(payload, "OPEN")
    key = d.get("key")
    if not isinstance(key, str) or not key:
        raise ProtocolError("OPEN.key: invalid routing key")
    return Open(
        key,
        _router(d.get("dest"), "OPEN.dest"),
        _router(d.get("src"), "OPEN.src"),
        _int(d.get("hops", 0), "OPEN.hops", 0, MAX_HOPS),
    )


def encode_window(n: int) -> bytes:
    return _WINDOW.pack(n)


def decode_window(payload: bytes) -> int:
    if len(payload) != _WINDOW.size:
        raise ProtocolError("WINDOW: bad payload size")
    (n,) = _WINDOW.unpack(payload)
    if n == 0:
        raise ProtocolError("WINDOW: zero increment")
    return n


_MC_SEQ = struct.Struct("!Q")
_MC_ADDR = struct.Struct("!H")
MAX_ADDRESS = 255


@dataclass(frozen=True, slots=True)
class Mcast:
    origin: str
    seq: int  # per origin, increasing; (origin, seq) identifies the message
    address: str
    payload: bytes


def valid_address(address: str) -> bool:
    return (
        0 < len(address.encode("utf-8", "replace")) <= MAX_ADDRESS
        and address.isprintable()
        and " " not in address
    )


def encode_mcast(m: Mcast) -> bytes:
    origin = m.origin.encode("ascii")
    addr = m.address.encode("utf-8")
    return b"".join(
        (
            bytes((len(origin),)),
            origin,
            _MC_SEQ.pack(m.seq),
            _MC_ADDR.pack(len(addr)),
            addr,
            m.payload,
        )
    )


def decode_mcast(payload: bytes) -> Mcast:
    """Binary: origin len u8 | origin | seq u64 | address len u16 | address | payload."""
    try:
        n = payload[0]
        origin = payload[1 : 1 + n].decode("ascii")
        pos = 1 + n
        (seq,) = _MC_SEQ.unpack_from(payload, pos)
        pos += _MC_SEQ.size
        (alen,) = _MC_ADDR.unpack_from(payload, pos)
        pos += _MC_ADDR.size
        if alen > MAX_ADDRESS or pos + alen > len(payload):
            raise ProtocolError("MCAST: bad address length")
        address = payload[pos : pos + alen].decode("utf-8")
    except (IndexError, struct.error, UnicodeDecodeError):
        raise ProtocolError("MCAST: malformed") from None
    _router(origin, "MCAST.origin")
    if not valid_address(address):
        raise ProtocolError("MCAST: invalid address")
    return Mcast(origin, seq, address, payload[pos + alen :])


def decode_reason(payload: bytes) -> str:
    """RESET/CLOSE reasons are short public codes; anything odd is replaced."""
    if len(payload) > 64:
        return "?"
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        return "?"
    return text if text.isprintable() else "?"
