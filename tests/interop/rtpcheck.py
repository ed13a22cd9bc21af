"""What a viewer's RTP looked like on the wire, and the splicer's rules checked on it.

`RtpTap` wraps one aiortc `RTCRtpReceiver._handle_rtp_packet` and logs every packet (arrival time, SSRC,
sequence number, timestamp, codec, and for a keyframe a signature of the picture: the H.264 SPS or the VP8
frame size). `check_stream` then checks the media rules of DESIGN.md on one track:

- one SSRC for the whole session (RTX excepted: it rides its own SSRC);
- sequence numbers contiguous: none twice, none skipped. A number missing on the media SSRC counts as skipped
  only if it never came back as an RTX retransmission either (aiortc NACKs what it misses; a packet lost on
  loopback comes back that way, a number the SFU never sent cannot);
- timestamps never go backwards, and never jump by more than `GROSS_JUMP` against the arrival clock;
- at every splice that the payload shows (a keyframe whose picture signature differs from the previous
  keyframe's: another room, the slate, another codec), and after every pause of `PAUSE` or more (a source
  that stopped, e.g. audio while the slate plays), the timestamp step equals the wall-clock step within
  `SPLICE_TOLERANCE`.

Arrival times are taken in asyncio's loop, so a stalled loop skews them by its stall; the fine tolerance is
applied only where the payload proves a source change.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

SPLICE_TOLERANCE = 0.100  # seconds: timestamp step vs wall-clock step at a splice
GROSS_JUMP = 1.0  # seconds: timestamp step vs wall-clock step between any two consecutive packets
PAUSE = 0.5  # seconds without a packet (e.g. no audio while the slate plays): checked like a splice


@dataclass(frozen=True)
class RtpRec:
    t: float  # monotonic arrival time
    ssrc: int
    seq: int
    ts: int
    pt: int
    codec: str  # "H264", "VP8", "opus", "rtx", "?" (lower-case mime subtype kept as aiortc spells it)
    clock: int
    marker: bool
    keyframe: tuple | None  # the picture signature of a keyframe's first packet, else None
    osn: int | None = None  # an RTX packet's original sequence number


def h264_keyframe_signature(payload: bytes) -> tuple | None:
    """("H264", sps) if the packet carries an SPS (single NAL or inside a STAP-A), ("H264", b"IDR") for the first
    fragment or a single NAL of an IDR without one in this packet, else None."""
    if not payload:
        return None
    nal = payload[0] & 0x1F
    if nal == 7:
        return ("H264", bytes(payload))
    if nal == 24:
        off, idr = 1, False
        while off + 2 <= len(payload):
            (size,) = struct.unpack_from("!H", payload, off)
            unit = payload[off + 2: off + 2 + size]
            if unit and unit[0] & 0x1F == 7:
                return ("H264", bytes(unit))
            idr |= bool(unit) and unit[0] & 0x1F == 5
            off += 2 + size
        return ("H264", b"IDR") if idr else None
    if nal == 5:
        return ("H264", b"IDR")
    if nal == 28 and len(payload) > 1 and payload[1] & 0x80 and payload[1] & 0x1F == 5:
        return ("H264", b"IDR")
    return None


def vp8_keyframe_signature(payload: bytes) -> tuple | None:
    """("VP8", width, height) for the first packet of a VP8 keyframe (RFC 7741), else None."""
    if not payload:
        return None
    b0 = payload[0]
    off = 1
    if b0 & 0x80:  # X
        if len(payload) < 2:
            return None
        x = payload[1]
        off = 2
        if x & 0x80:  # I
            off += 2 if len(payload) > off and payload[off] & 0x80 else 1
        if x & 0x40:  # L
            off += 1
        if x & 0x30:  # T or K
            off += 1
    start, pid = b0 & 0x10, b0 & 0x07
    if not start or pid != 0 or len(payload) < off + 10:
        return None
    frame = payload[off:]
    if frame[0] & 0x01:  # P bit: 1 = interframe
        return None
    if frame[3:6] != b"\x9d\x01\x2a":
        return None
    w, h = struct.unpack_from("<HH", frame, 6)
    return ("VP8", w & 0x3FFF, h & 0x3FFF)


class RtpTap:
    """Logs every RTP packet one aiortc receiver gets, before aiortc handles it."""

    def __init__(self, receiver, kind: str) -> None:
        self.kind = kind
        self.packets: list[RtpRec] = []
        self._receiver = receiver
        inner = receiver._handle_rtp_packet

        async def tapped(packet, arrival_time_ms: int) -> None:
            self._log(packet)
            await inner(packet, arrival_time_ms)

        receiver._handle_rtp_packet = tapped

    def _codec(self, pt: int):
        codecs = getattr(self._receiver, "_RTCRtpReceiver__codecs", {})
        return codecs.get(pt)

    def _log(self, packet) -> None:
        codec = self._codec(packet.payload_type)
        name = codec.mimeType.split("/", 1)[1] if codec else "?"
        clock = codec.clockRate if codec else 90000
        osn = None
        sig = None
        if name.lower() == "rtx":
            name = "rtx"
            if len(packet.payload) >= 2:
                (osn,) = struct.unpack_from("!H", packet.payload, 0)
        elif name.upper() == "H264":
            sig = h264_keyframe_signature(packet.payload)
        elif name.upper() == "VP8":
            sig = vp8_keyframe_signature(packet.payload)
        self.packets.append(
            RtpRec(time.monotonic(), packet.ssrc, packet.sequence_number, packet.timestamp, packet.payload_type,
                   name, clock, bool(packet.marker), sig, osn)
        )

    def media(self) -> list[RtpRec]:
        return [p for p in self.packets if p.codec != "rtx"]

    def codecs(self) -> list[str]:
        """The media codecs seen, in order of first appearance."""
        out: list[str] = []
        for p in self.media():
            if p.codec not in out:
                out.append(p.codec)
        return out


@dataclass
class Splice:
    seq: int  # extended sequence number of the first packet of the new source
    t: float  # its arrival time
    before: tuple | None  # picture signature of the previous keyframe
    after: tuple
    wall_step: float  # arrival-time step from the previous packet, seconds
    ts_step: float  # timestamp step from the previous packet, seconds

    @property
    def error(self) -> float:
        return self.ts_step - self.wall_step


@dataclass
class StreamReport:
    kind: str
    packets: int
    ssrcs: list[int]
    codecs: list[str]
    first_seq: int | None = None
    last_seq: int | None = None
    duplicates: list[int] = field(default_factory=list)  # extended seqs received twice on the media SSRC
    skipped: list[int] = field(default_factory=list)  # never received, not even as RTX
    recovered: int = 0  # missing on the media SSRC, came back as RTX
    reordered: int = 0
    backwards: list[tuple[int, float]] = field(default_factory=list)  # (seq, ts step in s) where ts went back
    jumps: list[tuple[int, float, float]] = field(default_factory=list)  # (seq, ts step, wall step), gross
    splices: list[Splice] = field(default_factory=list)
    pauses: list[Splice] = field(default_factory=list)  # steps after a pause of PAUSE or more

    def problems(self, expect_splices: bool = True) -> list[str]:
        out = []
        if len(self.ssrcs) != 1:
            out.append(f"{self.kind}: {len(self.ssrcs)} media SSRCs {self.ssrcs} (want 1)")
        if self.duplicates:
            out.append(f"{self.kind}: {len(self.duplicates)} sequence numbers twice, e.g. {self.duplicates[:5]}")
        if self.skipped:
            out.append(f"{self.kind}: {len(self.skipped)} sequence numbers skipped, e.g. {self.skipped[:5]}")
        if self.backwards:
            out.append(f"{self.kind}: timestamp went backwards {len(self.backwards)} times, e.g. (seq, step s)"
                       f" {[(s, round(d, 3)) for s, d in self.backwards[:5]]}")
        if self.jumps:
            out.append(f"{self.kind}: timestamp step differs from the wall-clock step by > {GROSS_JUMP} s"
                       f" {len(self.jumps)} times, e.g. (seq, ts step s, wall step s)"
                       f" {[(s, round(a, 3), round(b, 3)) for s, a, b in self.jumps[:5]]}")
        bad = [s for s in self.splices if abs(s.error) > SPLICE_TOLERANCE]
        if bad:
            out.append(f"{self.kind}: at {len(bad)} of {len(self.splices)} splices the timestamp step is off the"
                       f" wall-clock step by more than {SPLICE_TOLERANCE * 1000:.0f} ms: "
                       + ", ".join(f"seq {s.seq} ts {s.ts_step * 1000:.0f} ms vs wall {s.wall_step * 1000:.0f} ms"
                                   for s in bad[:5]))
        bad = [s for s in self.pauses if abs(s.error) > SPLICE_TOLERANCE]
        if bad:
            out.append(f"{self.kind}: after {len(bad)} of {len(self.pauses)} pauses the timestamp step is off the"
                       f" wall-clock step by more than {SPLICE_TOLERANCE * 1000:.0f} ms: "
                       + ", ".join(f"seq {s.seq} ts {s.ts_step * 1000:.0f} ms vs wall {s.wall_step * 1000:.0f} ms"
                                   for s in bad[:5]))
        return out

    def summary(self) -> str:
        span = f"seq {self.first_seq}..{self.last_seq}" if self.first_seq is not None else "no packets"
        spl = ", ".join(f"{s.error * 1000:+.0f}" for s in self.splices) or "none"
        pau = ", ".join(f"{s.wall_step:.1f} s {s.error * 1000:+.0f}" for s in self.pauses) or "none"
        return (
            f"{self.kind}: {self.packets} packets, {span}, SSRCs {len(self.ssrcs)}, codecs {'/'.join(self.codecs)},"
            f" twice {len(self.duplicates)}, skipped {len(self.skipped)}, lost+recovered by RTX {self.recovered},"
            f" reordered {self.reordered}, ts backwards {len(self.backwards)}, gross ts jumps {len(self.jumps)};"
            f" splices seen {len(self.splices)}, ts-vs-wall error per splice (ms) [{spl}];"
            f" pauses >= {PAUSE} s and their ts-vs-wall error (ms) [{pau}]"
        )


def _extend(prev_ext: int | None, seq16: int) -> int:
    if prev_ext is None:
        return seq16
    delta = (seq16 - prev_ext) & 0xFFFF
    if delta >= 0x8000:
        delta -= 0x10000
    return prev_ext + delta


def check_stream(tap: RtpTap) -> StreamReport:
    media = tap.media()
    rtx = [p for p in tap.packets if p.codec == "rtx"]
    ssrcs = sorted({p.ssrc for p in media})
    rep = StreamReport(tap.kind, len(media), ssrcs, tap.codecs())
    if not media:
        return rep
    # Extended sequence numbers, in arrival order, across all media packets (a second SSRC shows as its own
    # problem, and its numbers still have to continue the first one's for a viewer's jitter buffer).
    ext: list[tuple[int, RtpRec]] = []
    prev = None
    high = None
    for p in media:
        e = _extend(prev, p.seq)
        if high is not None and e < high:
            rep.reordered += 1
        high = e if high is None else max(high, e)
        ext.append((e, p))
        prev = e
    seen: dict[int, RtpRec] = {}
    for e, p in ext:
        if e in seen:
            rep.duplicates.append(e)
        else:
            seen[e] = p
    lo, hi = min(seen), max(seen)
    rep.first_seq, rep.last_seq = lo, hi
    rtx_osn = {p.osn for p in rtx if p.osn is not None}
    for e in range(lo, hi + 1):
        if e not in seen:
            if (e & 0xFFFF) in rtx_osn:
                rep.recovered += 1
            else:
                rep.skipped.append(e)
    # Timestamps in sequence order.
    ordered = [seen[e] for e in sorted(seen)]
    order_seq = sorted(seen)
    first = ordered[0].keyframe
    last_sig: tuple | None = first if first is not None and first[1] != b"IDR" else None
    for i in range(1, len(ordered)):
        a, b = ordered[i - 1], ordered[i]
        d = (b.ts - a.ts) & 0xFFFFFFFF
        if d >= 0x80000000:
            d -= 0x100000000
        ts_step = d / b.clock
        wall = b.t - a.t
        if d < 0:
            rep.backwards.append((order_seq[i], ts_step))
        if abs(ts_step - wall) > GROSS_JUMP:
            rep.jumps.append((order_seq[i], ts_step, wall))
        if wall >= PAUSE and order_seq[i] == order_seq[i - 1] + 1:
            rep.pauses.append(Splice(order_seq[i], b.t, None, ("pause",), wall, ts_step))
        if b.keyframe is not None and b.keyframe[1] != b"IDR":
            if last_sig is not None and b.keyframe != last_sig and order_seq[i] == order_seq[i - 1] + 1:
                rep.splices.append(Splice(order_seq[i], b.t, last_sig, b.keyframe, wall, ts_step))
            last_sig = b.keyframe
    return rep
