"""`GET /rooms`: `{"version": N, "rooms": [{"name", "state": "live"|"slate", "codecs", "viewers",
"bitrate_kbps"}]}`; `GET /rooms?wait=N` long-polls until the version differs from N, or 25 s."""

from __future__ import annotations

import asyncio
import time

from harness import Sfu
from media import MAIN_FIXTURE, load_fixture
from rtc import Publisher, Viewer, wait_for

ROOM = "lobby"
MAX_POLL_WAKEUP = 2.0  # a viewer's 201 -> the long-poll returns
LONG_POLL_SECONDS = 25.0


def entry(body: dict, room: str) -> dict | None:
    return next((e for e in body.get("rooms", []) if e.get("name") == room), None)


def get_rooms(sfu: Sfu, wait: int | None = None, timeout: float = 10) -> dict:
    r, body = sfu.rooms(wait, timeout)
    assert r.status == 200, f"GET /rooms{'' if wait is None else f'?wait={wait}'}: {r.status} {r.body.strip()!r}"
    assert (r.header("Content-Type") or "").startswith("application/json"), f"Content-Type {r.header('Content-Type')}"
    assert isinstance(body, dict) and isinstance(body.get("version"), int) and isinstance(body.get("rooms"), list), (
        f"GET /rooms: not {{version, rooms}}: {r.body.strip()[:300]!r}"
    )
    return body


def test_rooms_list_and_long_poll(sfu: Sfu, figures: list[str]) -> None:
    async def run() -> None:
        pub = Publisher(load_fixture(MAIN_FIXTURE))
        viewers = [Viewer("rooms-viewer-1"), Viewer("rooms-viewer-2")]
        try:
            r = await pub.publish(sfu.url, ROOM)
            assert r.status == 201, f"WHIP: {r.status} {r.body.strip()!r}"
            r = await viewers[0].view(sfu.url, ROOM)
            assert r.status == 201, f"WHEP: {r.status} {r.body.strip()!r}"
            await viewers[0].wait_connected()
            seen: dict = {}

            def listed() -> bool:
                seen.update(get_rooms(sfu))
                e = entry(seen, ROOM)
                return bool(e) and e.get("state") == "live" and e.get("viewers") == 1 and (e.get("bitrate_kbps") or 0) > 0

            try:
                await wait_for(listed, 5, f"/rooms to list {ROOM} live with 1 viewer and a bitrate", 0.2)
            except AssertionError as e:
                raise AssertionError(f"{e}; last /rooms: {seen}") from None
            e = entry(seen, ROOM)
            figures.append(f"rooms: {e}")
            # The publisher offers (and sends) only H.264 and Opus: the room carries exactly those.
            codecs = {c.lower() for c in e.get("codecs", [])}
            assert codecs == {"h264", "opus"}, f"codecs of {ROOM}, whose publisher sends H.264 + Opus: {e.get('codecs')}"
            assert isinstance(e["bitrate_kbps"], (int, float)), e

            version = seen["version"]
            poll = asyncio.create_task(asyncio.to_thread(get_rooms, sfu, version, LONG_POLL_SECONDS + 10))
            await asyncio.sleep(0.3)  # let the long-poll reach the server before the change it waits for
            assert not poll.done(), f"/rooms?wait={version} returned at once: {poll.result()}"
            r = await viewers[1].view(sfu.url, ROOM)
            assert r.status == 201, f"second WHEP: {r.status} {r.body.strip()!r}"
            t_joined = time.monotonic()
            done, _ = await asyncio.wait({poll}, timeout=MAX_POLL_WAKEUP + 1)
            assert done, f"/rooms?wait={version} still waiting {MAX_POLL_WAKEUP + 1:.0f} s after a viewer joined"
            woke = time.monotonic() - t_joined
            body = poll.result()
            figures.append(f"rooms: long-poll ?wait={version} returned {woke * 1000:.0f} ms after a viewer's 201,"
                           f" version {body['version']}, {ROOM} viewers {(entry(body, ROOM) or {}).get('viewers')}")
            assert body["version"] != version, f"long-poll returned the same version {version}"
            assert woke <= MAX_POLL_WAKEUP, f"long-poll returned {woke:.2f} s after the viewer joined"

            def two() -> bool:
                return (entry(get_rooms(sfu), ROOM) or {}).get("viewers") == 2

            await wait_for(two, 3, f"/rooms to count 2 viewers in {ROOM}", 0.2)
        finally:
            await asyncio.gather(*(v.close() for v in viewers), pub.close(), return_exceptions=True)

    asyncio.run(run())


def test_long_poll_returns_after_25_s_without_change(sfu: Sfu, figures: list[str]) -> None:
    version = get_rooms(sfu)["version"]
    t0 = time.monotonic()
    try:
        body = get_rooms(sfu, version, timeout=LONG_POLL_SECONDS + 10)
    except OSError as e:
        raise AssertionError(f"GET /rooms?wait={version} on a quiet host failed after {time.monotonic() - t0:.1f} s:"
                             f" {e!r}") from None
    took = time.monotonic() - t0
    figures.append(f"rooms: long-poll on a quiet host returned after {took:.1f} s, version {version} -> {body['version']}")
    assert body["version"] == version, f"the version changed on a quiet host: {version} -> {body['version']}"
    assert LONG_POLL_SECONDS - 1 <= took <= LONG_POLL_SECONDS + 3, f"returned after {took:.1f} s, want about 25 s"
