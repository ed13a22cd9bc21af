"""The RTP checker itself (rtpcheck.py), on made-up packets: it must pass a clean stream and name each fault."""

from __future__ import annotations

import struct

from rtpcheck import RtpRec, RtpTap, check_stream, h264_keyframe_signature, vp8_keyframe_signature

SPS_A = bytes([0x67, 0x42, 0xC0, 0x1F, 0xAA])
SPS_B = bytes([0x67, 0x42, 0xC0, 0x0D, 0xBB])


class FakeTap(RtpTap):
    def __init__(self, packets: list[RtpRec]) -> None:  # no receiver to wrap
        self.kind = "video"
        self.packets = packets


def stream(n: int, seq0: int = 65530, ts0: int = 2**32 - 6000, t0: float = 100.0, sig_every: int = 10,
           sig: tuple = ("H264", SPS_A)) -> list[RtpRec]:
    """`n` packets, one per 30 fps frame, wrapping both seq and timestamp; a keyframe every `sig_every`."""
    return [
        RtpRec(t0 + i / 30, 1234, (seq0 + i) & 0xFFFF, (ts0 + 3000 * i) & 0xFFFFFFFF, 102, "H264", 90000, True,
               sig if i % sig_every == 0 else None)
        for i in range(n)
    ]


def test_clean_stream_passes() -> None:
    rep = check_stream(FakeTap(stream(100)))
    assert rep.problems() == [], rep.problems()
    assert rep.packets == 100 and rep.last_seq - rep.first_seq == 99


def test_skip_duplicate_and_rtx_recovery() -> None:
    pkts = stream(50)
    lost, skipped = pkts[10], pkts[20]
    pkts = [p for p in pkts if p not in (lost, skipped)] + [pkts[30]]
    rtx = RtpRec(lost.t + 0.01, 999, 7, lost.ts, 103, "rtx", 90000, False, None, lost.seq)
    rep = check_stream(FakeTap(pkts + [rtx]))
    assert rep.recovered == 1
    assert [s & 0xFFFF for s in rep.skipped] == [skipped.seq]
    assert [s & 0xFFFF for s in rep.duplicates] == [pkts[-1].seq]


def test_second_ssrc_and_timestamp_faults() -> None:
    pkts = stream(40)
    # A new SSRC half-way, and a timestamp that jumps back by 10 s there.
    pkts[20:] = [RtpRec(p.t, 5678, p.seq, (p.ts - 900000) & 0xFFFFFFFF, p.pt, p.codec, p.clock, p.marker, p.keyframe)
                 for p in pkts[20:]]
    problems = " ".join(check_stream(FakeTap(pkts)).problems())
    assert "2 media SSRCs" in problems and "backwards" in problems and "wall-clock" in problems, problems


def test_splice_timestamp_error() -> None:
    a = stream(30)
    # The new source starts 1.5 s after the last packet of the old one, but its timestamp moved only one frame.
    b = [RtpRec(p.t + 1.5, p.ssrc, p.seq, p.ts, p.pt, p.codec, p.clock, p.marker, ("H264", SPS_B) if p.keyframe else None)
         for p in stream(30, seq0=a[-1].seq + 1, ts0=a[-1].ts + 3000, t0=a[-1].t)]
    rep = check_stream(FakeTap(a + b))
    assert len(rep.splices) == 1 and abs(rep.splices[0].error - (1 / 30 - 1.5)) < 0.001, rep.splices
    assert any("splices" in p for p in rep.problems())


def test_keyframe_signatures() -> None:
    stap = bytes([0x78]) + struct.pack("!H", len(SPS_A)) + SPS_A + struct.pack("!H", 2) + bytes([0x68, 0xCE])
    assert h264_keyframe_signature(stap) == ("H264", SPS_A)
    assert h264_keyframe_signature(bytes([0x7C, 0x85, 0x00])) == ("H264", b"IDR")  # FU-A start of an IDR
    assert h264_keyframe_signature(bytes([0x7C, 0x05, 0x00])) is None  # FU-A continuation
    assert h264_keyframe_signature(bytes([0x41, 0x9A])) is None  # non-IDR slice
    # VP8: X=1 with a 15-bit picture id, S=1, PID=0; a keyframe header of 640x480.
    key = bytes([0x90, 0x80, 0x80, 0x01]) + bytes([0x50, 0x42, 0x00, 0x9D, 0x01, 0x2A]) + struct.pack("<HH", 640, 480)
    assert vp8_keyframe_signature(key) == ("VP8", 640, 480)
    inter = bytes([0x90, 0x80, 0x80, 0x01]) + bytes([0x51, 0x42, 0x00, 0x00, 0x00, 0x00, 0, 0, 0, 0])
    assert vp8_keyframe_signature(inter) is None
