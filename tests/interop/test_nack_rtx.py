"""A packet lost on a viewer's path is repaired: the viewer NACKs it and the worker resends it over RTX from
the viewer's retransmission cache. The loss is made at the viewer, which throws away every 40th video packet
the first time it arrives."""

from __future__ import annotations

import asyncio
import time

from harness import Sfu
from media import MAIN_FIXTURE, VIDEO_FPS, load_fixture
from rtc import Publisher, Viewer, publish_and_view, wait_for

EVERY = 40
WINDOW = 6.0


def make_lossy(viewer: Viewer) -> tuple[set[int], set[int]]:
    """Drops every EVERY-th video media packet on first arrival; returns (dropped seqs, seqs repaired by RTX)."""
    receiver = next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")
    codecs = lambda: getattr(receiver, "_RTCRtpReceiver__codecs", {})  # noqa: E731
    dropped: set[int] = set()
    repaired: set[int] = set()
    inner = receiver._handle_rtp_packet

    async def lossy(packet, arrival_time_ms: int) -> None:
        codec = codecs().get(packet.payload_type)
        is_rtx = codec is not None and codec.mimeType.lower() == "video/rtx"
        if is_rtx and len(packet.payload) >= 2:
            original = int.from_bytes(packet.payload[:2], "big")
            if original in dropped:
                repaired.add(original)
        elif packet.sequence_number % EVERY == 0 and packet.sequence_number not in dropped:
            dropped.add(packet.sequence_number)
            return
        await inner(packet, arrival_time_ms)

    receiver._handle_rtp_packet = lossy
    return dropped, repaired


def test_lost_packets_are_resent_over_rtx(sfu: Sfu, figures: list[str]) -> None:
    async def run() -> None:
        fixture = load_fixture(MAIN_FIXTURE)
        publisher = Publisher(fixture, "rtx-publisher")
        viewer = Viewer("lossy-viewer")
        dropped, repaired = make_lossy(viewer)
        try:
            await publish_and_view(sfu.url, "rtx", publisher, viewer)
            await wait_for(lambda: len(viewer.rx.video) > 0, 10, "the viewer's first frame")
            t0 = time.monotonic()
            await asyncio.sleep(WINDOW)  # the observation window
            # Give the last NACKs a round trip to be answered.
            await wait_for(lambda: dropped <= repaired | {max(dropped)}, 2, "the last losses to be repaired")
            frames = len(viewer.rx.frames_since(t0))
            expected = WINDOW * VIDEO_FPS
            unrepaired = sorted(dropped - repaired)
            figures.append(f"NACK/RTX: {len(dropped)} video packets dropped at the viewer, {len(repaired)} resent over"
                           f" RTX, unrepaired {unrepaired[:5]}; {frames} frames decoded in {WINDOW:.0f} s"
                           f" ({frames / expected:.0%} of those sent)")
            assert len(dropped) >= 10, f"the test dropped only {len(dropped)} packets"
            assert len(unrepaired) <= 1, f"lost packets not repaired: {unrepaired}"
            assert frames >= 0.9 * expected, f"decoded {frames} frames of {expected:.0f}"
        finally:
            await asyncio.gather(publisher.close(), viewer.close(), return_exceptions=True)

    asyncio.run(run())
