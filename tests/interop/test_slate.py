"""The slate: a room with viewers but no publisher plays a 640x480 "no signal" clip, in the codec the viewer
negotiated; the live picture comes back on the first live keyframe.

One viewer (offering VP8 and H.264, as aiortc does) joins an empty room and must see slate frames (640x480);
a publisher starts and the viewer must see live frames (640x360) from the publisher's first keyframe; the
publisher DELETEs and the slate must be back within `MAX_SLATE_SECONDS`; a new publisher starts and the live
picture returns. No renegotiation anywhere; over the whole session, per track, one SSRC, contiguous sequence
numbers, timestamps never backwards, and at each picture change the timestamp step equals the wall-clock
step within 100 ms. A VP8-only viewer sees the slate in VP8.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from harness import Sfu
from media import MAIN_FIXTURE, load_fixture
from observe import is_keyframe, received_lost, rtp_lines, rtp_problems, rtp_reports, stream_index
from rtc import Publisher, Viewer, wait_for

SLATE_SIZE = (640, 480)
FIRST_SLATE_TIMEOUT = 5.0  # POST -> first slate frame
MAX_LIVE_SECONDS = 1.5  # publisher's first frame sent -> the viewer's first live frame
MAX_SLATE_SECONDS = 1.5  # publisher's DELETE -> the viewer's first slate frame
DWELL_SECONDS = 1.5


@pytest.fixture(scope="module")
def host(start_sfu) -> Sfu:
    return start_sfu(name="deadsfu-slate")


def room_entry(sfu: Sfu, room: str) -> dict | None:
    r, body = sfu.rooms()
    if r.status != 200 or not isinstance(body, dict):
        return None
    return next((e for e in body.get("rooms", []) if e.get("name") == room), None)


def test_slate_live_slate_live(host: Sfu, figures: list[str]) -> None:
    asyncio.run(slate_live_slate_live(host, figures))


async def slate_live_slate_live(sfu: Sfu, figures: list[str]) -> None:
    room = "slate-room"
    fixture = load_fixture(MAIN_FIXTURE)
    live_size = (fixture.width, fixture.height)
    viewer = Viewer("slate-viewer")
    pubs: list[Publisher] = []
    lines = [f"slate: room {room}, one viewer (VP8 + H.264 offered), slate -> live -> slate -> live"]
    problems: list[str] = []

    async def go_live(step: str) -> None:
        pub = Publisher(fixture, f"publisher-{len(pubs) + 1}")
        pubs.append(pub)
        r = await pub.publish(sfu.url, room)
        assert r.status == 201, f"{step}: WHIP: {r.status} {r.body.strip()!r}"
        await wait_for(lambda: pub.video.sent, 10, f"{step}: the publisher's first frame")
        t0 = pub.video.sent[0][1]
        try:
            await wait_for(lambda: viewer.rx.first_frame(t0, live_size) is not None, 6, f"{step}: a live frame")
        except AssertionError as e:
            problems.append(f"{e} (sizes since: {sorted({f.size for f in viewer.rx.frames_since(t0)})})")
            return
        f = viewer.rx.first_frame(t0, live_size)
        g = stream_index(pub.video, f)
        lines.append(f"  {step}: first live frame {(f.t - t0) * 1000:.0f} ms after the publisher's first frame,"
                     f" g {g}{' (keyframe)' if g is not None and is_keyframe(fixture, g) else ''}")
        if f.t - t0 > MAX_LIVE_SECONDS:
            problems.append(f"{step}: live {f.t - t0:.2f} s after the publisher's first frame (max {MAX_LIVE_SECONDS})")
        if g is None or not is_keyframe(fixture, g):
            problems.append(f"{step}: the first live frame (g {g}) is not a keyframe")
        await wait_for(lambda: time.monotonic() >= f.t + DWELL_SECONDS, DWELL_SECONDS + 1, "dwell")
        slate_after = [x for x in viewer.rx.frames_since(f.t) if x.size == SLATE_SIZE]
        if slate_after:
            problems.append(f"{step}: {len(slate_after)} slate frames after the first live frame")

    async def back_to_slate(step: str) -> None:
        pub = pubs[-1]
        t0 = time.monotonic()
        await pub.close()  # DELETE
        try:
            await wait_for(lambda: viewer.rx.first_frame(t0, SLATE_SIZE) is not None, 5, f"{step}: a slate frame")
        except AssertionError as e:
            problems.append(f"{e} (sizes since: {sorted({f.size for f in viewer.rx.frames_since(t0)})})")
            return
        f = viewer.rx.first_frame(t0, SLATE_SIZE)
        lines.append(f"  {step}: first slate frame {(f.t - t0) * 1000:.0f} ms after the publisher's DELETE")
        if f.t - t0 > MAX_SLATE_SECONDS:
            problems.append(f"{step}: slate {f.t - t0:.2f} s after the DELETE (max {MAX_SLATE_SECONDS})")
        await wait_for(lambda: time.monotonic() >= f.t + DWELL_SECONDS, DWELL_SECONDS + 1, "dwell")
        live_after = [x for x in viewer.rx.frames_since(f.t) if x.size == live_size]
        if live_after:
            problems.append(f"{step}: {len(live_after)} live frames after the slate came back")

    try:
        r = await viewer.view(sfu.url, room)
        assert r.status == 201, f"WHEP to an empty room: {r.status} {r.body.strip()!r}"
        await wait_for(lambda: viewer.rx.first_frame(0, SLATE_SIZE) is not None, FIRST_SLATE_TIMEOUT,
                       f"a slate frame {SLATE_SIZE} (sizes seen {sorted(viewer.rx.video_sizes)})")
        f = viewer.rx.first_frame(0, SLATE_SIZE)
        entry = await asyncio.to_thread(room_entry, sfu, room)
        lines.append(f"  viewer before any publisher: first slate frame {(f.t - viewer.t_post) * 1000:.0f} ms after"
                     f" POST; /rooms entry {entry}")
        if not entry or entry.get("state") != "slate" or entry.get("viewers") != 1:
            problems.append(f"/rooms: {room} without publisher should be state slate with 1 viewer: {entry}")
        await wait_for(lambda: time.monotonic() >= f.t + DWELL_SECONDS, DWELL_SECONDS + 1, "dwell")
        await go_live("publisher 1 starts")
        await back_to_slate("publisher 1 DELETEs")
        await go_live("publisher 2 starts")
        reports = rtp_reports(viewer)
        lines.append(f"  frame sizes seen {sorted(viewer.rx.video_sizes)}; RTP received/lost"
                     f" {received_lost(await viewer.rtp_counts())}")
        lines.extend(rtp_lines(viewer, reports))
        problems.extend(rtp_problems(viewer, reports, kinds=("video",)))
        # Audio: the slate may be silent, but what is sent must follow the same rules.
        problems.extend(p for p in rtp_problems(viewer, reports, kinds=("audio",)) if "no audio RTP" not in p)
        cuts = len(reports["video"].splices)
        if cuts != 3:
            problems.append(f"video: {cuts} picture changes seen on the wire for slate->live->slate->live (want 3)")
    finally:
        await asyncio.gather(viewer.close(), *(p.close() for p in pubs), return_exceptions=True)
        figures.extend(lines)
    assert not problems, "; ".join(problems)


def test_vp8_viewer_sees_the_slate_in_vp8(host: Sfu, figures: list[str]) -> None:
    async def run() -> None:
        v = Viewer("vp8-slate-viewer", video_codecs=["VP8"])
        try:
            r = await v.view(host.url, "slate-vp8")
            assert r.status == 201, f"WHEP (VP8 only) to an empty room: {r.status} {r.body.strip()!r}"
            try:
                await wait_for(lambda: v.rx.first_frame(0, SLATE_SIZE) is not None, FIRST_SLATE_TIMEOUT,
                               f"a slate frame {SLATE_SIZE}")
            except AssertionError as e:
                video = v.rtp["video"]
                raise AssertionError(
                    f"{e}: sizes decoded {sorted(v.rx.video_sizes)}, video RTP packets {len(video.packets)}"
                    f" (codecs {video.codecs()}), audio RTP packets {len(v.rtp['audio'].packets)},"
                    f" connection {v.pc.connectionState}"
                ) from None
            f = v.rx.first_frame(0, SLATE_SIZE)
            await wait_for(lambda: time.monotonic() >= f.t + 1.0, 2, "a second of slate")
            reports = rtp_reports(v)
            figures.append(f"slate, VP8-only viewer: first slate frame {(f.t - v.t_post) * 1000:.0f} ms after POST,"
                           f" video codecs on the wire {reports['video'].codecs}, frames decoded {len(v.rx.frames)}")
            figures.extend(rtp_lines(v, reports))
            assert reports["video"].codecs == ["VP8"], f"video codecs on the wire: {reports['video'].codecs}"
            problems = rtp_problems(v, reports, kinds=("video",))
            assert not problems, "; ".join(problems)
        finally:
            await v.close()

    asyncio.run(run())


def test_no_slate_when_switched_off(start_sfu, figures: list[str]) -> None:
    """`--slate false`: a viewer of a room nobody publishes to gets no video until a publisher comes, then
    gets the publisher's frames."""
    sfu = start_sfu(name="deadsfu-no-slate", extra_args=["--slate", "false"])
    fixture = load_fixture(MAIN_FIXTURE)
    live_size = (fixture.width, fixture.height)

    async def run() -> None:
        viewer = Viewer("no-slate-viewer")
        pub = Publisher(fixture)
        try:
            assert (await viewer.view(sfu.url, "no-slate")).status == 201
            await viewer.wait_connected()
            await asyncio.sleep(2.0)
            assert not viewer.rx.frames, f"frames without a publisher: {sorted({f.size for f in viewer.rx.frames})}"
            entry = await asyncio.to_thread(room_entry, sfu, "no-slate")
            assert entry and entry["state"] == "idle", entry
            t = time.monotonic()
            assert (await pub.publish(sfu.url, "no-slate")).status == 201
            await wait_for(lambda: viewer.rx.first_frame(t, live_size) is not None, 5, "a live frame")
            figures.append(f"no slate: first live frame {viewer.rx.first_frame(t, live_size).t - t:.2f} s after the publisher's POST")
            assert all(f.size == live_size for f in viewer.rx.frames), sorted({f.size for f in viewer.rx.frames})
        finally:
            await viewer.close()
            await pub.close()

    asyncio.run(run())
