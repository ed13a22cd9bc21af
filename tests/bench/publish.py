#!/usr/bin/env python3
"""Publishes a looping fixture (H.264 or VP8, with Opus) into one room of a deadsfu host, for the benchmark.

Usage: publish.py BASE_URL ROOM [FIXTURE] [--pacing F]

Prints `published` on stdout once the session is connected, then publishes (looping the fixture) until its
stdin closes or it gets SIGTERM/SIGINT; then it DELETEs its session and exits.

aiortc sends a frame's packets back to back, so a keyframe reaches the SFU as one burst. `--pacing F` spaces
every RTP packet out at F times the fixture's mean bitrate instead, as a browser's pacer does (libwebrtc paces
at 2.5x its target bitrate), so a keyframe arrives over tens of milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))

from media import AUDIO_FRAME_SAMPLES, AUDIO_RATE, MAIN_FIXTURE, VIDEO_FPS, Fixture, load_fixture  # noqa: E402
from rtc import Publisher  # noqa: E402


def mean_bitrate(fixture: Fixture) -> float:
    """The fixture's media bits per second, audio and video."""
    video = sum(map(len, fixture.video)) * 8 * VIDEO_FPS / len(fixture.video)
    audio = sum(map(len, fixture.audio)) * 8 * AUDIO_RATE / (len(fixture.audio) * AUDIO_FRAME_SAMPLES)
    return video + audio


def pace(pub: Publisher, bits_per_s: float) -> None:
    """Spaces out the publisher's RTP (both tracks share one bundled transport) at `bits_per_s`, each packet
    sent once its predecessor's time at that rate is up."""
    transport = pub.pc.getTransceivers()[0].sender.transport
    send = transport._send_rtp
    loop = asyncio.get_running_loop()
    due = loop.time()

    async def paced(data: bytes) -> None:
        nonlocal due
        start = max(due, loop.time())
        due = start + len(data) * 8 / bits_per_s
        if start > loop.time():
            await asyncio.sleep(start - loop.time())
        await send(data)

    transport._send_rtp = paced


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("base_url")
    p.add_argument("room")
    p.add_argument("fixture", nargs="?", type=Path, default=MAIN_FIXTURE)
    p.add_argument("--pacing", type=float, default=0, help="pace RTP at this multiple of the mean bitrate")
    args = p.parse_args()
    fixture = load_fixture(args.fixture)
    pub = Publisher(fixture)
    resp = await pub.publish(args.base_url, args.room)
    if resp.status != 201:
        print(f"publish failed: {resp.status} {resp.body.strip()}", file=sys.stderr)
        return 1
    await pub.wait_connected(20)
    if args.pacing:
        rate = args.pacing * mean_bitrate(fixture)
        pace(pub, rate)
        print(f"pacing RTP at {rate / 1e6:.2f} Mbit/s", file=sys.stderr)
    print("published", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(4096) else None)
    await stop.wait()
    await pub.close(delete=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
