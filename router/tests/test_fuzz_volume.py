"""Fuzzing by volume: at least 100,000 generated and mutated frames per run, into
the frame decoder and into a router core through a peer's link (the link state
machine and every component behind it), with no exception, no hang and bounded
memory. Hypothesis draws the seeds; a seeded generator makes the frames (fast
enough for the volume): mostly frames a live peer could send (its own flows
opened, data within credit, updates, multicast), some mutated (bits flipped,
cut short, spliced, retyped). test_misbehaving_peer.py holds the finer-grained
property with shrinking; this one is about how much gets through."""

from __future__ import annotations

import json
import random
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from test_misbehaving_peer import PUBLIC_CODES, network

from skiff_router.codec import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    FrameDecoder,
    FrameType,
    Lsa,
    Mcast,
    Open,
    ProtocolError,
    decode_reason,
    encode_frame,
    encode_lsa,
    encode_mcast,
    encode_open,
    encode_window,
)

FRAMES_PER_SEED = 2_000
SEEDS = 26  # per target: 2 x 26 x 2,000 = 104,000 frames
MEMORY_BOUND = 64 * 1024 * 1024  # bytes traced at peak while one seed's frames are fed


class Wire:
    """Frames a peer (the dialer: odd flow ids) might send, from one seed."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.next_id = 1
        self.flows: list[int] = []
        self.seq = 0

    def frame(self) -> bytes:
        rng = self.rng
        kind = rng.random()
        if kind < 0.015:
            return self.mutated(self.valid())
        if kind < 0.02:
            return rng.randbytes(rng.randint(1, 40))  # garbage
        return self.valid()

    def valid(self) -> bytes:
        rng = self.rng
        pick = rng.random()
        if pick < 0.12 or (not self.flows and pick < 0.5):
            return self.open()
        if pick < 0.45 and self.flows:
            fid = rng.choice(self.flows)
            return encode_frame(FrameType.DATA, fid, rng.randbytes(rng.randint(1, 1500)))
        if pick < 0.52 and self.flows:
            return encode_frame(FrameType.WINDOW, rng.choice(self.flows), encode_window(65536))
        if pick < 0.57 and self.flows:
            fid = self.flows.pop(rng.randrange(len(self.flows)))
            ftype = rng.choice([FrameType.END, FrameType.RESET, FrameType.ACCEPT])
            return encode_frame(ftype, fid, b"gone" if ftype is FrameType.RESET else b"")
        if pick < 0.72:
            return encode_frame(FrameType.LSA, 0, self.lsa())
        if pick < 0.82:
            self.seq += 1
            message = Mcast(rng.choice(["m", "a", "x.y"]), self.seq, "skiff.events", b"{}")
            return encode_frame(FrameType.MCAST, 0, encode_mcast(message))
        if pick < 0.995:
            return encode_frame(rng.choice([FrameType.PING, FrameType.PONG]), 0, b"12345678")
        return encode_frame(FrameType.DRAIN)

    def open(self) -> bytes:
        rng = self.rng
        fid, self.next_id = self.next_id, self.next_id + 2
        self.flows = [*self.flows[-50:], fid]
        # Mostly flows b can serve (k is its key, within the hop bound); some it refuses.
        key, dest, hops = "k", "b", rng.randint(0, 31)
        if rng.random() < 0.1:
            key = rng.choice(["absent", "x" * 253, "k"])
            dest = rng.choice(["a", "nobody", "b"])
        if rng.random() < 0.005:
            hops = rng.randint(32, 40)  # past the bound: a protocol error
        return encode_frame(FrameType.OPEN, fid, encode_open(Open(key, dest, "m", hops)))

    def lsa(self) -> bytes:
        rng = self.rng
        router = rng.choice(["m", "a", "b", f"r{rng.randint(0, 5000)}"])
        seq = rng.choice([rng.randint(0, 1 << 40), (1 << 63) - 1, self.seq])
        links = tuple(sorted({(f"r{rng.randint(0, 50)}", rng.randint(1, 9)) for _link in range(3)}))
        lsa = Lsa(router, seq, links, frozenset({"k"}), frozenset(), site=router.split(".")[0])
        if rng.random() < 0.01:
            return json.dumps({"id": router, "seq": "bad"}).encode()
        return encode_lsa(lsa)

    def mutated(self, frame: bytes) -> bytes:
        rng = self.rng
        data = bytearray(frame)
        how = rng.randrange(4)
        if how == 0:
            for _flip in range(rng.randint(1, 4)):
                i = rng.randrange(len(data))
                data[i] ^= 1 << rng.randrange(8)
        elif how == 1:
            data = data[: rng.randrange(len(data))]
        elif how == 2:
            data[0] = rng.randrange(256)  # another (or no) frame type
        else:
            data += rng.randbytes(rng.randint(1, 16))  # trailing bytes: the next header
        return bytes(data)


def test_decoder_takes_104k_frames_raising_only_protocol_errors() -> None:
    counted = [0]

    @settings(max_examples=SEEDS, deadline=None, database=None)
    @given(st.integers(0, 2**64 - 1))
    def decode(seed: int) -> None:
        wire = Wire(seed)
        decoder = FrameDecoder()
        for _frame in range(FRAMES_PER_SEED):
            data = wire.frame()
            counted[0] += 1
            try:
                for i in range(0, len(data), wire.rng.randint(1, 300)):
                    decoder.feed(data[i : i + 300])
            except ProtocolError:
                decoder = FrameDecoder()  # a link that broke the protocol is closed
            assert decoder.buffered <= HEADER_SIZE + MAX_PAYLOAD

    decode()
    assert counted[0] >= SEEDS * FRAMES_PER_SEED


def test_router_core_takes_104k_frames_from_a_peer_and_stays_whole() -> None:
    """Through b's link from m (see test_misbehaving_peer.network): the core never
    raises; a link it closes gets a public code only and is dialed again (a new
    network) so the frames keep reaching a live link; the honest link a <-> b stays
    up; traced memory stays bounded."""
    counted = [0]
    live = [0]  # frames that reached an open link

    @settings(max_examples=SEEDS, deadline=None, database=None)
    @given(st.integers(0, 2**64 - 1))
    def feed(seed: int) -> None:
        wire = Wire(seed)
        net, hb, peer = network()
        tracemalloc.start()
        try:
            for n in range(FRAMES_PER_SEED):
                b = net.cores["b"]
                link = b.topology.links.get(hb)
                if link is None or link.proto.closed:
                    check_answers(bytes(peer.received))
                    net, hb, peer = network()  # the peer dials again
                    wire = Wire(wire.rng.getrandbits(64))
                    b = net.cores["b"]
                else:
                    live[0] += 1
                b.link_data(hb, wire.frame(), net.now)
                counted[0] += 1
                net.run()
                if n % 200 == 199:
                    net.tick(0.5)  # keepalives, timers, expiry
                    assert "b" in net.cores["a"].topology.neighbours()
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < MEMORY_BOUND, peak
        check_answers(bytes(peer.received))
        assert "b" in net.cores["a"].topology.neighbours()

    feed()
    assert counted[0] >= SEEDS * FRAMES_PER_SEED
    # Most frames reach a live link: the generator is not just tripping the decoder.
    assert live[0] > counted[0] // 2, (live[0], counted[0])


def check_answers(received: bytes) -> None:
    """What b sent the peer is well framed and closes with a public code only."""
    decoder = FrameDecoder()
    answers = decoder.feed(received)
    reasons = {decode_reason(bytes(p)) for t, _f, p in answers if t is FrameType.CLOSE}
    assert reasons <= PUBLIC_CODES, reasons
