"""A viewer whose offer shares no codec with the room's live publisher gets a clear 4xx, not a black screen: the
room publishes H.264, a video-only viewer offering only VP8 gets 406 with a one-line reason naming the room's
codec; a viewer offering VP8 and H.264 gets 201 and decodes the room's H.264. (One that also asks for audio
gets 201 with its video answered inactive: test_partial.py.)"""

from __future__ import annotations

import asyncio

import pytest

from harness import Sfu
from media import MAIN_FIXTURE, load_fixture
from observe import rtp_reports
from rtc import Publisher, Viewer, wait_for

ROOM = "codecs"


def answer_video_codecs(sdp: str) -> list[str]:
    """The codec names of an SDP's video section (`a=rtpmap` lines)."""
    out, video = [], False
    for line in sdp.splitlines():
        if line.startswith("m="):
            video = line.startswith("m=video")
        elif video and line.startswith("a=rtpmap:"):
            out.append(line.split(" ", 1)[1].split("/")[0])
    return out


@pytest.fixture(scope="module")
def host(start_sfu) -> Sfu:
    return start_sfu(name="deadsfu-codecs")


def test_viewer_without_a_common_codec_is_406(host: Sfu, figures: list[str]) -> None:
    async def run() -> None:
        fixture = load_fixture(MAIN_FIXTURE)
        pub = Publisher(fixture)
        vp8 = Viewer("vp8-only", video_codecs=["VP8"], kinds=("video",))
        both = Viewer("vp8-and-h264", video_codecs=["VP8", "H264"])
        try:
            r = await pub.publish(host.url, ROOM)
            assert r.status == 201, f"WHIP: {r.status} {r.body.strip()!r}"
            await pub.wait_connected()
            await wait_for(lambda: host.ring_path(ROOM).exists(), 5, f"ring of {ROOM}")
            await wait_for(lambda: int(host.ring_stat(ROOM)["head"]) > 0, 5, f"media in {ROOM}", 0.1)

            r = await vp8.view(host.url, ROOM)
            reason = r.body.strip()
            shown = reason if r.status != 201 else f"an answer with m=video {answer_video_codecs(reason)}"
            figures.append(f"codecs: VP8-only viewer of an H.264 room -> {r.status} {shown}")
            assert r.status == 406, f"VP8-only viewer of an H.264 room: {r.status} {shown}"
            assert reason and "\n" not in reason, f"406 needs a one-line reason: {reason!r}"
            names = reason.upper().replace(".", "")
            assert "H264" in names, f"the reason does not name the room's codec (H264): {reason!r}"

            r = await both.view(host.url, ROOM)
            assert r.status == 201, f"VP8 + H.264 viewer: {r.status} {r.body.strip()!r}"
            size = (fixture.width, fixture.height)
            await wait_for(lambda: both.rx.first_frame(0, size) is not None, 5, "a frame of the room")
            codecs = rtp_reports(both)["video"].codecs
            figures.append(f"codecs: VP8 + H.264 viewer -> 201, video codecs on the wire {codecs}")
            assert codecs == ["H264"], f"video codecs on the wire: {codecs}"
        finally:
            await asyncio.gather(vp8.close(), both.close(), pub.close(), return_exceptions=True)

    asyncio.run(run())
