"""A misbehaving peer, fuzzed at the sans-I/O core: after a valid HELLO, a peer
holding a link sends any sequence of well-framed frames of every type with any
payload, in any chunking. The core never raises; the bad link either stays or is
closed with a reason (the peer gets a short public code, never the detail); the
router's other link, its routes and its flows are unaffected."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_core import Net, delivered, send

from skiff_router.actions import ConnectLocal
from skiff_router.codec import LINK_FRAMES, FrameDecoder, FrameType, decode_reason, encode_frame

PUBLIC_CODES = {"protocol error", "timeout", "unexpected site", "closing", "replaced"}


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    t = draw(st.sampled_from(list(FrameType)))
    flow = 0 if t in LINK_FRAMES else draw(st.integers(1, 0xFFFFFFFF))
    payload = draw(st.binary(max_size=512))
    return encode_frame(t, flow, payload)


class Peer:
    """Stands in for m's core once the link is up: keeps what b sends it."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.outbox = self

    def link_data(self, _handle: int, data: bytes, _now: float) -> None:
        self.received += data

    def take_actions(self) -> list[object]:
        return []

    def take_writes(self) -> list[object]:
        return []

    def tick(self, _now: float) -> None:
        pass


def network() -> tuple[Net, int, Peer]:
    """a <-> b (honest, b serves k), m -> b (the misbehaving peer's link)."""
    net = Net()
    a, b = net.add("a", "a"), net.add("b", "b")
    net.add("m", "m")
    a.topology.set_services({"k"}, set())
    b.topology.set_services(set(), {"k"})
    net.connect("a", "b")
    _hm, hb = net.connect("m", "b")
    # From here on the fuzzer speaks for m, and what b answers is kept.
    peer = Peer()
    net.cores["m"] = peer  # type: ignore[assignment]
    return net, hb, peer


def fed(wire: list[bytes], chunk: int) -> bool:
    """Feed b the peer's frames; check the invariants; True when b closed the link."""
    net, hb, peer = network()
    b = net.cores["b"]
    data = b"".join(wire)
    for i in range(0, len(data), chunk):
        b.link_data(hb, data[i : i + chunk], net.now)  # never raises
        net.run()
    link = b.topology.links.get(hb)
    closed = link is None or link.proto.closed
    # What b said to the peer is well framed; a CLOSE carries a short public code only.
    answers = FrameDecoder().feed(bytes(peer.received))
    reasons = [decode_reason(bytes(p)) for t, _f, p in answers if t is FrameType.CLOSE]
    assert set(reasons) <= PUBLIC_CODES
    assert closed or not reasons, reasons  # a CLOSE is sent once, on closing
    # The honest neighbour still routes k to b, and a new flow carries bytes.
    a = net.cores["a"]
    net.tick(0.5)
    assert "b" in a.topology.neighbours()
    net.take("b")
    la = a.flows.open("k")
    assert la is not None
    net.run()
    (conn,) = net.take("b", ConnectLocal)
    assert b.flows.local_connected(conn.lid)  # type: ignore[attr-defined]
    net.run()
    send(a, la, b"still works")
    net.run()
    assert delivered(net.take("b"), conn.lid) == b"still works"  # type: ignore[attr-defined]
    return closed


@settings(max_examples=200)
@given(st.lists(frames(), max_size=30), st.integers(1, 97))
def test_any_frames_from_a_peer_leave_the_rest_of_the_router_alone(
    wire: list[bytes], chunk: int
) -> None:
    fed(wire, chunk)


def test_a_peer_that_behaves_stays_and_one_that_does_not_is_closed() -> None:
    """Both outcomes of the property, pinned: pings keep the link, a second HELLO
    or an unknown flow's data closes it with `protocol error`."""
    assert not fed([encode_frame(FrameType.PING)] * 3, 5)
    assert fed([encode_frame(FrameType.HELLO, 0, b"again")], 7)
    assert fed([encode_frame(FrameType.DATA, 12345, b"nobody's flow")], 3)
