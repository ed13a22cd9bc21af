"""GOP replay (fast start): a viewer joining mid-GOP starts at once from the GOP cached in the ring, then
continues live with contiguous sequence numbers.

The publisher sends `testsrc-gop5-h264-opus.mkv` (5 s GOP) pre-encoded, so it never makes a keyframe on
request: a viewer that had to wait for the next keyframe would wait up to 5 s. Viewers join at several points
inside a GOP, each early enough that the next keyframe is more than `MAX_TTFF` away. Each must decode its first
frame within `MAX_TTFF` of POSTing its offer, that frame must be the keyframe of the GOP that was current when it
joined, and `live_after(s)` seconds later (the replay, paced at twice the room's bitrate, gains a second a
second on live) its newest decoded frame must be within `MAX_LIVE_LAG` of the publisher's newest frame. On the wire: one SSRC per
track, contiguous sequence numbers, timestamps that never go backwards.
"""

from __future__ import annotations

import asyncio
import time

from harness import Sfu
from media import FIXTURE_DIR, VIDEO_FPS, load_fixture, video_figures
from observe import burst, gop_start, udp_rcvbuf_errors, received_lost, is_keyframe, rtp_lines, rtp_problems, rtp_reports, stream_index
from rtc import Publisher, Viewer, wait_for

ROOM = "gop-replay"
GOP5_FIXTURE = FIXTURE_DIR / "testsrc-gop5-h264-opus.mkv"
# (GOP number, seconds into it) at which each viewer POSTs its offer: each at least MAX_TTFF + 0.3 s before the
# next keyframe, so that a viewer waiting for it fails the time limit instead of passing by luck.
JOIN_AT = [(0, 0.7), (1, 2.0), (2, 3.2)]
MAX_TTFF = 1.5  # seconds from the offer POST to the first decoded frame; the GOP is 5 s
REPLAY_RATE = 2.0  # deadsfu's default replay pace: twice the room's bitrate, so it gains a second a second
# Seconds after the first frame at which the lag to live is measured, for a viewer that joined `into` seconds into a
# GOP: its replay catches up `into` seconds (and the moments its connection took) at REPLAY_RATE - 1 a second.
def live_after(into: float) -> float:
    return into / (REPLAY_RATE - 1) + 0.8
MAX_LIVE_LAG = 0.5  # seconds between the publisher's newest frame and the viewer's newest decoded frame
FIRST_FRAME_TIMEOUT = 7.0  # long enough to see (and report) a viewer that waited for the next keyframe


def test_gop_replay(sfu: Sfu, figures: list[str]) -> None:
    asyncio.run(gop_replay(sfu, figures))


async def gop_replay(sfu: Sfu, figures: list[str]) -> None:
    fixture = load_fixture(GOP5_FIXTURE)
    gop = fixture.keyframes[1] - fixture.keyframes[0]
    assert gop == 5 * VIDEO_FPS, f"{GOP5_FIXTURE.name}: GOP of {gop} frames (run scripts/make-fixtures)"
    pub = Publisher(fixture)
    viewers = [Viewer(f"viewer-{i}-gop{k}+{s}s") for i, (k, s) in enumerate(JOIN_AT)]
    problems: list[str] = []
    lines: list[str] = [f"GOP replay: room {ROOM}, {GOP5_FIXTURE.name} (GOP {gop / VIDEO_FPS:.0f} s), pre-encoded"]

    async def one_viewer(v: Viewer, k: int, s: float) -> None:
        target = k * gop + round(s * VIDEO_FPS)
        await wait_for(lambda: pub.video.last_sent() >= target, target / VIDEO_FPS + 10, f"publisher frame {target}")
        g_post = pub.video.last_sent()
        r = await v.view(sfu.url, ROOM)
        assert r.status == 201, f"{v.name} WHEP: {r.status} {r.body.strip()!r}"
        size = (fixture.width, fixture.height)
        try:
            await wait_for(lambda: v.rx.first_frame(0, size) is not None, FIRST_FRAME_TIMEOUT, f"{v.name}: first frame")
        except AssertionError as e:
            problems.append(f"{e} (joined at publisher frame {g_post}; decoded {len(v.rx.frames)} frames,"
                            f" RTP received/lost {await v.rtp_counts()})")
            return
        first = v.rx.first_frame(0, size)
        ttff = first.t - v.t_post
        g_first = stream_index(pub.video, first)
        after = live_after(s)
        await wait_for(lambda: time.monotonic() >= first.t + after, after + 1, "the live measurement")
        newest_sent = pub.video.last_sent()
        last = v.rx.frames[-1]
        g_last = stream_index(pub.video, last)
        lag = (newest_sent - g_last) / VIDEO_FPS if g_last is not None else float("inf")
        f = video_figures(pub.video.sent, v.rx.video, fixture.frames_per_loop, newest_sent)
        rtp = await v.rtp_counts()
        lines.append(
            f"  {v.name}: POST at publisher frame {g_post} ({(g_post - gop_start(fixture, g_post)) / VIDEO_FPS:.2f} s"
            f" into its GOP, keyframe {gop_start(fixture, g_post)}); time to first frame {ttff * 1000:.0f} ms"
            f" (answer after {(v.t_answer - v.t_post) * 1000:.0f} ms); first frame g {g_first}; after"
            f" {after:.1f} s: newest decoded g {g_last} vs publisher g {newest_sent}, lag {lag * 1000:.0f} ms;"
            f" frames decoded {f.decoded}/{f.window} from the first, repeated {f.duplicates}, out of order"
            f" {f.out_of_order}; {burst(v)}; RTP received/lost {received_lost(rtp)}"
        )
        if ttff >= MAX_TTFF:
            problems.append(f"{v.name}: first frame {ttff:.2f} s after POST (max {MAX_TTFF} s: no GOP replay?)")
        if g_first is None or not is_keyframe(fixture, g_first):
            problems.append(f"{v.name}: first decoded frame g {g_first} is not a keyframe of the fixture")
        elif g_first != gop_start(fixture, g_post):
            problems.append(f"{v.name}: first frame g {g_first} is not the keyframe of the GOP current at the POST"
                            f" (g {g_post}, its keyframe {gop_start(fixture, g_post)})")
        if lag > MAX_LIVE_LAG:
            problems.append(f"{v.name}: {after:.1f} s after its first frame it is {lag:.2f} s behind live"
                            f" (newest decoded g {g_last}, publisher at g {newest_sent})")
        if (f.duplicates or f.out_of_order) and rtp.get("video", {}).get("lost", 0) == 0:
            problems.append(f"{v.name}: {f.duplicates} repeated and {f.out_of_order} out-of-order frames")
        reports = rtp_reports(v)
        lines.extend(rtp_lines(v, reports))
        problems.extend(rtp_problems(v, reports))
        await v.close()

    drops_before = udp_rcvbuf_errors()
    try:
        r = await pub.publish(sfu.url, ROOM)
        assert r.status == 201, f"WHIP publish: {r.status} {r.body.strip()!r}"
        await pub.wait_connected()
        await asyncio.gather(*(one_viewer(v, k, s) for v, (k, s) in zip(viewers, JOIN_AT)))
    finally:
        await asyncio.gather(*(v.close() for v in viewers), pub.close(), return_exceptions=True)
        drops_after = udp_rcvbuf_errors()
        if drops_before is not None and drops_after is not None:
            lines.append(f"  UDP datagrams dropped on full receive buffers during the test (host-wide, /proc/net/snmp"
                         f" RcvbufErrors): {drops_after - drops_before}")
        figures.extend(lines)
    assert not problems, "; ".join(problems)
