"""Viewers and publishers of one kind: a viewer gets the kinds it asked for (video only, audio only); a kind the
room's publisher does not send, or sends only in codecs the viewer cannot decode, is answered inactive while the
rest plays (406 when nothing is left); a publisher may send audio only (viewers get the slate's picture) or video
only. An audio-only viewer of a room whose publisher leaves stays, in silence; one-kind viewers
switch rooms as any viewer does."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from harness import Sfu
from media import SMALL_FIXTURE, load_fixture
from rtc import Publisher, Response, Viewer, wait_for

_rooms = itertools.count()
PLAY_SECONDS = 3.0  # each viewer decodes for this long


@pytest.fixture(scope="module")
def host(start_sfu) -> Sfu:
    return start_sfu(name="deadsfu-partial")


def fresh_room(prefix: str) -> str:
    return f"{prefix}-{next(_rooms)}"


def answered(r: Response, name: str) -> None:
    assert r.status == 201, f"{name}: {r.status} {r.body.strip()!r}"


def sections(sdp: str) -> dict[str, str]:
    """Each media section's kind and direction in an answer."""
    out: dict[str, str] = {}
    kind = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ")[0]
            out[kind] = "sendrecv"
        elif kind and line in ("a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive"):
            out[kind] = line[2:]
    return out


async def watch(sfu: Sfu, room: str, *viewers: Viewer) -> dict[str, Response]:
    answers = {}
    for v in viewers:
        r = await v.view(sfu.url, room)
        answered(r, v.name)
        answers[v.name] = r
    for v in viewers:
        await v.wait_connected()
    return answers


def test_video_only_and_audio_only_viewers_of_an_audio_video_room(host):
    room = fresh_room("av")

    async def run() -> None:
        pub = Publisher(load_fixture(SMALL_FIXTURE), "publisher")
        video_only = Viewer("video-only", kinds=("video",))
        audio_only = Viewer("audio-only", kinds=("audio",))
        both = Viewer("both")
        try:
            answered(await pub.publish(host.url, room), "publisher")
            await pub.wait_connected()
            answers = await watch(host, room, video_only, audio_only, both)
            assert sections(answers["video-only"].body) == {"video": "sendonly"}
            assert sections(answers["audio-only"].body) == {"audio": "sendonly"}
            t0 = time.monotonic()
            await wait_for(lambda: len(video_only.rx.frames_since(t0)) >= 30, 10, "video-only: 30 frames")
            await wait_for(lambda: len([t for t in audio_only.rx.audio if t >= t0]) >= 50, 10, "audio-only: 1 s of audio")
            await wait_for(lambda: len(both.rx.frames_since(t0)) >= 30 and len(both.rx.audio) >= 50, 10, "both")
            await asyncio.sleep(PLAY_SECONDS)
            assert not video_only.rx.audio and not audio_only.rx.frames
            viewers = {r["name"]: r["viewers"] for r in host.rooms()[1]["rooms"]}
            assert viewers.get(room) == 3, viewers
        finally:
            for peer in (video_only, audio_only, both, pub):
                await peer.close()

    asyncio.run(run())


def test_a_kind_in_no_codec_of_the_room_is_answered_inactive_and_the_rest_plays(host):
    room = fresh_room("vp8-in-h264")

    async def run() -> None:
        pub = Publisher(load_fixture(SMALL_FIXTURE), "publisher")
        vp8_viewer = Viewer("vp8", video_codecs=["VP8"])
        vp8_video_only = Viewer("vp8-video-only", video_codecs=["VP8"], kinds=("video",))
        try:
            answered(await pub.publish(host.url, room), "publisher")
            await pub.wait_connected()
            # Once the publisher's H.264 is in the room, the slate plays only in H.264 too: VP8 has nothing.
            await wait_for(lambda: any(r["name"] == room and r["state"] == "live" for r in host.rooms()[1]["rooms"]),
                           10, "the room live")
            answers = await watch(host, room, vp8_viewer)
            assert sections(answers["vp8"].body) == {"audio": "sendonly", "video": "inactive"}, answers["vp8"].body
            t0 = time.monotonic()
            await wait_for(lambda: len([t for t in vp8_viewer.rx.audio if t >= t0]) >= 50, 10, "vp8 viewer: audio")
            r = await vp8_video_only.view(host.url, room)
            assert r.status == 406, f"{r.status} {r.body.strip()!r}"
            assert "no video codec of the room (H264)" in r.body, r.body
        finally:
            for peer in (vp8_viewer, vp8_video_only, pub):
                await peer.close()

    asyncio.run(run())


@pytest.mark.parametrize("kind", ["audio", "video"])
def test_a_publisher_of_one_kind_and_its_viewers(host, kind):
    room = fresh_room(f"{kind}-only")

    async def run() -> None:
        pub = Publisher(load_fixture(SMALL_FIXTURE), f"{kind}-publisher", kinds=(kind,))
        same_kind = Viewer(f"{kind}-viewer", kinds=(kind,))
        both = Viewer("both")
        try:
            answered(await pub.publish(host.url, room), pub.name)
            await pub.wait_connected()
            answers = await watch(host, room, same_kind, both)
            # What the publisher does not send is answered inactive; video stays for the slate.
            expected = {"audio": "sendonly", "video": "sendonly"} if kind == "audio" else {"audio": "inactive", "video": "sendonly"}
            assert sections(answers["both"].body) == expected, answers["both"].body
            if kind == "video":
                refused = Viewer("audio-viewer", kinds=("audio",))
                r = await refused.view(host.url, room)
                await refused.close()
                assert r.status == 406 and "publisher sends none" in r.body, f"{r.status} {r.body.strip()!r}"
            t0 = time.monotonic()
            if kind == "audio":
                for v in (same_kind, both):
                    await wait_for(lambda: len([t for t in v.rx.audio if t >= t0]) >= 50, 10, f"{v.name}: audio")
            else:
                for v in (same_kind, both):
                    await wait_for(lambda: len(v.rx.frames_since(t0)) >= 30, 10, f"{v.name}: video")
                assert not both.rx.audio, "audio from a video-only publisher"
            # The publisher leaves: the viewers stay (silence for audio, the slate for video).
            await pub.close()
            await asyncio.sleep(PLAY_SECONDS)
            for v in (same_kind, both):
                assert v.pc.connectionState == "connected", f"{v.name}: {v.pc.connectionState}"
            viewers = {r["name"]: r["viewers"] for r in host.rooms()[1]["rooms"]}
            assert viewers.get(room) == 2, viewers
        finally:
            for peer in (same_kind, both, pub):
                await peer.close()

    asyncio.run(run())


def test_one_kind_viewers_switch_rooms(host):
    rooms = [fresh_room("switch-from"), fresh_room("switch-to")]

    async def run() -> None:
        pubs = [Publisher(load_fixture(SMALL_FIXTURE), f"publisher-{i}") for i in range(2)]
        video_only = Viewer("video-only", kinds=("video",))
        audio_only = Viewer("audio-only", kinds=("audio",))
        try:
            for pub, room in zip(pubs, rooms):
                answered(await pub.publish(host.url, room), pub.name)
                await pub.wait_connected()
            await watch(host, rooms[0], video_only, audio_only)
            t0 = time.monotonic()
            await wait_for(lambda: len(video_only.rx.frames_since(t0)) >= 10, 10, "video-only: frames of the first room")
            await wait_for(lambda: len([t for t in audio_only.rx.audio if t >= t0]) >= 25, 10, "audio-only: audio")
            for v in (video_only, audio_only):
                r = await v.switch(rooms[1])
                assert r.status == 200, f"{v.name}: switch: {r.status} {r.body.strip()!r}"
            t1 = time.monotonic()
            await wait_for(lambda: len(video_only.rx.frames_since(t1)) >= 10, 10, "video-only: frames after the switch")
            await wait_for(lambda: len([t for t in audio_only.rx.audio if t >= t1]) >= 25, 10, "audio-only: audio after")
            viewers = {r["name"]: r["viewers"] for r in host.rooms()[1]["rooms"]}
            assert viewers.get(rooms[1]) == 2 and not viewers.get(rooms[0]), viewers
        finally:
            for peer in (video_only, audio_only, *pubs):
                await peer.close()

    asyncio.run(run())
