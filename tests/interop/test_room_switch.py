"""Room switching without renegotiation: `POST /session/{id}/switch` with `{"room": "B"}`.

Two publishers: room A sends the 640x360 fixture, room B the 320x180 one (both pre-encoded, 2 s GOP, neither
makes a keyframe on request). One viewer switches A -> B -> A -> B -> A -> B. After each switch it must decode a
frame of the new room (told apart by its size, and by its barcode against that room's publisher) within
`MAX_SWITCH_SECONDS`, cut on the keyframe of the new room's current GOP (the cached GOP is replayed), with no
frame of the old room after it; and over the whole session, per track: one SSRC, sequence numbers contiguous,
timestamps never backwards, and at every cut the timestamp step equal to the wall-clock step within 100 ms.
Also: 400 for a bad room name, 404 for an unknown session, each with a one-line reason.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from harness import Sfu
from media import MAIN_FIXTURE, SMALL_FIXTURE, VIDEO_FPS, load_fixture
from observe import gop_start, is_keyframe, rtp_lines, rtp_problems, rtp_reports, stream_index
from rtc import Publisher, Viewer, http_request, wait_for

ROOM_A, ROOM_B = "switch-a", "switch-b"
SWITCHES = [ROOM_B, ROOM_A, ROOM_B, ROOM_A, ROOM_B]
MAX_SWITCH_SECONDS = 1.0  # switch POST -> first decoded frame of the new room
SWITCH_TIMEOUT = 4.0  # long enough to see (and report) a switch that waited for the next keyframe (2 s GOP)
DWELL_SECONDS = 1.5  # time spent in a room after its first frame, before the next switch
MAX_LIVE_LAG = 0.5


@pytest.fixture(scope="module")
def host(start_sfu) -> Sfu:
    return start_sfu(name="deadsfu-switch")


def assert_refused(status: int, body: str, statuses: set[int], what: str) -> None:
    reason = body.strip()
    assert status in statuses, f"{what}: expected {sorted(statuses)}, got {status} {reason!r}"
    assert reason and "\n" not in reason, f"{what}: {status} needs a one-line reason, got {reason!r}"


def test_switch_rooms_without_renegotiation(host: Sfu, figures: list[str]) -> None:
    asyncio.run(switch_rooms(host, figures))


async def switch_rooms(sfu: Sfu, figures: list[str]) -> None:
    fixtures = {ROOM_A: load_fixture(MAIN_FIXTURE), ROOM_B: load_fixture(SMALL_FIXTURE)}
    pubs = {room: Publisher(f, f"publisher-{room}") for room, f in fixtures.items()}
    sizes = {room: (f.width, f.height) for room, f in fixtures.items()}
    viewer = Viewer("switcher")
    lines = [f"room switch: {ROOM_A} {sizes[ROOM_A]} <-> {ROOM_B} {sizes[ROOM_B]}, one viewer, {len(SWITCHES)} switches"]
    problems: list[str] = []
    try:
        for room, p in pubs.items():
            r = await p.publish(sfu.url, room)
            assert r.status == 201, f"WHIP {room}: {r.status} {r.body.strip()!r}"
        await asyncio.gather(*(p.wait_connected() for p in pubs.values()))
        r = await viewer.view(sfu.url, ROOM_A)
        assert r.status == 201, f"WHEP {ROOM_A}: {r.status} {r.body.strip()!r}"
        await wait_for(lambda: viewer.rx.first_frame(0, sizes[ROOM_A]) is not None, 10, f"first frame of {ROOM_A}")
        first = viewer.rx.first_frame(0, sizes[ROOM_A])
        lines.append(f"  joined {ROOM_A}: first frame {(first.t - viewer.t_post) * 1000:.0f} ms after POST")
        await wait_for(lambda: time.monotonic() >= first.t + DWELL_SECONDS, DWELL_SECONDS + 1, "dwell")

        current = ROOM_A
        for i, room in enumerate(SWITCHES):
            pub = pubs[room]
            fixture = fixtures[room]
            g_post = pub.video.last_sent()
            t_post = time.monotonic()
            r = await viewer.switch(room)
            t_resp = time.monotonic()
            assert r.status == 200, f"switch {i + 1} to {room}: {r.status} {r.body.strip()!r}"
            try:
                body = json.loads(r.body)
            except ValueError:
                body = None
            if body != {"room": room}:
                problems.append(f"switch {i + 1} to {room}: 200 with body {r.body.strip()!r}, want {{\"room\": \"{room}\"}}")
            try:
                await wait_for(lambda: viewer.rx.first_frame(t_post, sizes[room]) is not None, SWITCH_TIMEOUT,
                               f"switch {i + 1} to {room}: a frame of {room}")
            except AssertionError as e:
                problems.append(f"{e} (frame sizes since: {sorted({f.size for f in viewer.rx.frames_since(t_post)})})")
                break
            f_new = viewer.rx.first_frame(t_post, sizes[room])
            took = f_new.t - t_post
            g_new = stream_index(pub.video, f_new)
            await wait_for(lambda: time.monotonic() >= f_new.t + DWELL_SECONDS, DWELL_SECONDS + 1, "dwell")
            old_after = [f for f in viewer.rx.frames_since(f_new.t) if f.size != sizes[room]]
            newest = viewer.rx.frames[-1]
            g_last = stream_index(pub.video, newest) if newest.size == sizes[room] else None
            lag = (pub.video.last_sent() - g_last) / VIDEO_FPS if g_last is not None else float("inf")
            lines.append(
                f"  switch {i + 1} {current} -> {room}: 200 after {(t_resp - t_post) * 1000:.0f} ms, first frame of"
                f" {room} {took * 1000:.0f} ms after POST, g {g_new} (publisher at g {g_post}, GOP keyframe"
                f" {gop_start(fixture, g_post)}); frames of the old room after it {len(old_after)};"
                f" lag to live after {DWELL_SECONDS} s {lag * 1000:.0f} ms"
            )
            if took > MAX_SWITCH_SECONDS:
                problems.append(f"switch {i + 1} to {room}: first frame after {took:.2f} s (max {MAX_SWITCH_SECONDS} s)")
            if g_new is None or not is_keyframe(fixture, g_new):
                problems.append(f"switch {i + 1} to {room}: the first frame (g {g_new}) is not a keyframe")
            elif not gop_start(fixture, g_post) <= g_new <= gop_start(fixture, pub.video.last_sent()):
                problems.append(f"switch {i + 1} to {room}: the first frame g {g_new} is older than the GOP current"
                                f" at the switch (keyframe {gop_start(fixture, g_post)})")
            if old_after:
                problems.append(f"switch {i + 1} to {room}: {len(old_after)} frames of another size after the cut"
                                f" ({sorted({f.size for f in old_after})})")
            if lag > MAX_LIVE_LAG:
                problems.append(f"switch {i + 1} to {room}: {lag:.2f} s behind live {DWELL_SECONDS} s after the cut")
            current = room

        reports = rtp_reports(viewer)
        lines.extend(rtp_lines(viewer, reports))
        problems.extend(rtp_problems(viewer, reports))
        cuts = len(reports["video"].splices)
        if cuts != len(SWITCHES):
            problems.append(f"video: {cuts} picture changes (SPS) seen on the wire for {len(SWITCHES)} switches")
    finally:
        await asyncio.gather(viewer.close(), *(p.close() for p in pubs.values()), return_exceptions=True)
        figures.extend(lines)
    assert not problems, "; ".join(problems)


def test_switch_errors(host: Sfu) -> None:
    async def run() -> None:
        v = Viewer("switch-errors")
        try:
            r = await v.view(host.url, "switch-errors")
            assert r.status == 201, f"WHEP: {r.status} {r.body.strip()!r}"
            for bad in ("a.ring", "r" * 65, "a b", ""):
                r = await v.switch(bad)
                assert_refused(r.status, r.body, {400}, f"switch to room {bad!r}")
        finally:
            await v.close()

    asyncio.run(run())
    for session in ("nonexistent", "w0-0000000000000000", "w9-x"):
        r = http_request(host.url, "POST", f"/session/{session}/switch", json.dumps({"room": "b"}),
                         {"Content-Type": "application/json"})
        assert_refused(r.status, r.body, {404}, f"switch of unknown session {session}")
