"""The media side of the interop tests: the fixture, paced pre-encoded tracks, the burned-in frame number.

The fixture (`scripts/make-fixtures`) is an H.264 + Opus Matroska file. It is loaded once into memory as
Annex-B access units (what aiortc's H.264 packetizer splits on) and Opus packets; the tracks below hand them
to aiortc as `av.Packet`s, so aiortc packetizes them as they are, without decoding or re-encoding, paced in
real time by their pts. The file is looped; frame `g` of the stream (counted from 0 over all loops) is frame
`g % len(fixture.video)` of the file, and every video frame carries that file frame number as a barcode.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.bitstream
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures"
MAIN_FIXTURE = FIXTURE_DIR / "testsrc-h264-opus.mkv"
SMALL_FIXTURE = FIXTURE_DIR / "testsrc-180p-h264-opus.mkv"

VIDEO_FPS = 30
VIDEO_TIME_BASE = Fraction(1, VIDEO_FPS)
AUDIO_RATE = 48000
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
AUDIO_FRAME_SAMPLES = 960  # 20 ms Opus frames, as make-fixtures encodes them


@dataclass(frozen=True)
class Fixture:
    path: Path
    codec: str  # "h264" or "vp8"
    width: int
    height: int
    video: tuple[bytes, ...]  # one frame each (H.264: an Annex-B access unit), in decode (= display) order
    keyframes: tuple[int, ...]  # indexes into `video` of the keyframes (H.264: IDR)
    audio: tuple[bytes, ...]  # one Opus packet (20 ms) each

    @property
    def frames_per_loop(self) -> int:
        return len(self.video)


@functools.lru_cache(maxsize=None)
def load_fixture(path: Path = MAIN_FIXTURE) -> Fixture:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run scripts/make-fixtures")
    with av.open(str(path)) as container:
        vstream = container.streams.video[0]
        astream = container.streams.audio[0]
        codec = vstream.codec_context.name
        if codec not in ("h264", "vp8") or astream.codec_context.name != "opus":
            raise ValueError(f"{path}: expected H.264 or VP8, and Opus")
        # Matroska stores length-prefixed NAL units; aiortc splits on start codes. A VP8 frame goes as it is.
        bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", vstream) if codec == "h264" else None
        video: list[bytes] = []
        keyframes: list[int] = []
        audio: list[bytes] = []
        for packet in container.demux(vstream, astream):
            if packet.size == 0:
                continue
            if packet.stream is vstream:
                for out in bsf.filter(packet) if bsf else [packet]:
                    if out.is_keyframe:
                        keyframes.append(len(video))
                    video.append(bytes(out))
            else:
                audio.append(bytes(packet))
        width, height = vstream.codec_context.width, vstream.codec_context.height
    if not keyframes or keyframes[0] != 0:
        raise ValueError(f"{path}: the first video frame is not a keyframe")
    # Loop on whole 20 ms audio frames covering the video's duration.
    audio_frames = len(video) * AUDIO_RATE // VIDEO_FPS // AUDIO_FRAME_SAMPLES
    return Fixture(path, codec, width, height, tuple(video), tuple(keyframes), tuple(audio[:audio_frames]))


class Clock:
    """The publisher's media clock: pts 0 of every track is due at `start`, on `time.monotonic()`."""

    def __init__(self) -> None:
        self.start: float | None = None

    async def sleep_until(self, offset: float) -> None:
        if self.start is None:
            self.start = time.monotonic()
        delay = self.start + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class PacedVideoTrack(MediaStreamTrack):
    """Yields the fixture's H.264 access units as `av.Packet`s, looping, one every 1/30 s.

    `sent` records `(g, monotonic time)` for every frame handed to aiortc, `g` counted over all loops.
    """

    kind = "video"

    def __init__(self, fixture: Fixture, clock: Clock) -> None:
        super().__init__()
        self.fixture = fixture
        self.clock = clock
        self.sent: list[tuple[int, float]] = []
        self._next = 0

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        g = self._next
        self._next += 1
        await self.clock.sleep_until(g / VIDEO_FPS)
        packet = av.Packet(self.fixture.video[g % self.fixture.frames_per_loop])
        packet.pts = g
        packet.time_base = VIDEO_TIME_BASE
        self.sent.append((g, time.monotonic()))
        return packet

    def last_sent(self) -> int:
        """The index `g` of the last frame handed to aiortc, -1 before the first."""
        return self.sent[-1][0] if self.sent else -1


class PacedAudioTrack(MediaStreamTrack):
    """Yields the fixture's Opus packets, looping, one every 20 ms."""

    kind = "audio"

    def __init__(self, fixture: Fixture, clock: Clock) -> None:
        super().__init__()
        self.fixture = fixture
        self.clock = clock
        self.count = 0

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        j = self.count
        self.count += 1
        await self.clock.sleep_until(j * AUDIO_FRAME_SAMPLES / AUDIO_RATE)
        packet = av.Packet(self.fixture.audio[j % len(self.fixture.audio)])
        packet.pts = j * AUDIO_FRAME_SAMPLES
        packet.time_base = AUDIO_TIME_BASE
        return packet


def read_barcode(frame: av.VideoFrame) -> int | None:
    """The file frame number burned into a decoded fixture frame, or None if the guard cells are wrong.

    The layout is described at the top of scripts/make-fixtures.
    """
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    stride = plane.line_size
    luma = memoryview(bytes(plane))
    w, h = frame.width, frame.height
    cell = w // 12
    y = h // 16

    def sample(c: int) -> int:
        x = c * cell + cell // 2
        total = 0
        for dy in (-1, 0, 1):
            row = (y + dy) * stride
            total += luma[row + x - 1] + luma[row + x] + luma[row + x + 1]
        return total // 9

    if sample(0) < 160 or sample(11) > 96:
        return None
    n = 0
    for bit in range(10):
        if sample(bit + 1) >= 128:
            n |= 1 << bit
    return n


def unwrap(n: int, newest_sent: int, frames_per_loop: int) -> int:
    """The stream index `g` of file frame `n`: the newest `g <= newest_sent` with `g % frames_per_loop == n`.

    Right as long as a frame is decoded less than one loop (10 s) after it was sent.
    """
    return newest_sent - ((newest_sent - n) % frames_per_loop)


@dataclass
class VideoFigures:
    """What one viewer got of the publisher's video, from its first decoded frame `first` to `last_sent`.

    `window` is the number of frames the publisher sent in that span (the honest denominator: a viewer
    can only start at a keyframe, but from then on it should get every frame, tail included); `decoded`
    the distinct ones the viewer decoded in it.
    """

    first: int  # stream index g of the viewer's first decoded frame
    last_sent: int  # stream index of the last frame the publisher sent in the measured span
    window: int
    decoded: int
    duplicates: int  # decoded frames whose g was already decoded
    out_of_order: int  # decoded frames whose g is below the previous one
    unreadable: int  # decoded frames without a valid barcode
    last_decoded: int

    @property
    def ratio(self) -> float:
        return self.decoded / self.window if self.window else 0.0


def video_figures(
    sent: list[tuple[int, float]], received: list[tuple[float, int | None]], frames_per_loop: int, last_sent: int
) -> VideoFigures:
    """Maps each received frame's barcode back to the stream index the publisher sent it as, and counts."""
    import bisect

    sent_times = [t for _, t in sent]
    gs: list[int | None] = []
    for t, n in received:
        if n is None:
            gs.append(None)
            continue
        i = bisect.bisect_right(sent_times, t) - 1
        if i < 0:
            gs.append(None)  # decoded before anything was sent: cannot be ours
            continue
        gs.append(unwrap(n, sent[i][0], frames_per_loop))
    readable = [g for g in gs if g is not None]
    if not readable:
        return VideoFigures(-1, last_sent, 0, 0, 0, 0, len(gs), -1)
    first = readable[0]
    seen: set[int] = set()
    duplicates = out_of_order = 0
    prev = -1
    for g in readable:
        if g in seen:
            duplicates += 1
        elif g < prev:
            out_of_order += 1
        seen.add(g)
        prev = max(prev, g)
    window = max(0, last_sent - first + 1)
    decoded = sum(1 for g in seen if first <= g <= last_sent)
    return VideoFigures(
        first, last_sent, window, decoded, duplicates, out_of_order, len(gs) - len(readable), max(readable)
    )
