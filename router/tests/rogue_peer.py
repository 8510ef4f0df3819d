"""A peer that holds a valid link credential and says what it likes: it dials a
router over mutual TLS, completes the HELLO exchange as a router of its own,
then sends whatever frames a test gives it. For the attack tests."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

from router_testkit import Ca, Site

from skiff_router.codec import FrameType, encode_frame
from skiff_router.link import LinkProtocol, LinkUp


class RoguePeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def dial(cls, victim: Site, name: str, where: Path) -> RoguePeer:
        """Dial ``victim``'s link port with a client certificate its CA issued to
        site ``name`` (as a token would), and come up as router ``name``."""
        assert victim.ca is not None and victim.link_port is not None
        cert, key = victim.ca.issue(name, server=False)
        where.mkdir(parents=True, exist_ok=True)
        (where / "ca.crt").write_bytes(victim.ca.pem)
        (where / "tls.crt").write_bytes(cert)
        (where / "tls.key").write_bytes(key)
        ctx = ssl.create_default_context(cafile=str(where / "ca.crt"))
        ctx.load_cert_chain(str(where / "tls.crt"), str(where / "tls.key"))
        ctx.check_hostname = False
        reader, writer = await asyncio.open_connection("127.0.0.1", victim.link_port, ssl=ctx)
        proto = LinkProtocol(name, dialer=True, now=time.monotonic(), expected_site=victim.name)
        writer.write(b"".join(proto.take_output()))
        for _attempt in range(100):
            data = await asyncio.wait_for(reader.read(65536), 10)
            if not data:
                raise ConnectionError("the victim closed the link during HELLO")
            if any(isinstance(ev, LinkUp) for ev in proto.receive_data(data, time.monotonic())):
                break
        else:
            raise AssertionError("no HELLO from the victim")
        peer = cls(reader, writer)
        peer._drain = asyncio.ensure_future(peer._discard())
        return peer

    async def _discard(self) -> None:
        """Read and drop what the victim sends (its LSAs, pings), so it never blocks."""
        while await self.reader.read(65536):
            pass

    async def send(self, ftype: FrameType, payload: bytes, fid: int = 0) -> None:
        self.writer.write(encode_frame(ftype, fid, payload))
        await self.writer.drain()

    def close(self) -> None:
        self._drain.cancel()
        self.writer.transport.abort()


__all__ = ["Ca", "RoguePeer"]
