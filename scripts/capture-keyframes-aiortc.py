#!/usr/bin/env python3
"""capture-keyframes-aiortc.py BASE_URL ROOM SECONDS — publish x264's H.264 with aiortc for capture-keyframes.

A helper of scripts/capture-keyframes.mjs (run scripts/capture-keyframes, which documents the whole thing): it
publishes the video of tests/fixtures/testsrc-h264-opus.mkv (x264, constrained baseline, SPS/PPS before each
IDR, an IDR every 60 frames; see scripts/make-fixtures) over WHIP to BASE_URL/whip/ROOM for SECONDS at 30 fps,
passed through without re-encoding, so aiortc's own packetizer (STAP-A for SPS+PPS, FU-A for big slices)
makes the RTP. Prints one JSON object: how many frames and IDR access units it handed to aiortc.
"""

import asyncio
import fractions
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import aioice.ice
import av
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

FIXTURE = Path(__file__).resolve().parent.parent / "tests/fixtures/testsrc-h264-opus.mkv"
FPS = 30

# Loopback only: deadsfu listens on every local address, and aiortc would otherwise try every interface.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


def access_units() -> list[tuple[bytes, bool]]:
    """The fixture's H.264 access units in Annex-B, each with whether the container marks it a keyframe."""
    out = []
    with av.open(str(FIXTURE)) as container:
        stream = container.streams.video[0]
        bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", stream)
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            for p in bsf.filter(packet):
                out.append((bytes(p), bool(p.is_keyframe)))
    return out


class Track(MediaStreamTrack):
    kind = "video"

    def __init__(self, units: list[tuple[bytes, bool]]) -> None:
        super().__init__()
        self.units = units
        self.start: float | None = None
        self.sent = 0
        self.keyframes = 0

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        n = self.sent
        delay = self.start + n / FPS - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        data, key = self.units[n % len(self.units)]
        self.sent += 1
        self.keyframes += key
        packet = av.Packet(data)
        packet.pts = n
        packet.time_base = fractions.Fraction(1, FPS)
        return packet


def post(url: str, body: str) -> tuple[int, str, str]:
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers={"Content-Type": "application/sdp"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers.get("Location", ""), resp.read().decode()


async def main(base: str, room: str, seconds: float) -> None:
    track = Track(access_units())
    pc = RTCPeerConnection()
    tr = pc.addTransceiver(track, direction="sendonly")
    h264 = [
        c for c in RTCRtpSender.getCapabilities("video").codecs
        if c.mimeType == "video/H264" and c.parameters.get("packetization-mode") == "1"
        and c.parameters.get("profile-level-id") == "42e01f"
    ]
    tr.setCodecPreferences(h264)
    await pc.setLocalDescription(await pc.createOffer())
    status, location, answer = await asyncio.to_thread(post, f"{base}/whip/{urllib.parse.quote(room)}", pc.localDescription.sdp)
    if status != 201:
        raise SystemExit(f"WHIP answered {status}")
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    deadline = time.monotonic() + 10
    while pc.connectionState != "connected":
        if time.monotonic() > deadline:
            raise SystemExit(f"aiortc publisher stayed {pc.connectionState}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(seconds)
    track.stop()
    req = urllib.request.Request(urllib.parse.urljoin(base, location), method="DELETE")
    await asyncio.to_thread(urllib.request.urlopen, req, None, 10)
    await pc.close()
    source = f"aiortc {__import__('aiortc').__version__} passing through x264 from {FIXTURE.name}"
    print(json.dumps({"framesEncoded": track.sent, "keyFramesEncoded": track.keyframes, "encoderImplementation": source}))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
