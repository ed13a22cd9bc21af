"""Helpers shared by the behaviour tests: mapping a viewer's decoded frames back to what a publisher sent, and
the RTP figures and problems of a viewer's session."""

from __future__ import annotations

import bisect

from media import Fixture, PacedVideoTrack, unwrap
from rtc import FrameRx, Viewer
from rtpcheck import StreamReport, check_stream


def stream_index(video: PacedVideoTrack, f: FrameRx) -> int | None:
    """The stream index `g` the publisher sent frame `f` as (None if unreadable or decoded before any was sent)."""
    if f.n is None:
        return None
    times = [t for _, t in video.sent]
    i = bisect.bisect_right(times, f.t) - 1
    if i < 0:
        return None
    g = unwrap(f.n, video.sent[i][0], video.fixture.frames_per_loop)
    return g if g >= 0 else None  # before this publisher's first frame: another source's picture


def gop_start(fixture: Fixture, g: int) -> int:
    """The stream index of the keyframe that starts the GOP frame `g` belongs to."""
    loop, n = divmod(g, fixture.frames_per_loop)
    k = max(k for k in fixture.keyframes if k <= n)
    return loop * fixture.frames_per_loop + k


def is_keyframe(fixture: Fixture, g: int) -> bool:
    return g % fixture.frames_per_loop in fixture.keyframes


def burst(v: Viewer, kind: str = "video", window: float = 0.2) -> str:
    """How the session's first `window` seconds of RTP arrived: a replayed GOP shows as a burst."""
    pkts = v.rtp[kind].media()
    if not pkts:
        return f"no {kind} RTP"
    t0 = pkts[0].t
    head = [p for p in pkts if p.t - t0 <= window]
    return f"{len(head)} {kind} packets in the first {window * 1000:.0f} ms"


def rtp_reports(v: Viewer) -> dict[str, StreamReport]:
    return {kind: check_stream(tap) for kind, tap in v.rtp.items()}


def rtp_lines(v: Viewer, reports: dict[str, StreamReport]) -> list[str]:
    return [f"  {v.name} RTP {r.summary()}" for r in reports.values()]


def rtp_problems(v: Viewer, reports: dict[str, StreamReport], kinds: tuple[str, ...] = ("video", "audio")) -> list[str]:
    out = []
    for kind in kinds:
        r = reports[kind]
        if not r.packets:
            out.append(f"{v.name}: no {kind} RTP at all")
        out += [f"{v.name}: {p}" for p in r.problems()]
    return out


def udp_rcvbuf_errors() -> int | None:
    """The host's count of UDP datagrams dropped because a socket's receive buffer was full (all sockets)."""
    try:
        lines = [line.split() for line in open("/proc/net/snmp") if line.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return None


def received_lost(rtp: dict[str, dict[str, int]]) -> str:
    """aiortc's inbound RTP counters, as `kind received/lost`."""
    return ", ".join(f"{kind} {d.get('received')}/{d.get('lost')}" for kind, d in sorted(rtp.items()))
