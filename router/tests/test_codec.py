"""Tier 1: the frame codec with bytes only."""

from __future__ import annotations

import contextlib
import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skiff_router.codec import (
    FLOW_FRAMES,
    HEADER_SIZE,
    LINK_FRAMES,
    MAX_PAYLOAD,
    FrameDecoder,
    FrameType,
    Hello,
    Lsa,
    Open,
    ProtocolError,
    decode_hello,
    decode_lsa,
    decode_open,
    decode_reason,
    decode_window,
    encode_frame,
    encode_hello,
    encode_lsa,
    encode_open,
    encode_window,
)

Frame = tuple[FrameType, int, bytes]


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    t = draw(st.sampled_from(list(FrameType)))
    flow = 0 if t in LINK_FRAMES else draw(st.integers(1, 0xFFFFFFFF))
    payload = draw(st.binary(max_size=2048))
    return (t, flow, payload)


def decoded(dec: FrameDecoder, data: bytes) -> list[Frame]:
    """Frames as (type, flow, bytes): DATA payloads may be views of ``data``."""
    return [(t, flow, bytes(p)) for t, flow, p in dec.feed(data)]


@given(st.lists(frames(), max_size=20), st.integers(1, 64))
def test_round_trip_any_split(fs: list[Frame], chunk: int) -> None:
    wire = b"".join(encode_frame(*f) for f in fs)
    dec = FrameDecoder()
    out: list[Frame] = []
    for i in range(0, len(wire), chunk):
        out += decoded(dec, wire[i : i + chunk])
    assert out == fs
    assert dec.buffered == 0


@given(st.lists(frames(), max_size=10))
def test_data_payloads_are_views_of_the_chunk_fed(fs: list[Frame]) -> None:
    wire = b"".join(encode_frame(*f) for f in fs)
    for t, _unused, payload in FrameDecoder().feed(wire):
        # Whole DATA frames from an immutable chunk are not copied.
        assert isinstance(payload, memoryview if t is FrameType.DATA else bytes)


@settings(max_examples=500)
@given(st.binary(max_size=4096), st.integers(1, 4096))
def test_any_bytes_parse_or_protocol_error(data: bytes, chunk: int) -> None:
    dec = FrameDecoder()
    try:
        for i in range(0, len(data), chunk):
            for t, flow, _unused in dec.feed(data[i : i + chunk]):
                assert isinstance(t, FrameType) and 0 <= flow <= 0xFFFFFFFF
    except ProtocolError as exc:
        assert exc.reason
        with pytest.raises(ProtocolError):
            dec.feed(b"")  # stays broken


@settings(max_examples=300)
@given(st.sampled_from(list(FrameType)), st.binary(max_size=512))
def test_payload_decoders_raise_only_protocol_error(t: FrameType, payload: bytes) -> None:
    for fn in (decode_hello, decode_lsa, decode_open, decode_window):
        with contextlib.suppress(ProtocolError):
            fn(payload)
    assert isinstance(decode_reason(payload), str)


def test_oversize_rejected_before_payload() -> None:
    dec = FrameDecoder()
    header = struct.pack("!BBII", FrameType.DATA, 0, 1, MAX_PAYLOAD + 1)
    with pytest.raises(ProtocolError, match="exceeds limit"):
        dec.feed(header)  # no payload byte sent: the header alone is refused
    assert dec.buffered == 0


def test_max_payload_accepted() -> None:
    dec = FrameDecoder()
    wire = encode_frame(FrameType.DATA, 3, b"x" * MAX_PAYLOAD)
    assert dec.feed(wire[:HEADER_SIZE]) == []
    assert decoded(dec, wire[HEADER_SIZE:]) == [(FrameType.DATA, 3, b"x" * MAX_PAYLOAD)]


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (struct.pack("!BBII", 99, 0, 0, 0), "unknown frame type"),
        (struct.pack("!BBII", FrameType.PING, 1, 0, 0), "flags"),
        (struct.pack("!BBII", FrameType.PING, 0, 5, 0), "bad flow id"),
        (struct.pack("!BBII", FrameType.DATA, 0, 0, 0), "bad flow id"),
    ],
)
def test_malformed_headers(header: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        FrameDecoder().feed(header)


def test_flow_and_link_frame_sets_partition_types() -> None:
    assert set(FrameType) == LINK_FRAMES | FLOW_FRAMES
    assert not LINK_FRAMES & FLOW_FRAMES


def test_typed_payloads_round_trip() -> None:
    h = Hello(1, "east.r1", "east", 3)
    assert decode_hello(encode_hello(h)) == h
    lsa = Lsa("east", 7, (("north", 2), ("west", 1)), frozenset({"a"}), frozenset({"b", "c"}))
    assert decode_lsa(encode_lsa(lsa)) == lsa
    o = Open("backend", "east", "west")
    assert decode_open(encode_open(o)) == o
    assert decode_window(encode_window(12345)) == 12345


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v": 2, "id": "east"}',
        b'{"v": 1, "id": "East"}',
        b'{"v": 1, "id": "east", "cost": 0}',
        b"[1]",
        b"\xff",
        b"[" * 100000,
    ],
)
def test_bad_hello(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_hello(payload)


def test_window_zero_and_reason_sanitised() -> None:
    with pytest.raises(ProtocolError):
        decode_window(encode_window(0))
    assert decode_reason(b"no route") == "no route"
    assert decode_reason(b"\x1b[31m") == "?"
    assert decode_reason(b"x" * 65) == "?"


def test_hello_and_lsa_carry_router_id_and_site() -> None:
    # A replica: its own router id, its site's name.
    h = decode_hello(b'{"v": 1, "id": "east.r2", "site": "east", "cost": 1}')
    assert (h.router, h.site) == ("east.r2", "east")
    # A router of an older release sends no site: its id is its site.
    assert decode_hello(b'{"v": 1, "id": "east", "cost": 1}').site == "east"
    lsa = Lsa("east.r2", 7, (("east.r1", 1),), frozenset(), frozenset(), site="east")
    assert decode_lsa(encode_lsa(lsa)) == lsa
    assert b'"site"' not in encode_lsa(Lsa("west", 1, (), frozenset(), frozenset()))


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v": 1, "id": "east.r2", "cost": 1}',  # a replica id alone names no site
        b'{"v": 1, "id": "west.r2", "site": "east", "cost": 1}',  # not a router of east
        b'{"v": 1, "id": "east.r2.x", "site": "east", "cost": 1}',  # one dot at most
        b'{"v": 1, "id": "east", "site": "East", "cost": 1}',
    ],
)
def test_router_id_must_belong_to_its_site(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_hello(payload)
    d = json.loads(payload)
    del d["v"], d["cost"]
    d.update(seq=1, links={}, connectors=[], listeners=[])
    with pytest.raises(ProtocolError, match=r"site|LSA\.id"):
        decode_lsa(json.dumps(d).encode())
