"""One publisher per room: a second WHIP while one is live gets 409 with a reason; the room is free at once after
the publisher's DELETE, and within `FREE_SECONDS` after a publisher that vanished without one; a publisher that
reconnects (new session, new SSRCs) is seamless for the viewers: frames resume on the same SSRC with contiguous
sequence numbers and timestamps that keep up with the wall clock."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from harness import Sfu
from media import MAIN_FIXTURE, load_fixture
from observe import received_lost, rtp_lines, rtp_problems, rtp_reports, stream_index
from rtc import Publisher, Response, Viewer, wait_for

FREE_SECONDS = 5.0  # a vanished publisher's room must take a new publisher within this
RESUME_TIMEOUT = 4.0  # new publisher's first frame -> the viewer decodes one of its frames

_rooms = itertools.count()


@pytest.fixture(scope="module")
def host(start_sfu) -> Sfu:
    return start_sfu(name="deadsfu-publishers")


def fresh_room(prefix: str) -> str:
    return f"{prefix}-{next(_rooms)}"


def assert_refused(r: Response, status: int, what: str) -> None:
    reason = r.body.strip()
    assert r.status == status, f"{what}: expected {status}, got {r.status} {reason!r}"
    assert reason and "\n" not in reason, f"{what}: {r.status} needs a one-line reason, got {reason!r}"


async def publish(sfu: Sfu, room: str, name: str) -> tuple[Publisher, Response]:
    pub = Publisher(load_fixture(MAIN_FIXTURE), name)
    r = await pub.publish(sfu.url, room)
    if r.status != 201:
        await pub.close(delete=False)
    return pub, r


async def publish_when_free(sfu: Sfu, room: str, name: str, since: float, timeout: float) -> tuple[Publisher, float, int]:
    """POSTs a new publisher until one gets 201; returns it, the time since `since`, and the number of 409s."""
    refused = 0
    while True:
        pub, r = await publish(sfu, room, name)
        if r.status == 201:
            return pub, time.monotonic() - since, refused
        assert r.status == 409, f"{name}: expected 201 or 409, got {r.status} {r.body.strip()!r}"
        refused += 1
        if time.monotonic() - since > timeout:
            raise AssertionError(f"{name}: room {room} still busy (409 {r.body.strip()!r}) {timeout:.0f} s after"
                                 f" its publisher vanished ({refused} attempts)")
        await asyncio.sleep(0.2)  # polling interval of a deadline loop


def test_second_publisher_is_409_until_delete(host: Sfu, figures: list[str]) -> None:
    async def run() -> None:
        room = fresh_room("busy")
        first, r = await publish(host, room, "first")
        assert r.status == 201, f"first publisher: {r.status} {r.body.strip()!r}"
        pubs = [first]
        try:
            await first.wait_connected()
            second, r = await publish(host, room, "second")
            assert_refused(r, 409, "a second publisher while one is live")
            figures.append(f"publishers: second WHIP to a live room -> 409 {r.body.strip()!r}")
            await first.close()  # DELETE
            third, r = await publish(host, room, "third")
            pubs.append(third)
            assert r.status == 201, f"a new publisher right after the first one's DELETE: {r.status} {r.body.strip()!r}"
            await third.wait_connected()
        finally:
            await asyncio.gather(*(p.close() for p in pubs), return_exceptions=True)

    asyncio.run(run())


@pytest.mark.parametrize("how", ["pc-close", "transport-killed"])
def test_vanished_publisher_frees_the_room(host: Sfu, figures: list[str], how: str) -> None:
    """`pc-close`: aiortc closes its peer connection (DTLS close_notify, no DELETE); `transport-killed`: it stops
    sending and its sockets close (no DTLS alert, no STUN answers: only a timeout can tell)."""

    async def run() -> None:
        room = fresh_room(f"vanish-{how}")
        first, r = await publish(host, room, "vanishing")
        assert r.status == 201, f"publisher: {r.status} {r.body.strip()!r}"
        pubs = [first]
        try:
            await first.wait_connected()
            await wait_for(lambda: host.ring_path(room).exists(), 5, f"ring of {room}")
            await wait_for(lambda: int(host.ring_stat(room)["head"]) > 0, 5, f"media in {room}", 0.1)
            t0 = time.monotonic()
            if how == "pc-close":
                await first.close(delete=False)
            else:
                await first.vanish()
            nxt, took, refused = await publish_when_free(host, room, "next", t0, FREE_SECONDS)
            pubs.append(nxt)
            figures.append(f"publishers: room free {took * 1000:.0f} ms after its publisher vanished ({how},"
                           f" {refused} x 409 before)")
            assert took <= FREE_SECONDS, f"room free only after {took:.1f} s"
            await nxt.wait_connected()
        finally:
            await asyncio.gather(*(p.close() for p in pubs), return_exceptions=True)

    asyncio.run(run())


def test_reconnecting_publisher_is_seamless_for_a_viewer(host: Sfu, figures: list[str]) -> None:
    asyncio.run(reconnect(host, figures))


async def reconnect(sfu: Sfu, figures: list[str]) -> None:
    room = fresh_room("reconnect")
    fixture = load_fixture(MAIN_FIXTURE)
    viewer = Viewer("reconnect-viewer")
    pubs: list[Publisher] = []
    problems: list[str] = []
    lines = [f"publisher reconnects: room {room}, one viewer; DELETE + new publisher, then vanish + new publisher"]

    async def resumes(pub: Publisher, step: str) -> None:
        await wait_for(lambda: pub.video.sent, 5, f"{step}: the publisher's first frame")
        t0 = pub.video.sent[0][1]

        def got_one() -> bool:
            return any(stream_index(pub.video, f) is not None for f in viewer.rx.frames_since(t0)
                       if f.size == (fixture.width, fixture.height))

        try:
            await wait_for(got_one, RESUME_TIMEOUT, f"{step}: a frame of the new publisher")
        except AssertionError as e:
            problems.append(str(e))
            return
        try:
            await wait_for(lambda: any(p.t >= t0 for p in viewer.rtp["audio"].media()), RESUME_TIMEOUT,
                           f"{step}: audio RTP from the new publisher")
        except AssertionError as e:
            problems.append(str(e))
        f = next(f for f in viewer.rx.frames_since(t0) if stream_index(pub.video, f) is not None)
        lines.append(f"  {step}: the viewer's first frame of it {(f.t - t0) * 1000:.0f} ms after its first frame"
                     f" sent, g {stream_index(pub.video, f)}")

    try:
        p1, r = await publish(sfu, room, "publisher-1")
        assert r.status == 201, f"publisher 1: {r.status} {r.body.strip()!r}"
        pubs.append(p1)
        r = await viewer.view(sfu.url, room)
        assert r.status == 201, f"WHEP: {r.status} {r.body.strip()!r}"
        await resumes(p1, "publisher 1")
        await wait_for(lambda: len(viewer.rx.frames) >= 30, 5, "a second of video")

        await p1.close()  # DELETE, then at once a new session with new SSRCs
        p2, r = await publish(sfu, room, "publisher-2")
        assert r.status == 201, f"publisher 2 right after publisher 1's DELETE: {r.status} {r.body.strip()!r}"
        pubs.append(p2)
        await resumes(p2, "publisher 2 (after a DELETE)")
        n = len(viewer.rx.frames)
        await wait_for(lambda: len(viewer.rx.frames) >= n + 30, 5, "a second of video")

        t0 = time.monotonic()
        await p2.vanish()
        p3, took, _ = await publish_when_free(sfu, room, "publisher-3", t0, FREE_SECONDS + 5)
        pubs.append(p3)
        lines.append(f"  publisher 2 vanished; room free after {took * 1000:.0f} ms")
        await resumes(p3, "publisher 3 (after a vanish)")
        n = len(viewer.rx.frames)
        await wait_for(lambda: len(viewer.rx.frames) >= n + 30, 5, "a second of video")

        reports = rtp_reports(viewer)
        lines.append(f"  frame sizes seen {sorted(viewer.rx.video_sizes)}; RTP received/lost"
                     f" {received_lost(await viewer.rtp_counts())}")
        lines.extend(rtp_lines(viewer, reports))
        problems.extend(rtp_problems(viewer, reports))
    finally:
        await asyncio.gather(viewer.close(), *(p.close() for p in pubs), return_exceptions=True)
        figures.extend(lines)
    assert not problems, "; ".join(problems)
