"""Cascade: edges started with `--dial-upstream` pull rooms from their upstream over WHEP.

Three separate hosts on loopback, each with its own ports and runtime directory: an origin, an edge of the
origin, and a second-level edge of that edge. An aiortc publisher sends the fixture to the origin; an aiortc
viewer of the second-level edge must decode the publisher's own frames (their barcodes), every frame in order.
Also: a publisher is refused by an edge; the pulls end after the grace period once the viewer left; an
upstream that goes away leaves the edge's viewer on the slate with the reason in `/rooms` and `/metrics`, and
the picture comes back when the upstream does; a wrong upstream token or path shows as `401` or `404` in `/rooms`
and `/metrics`.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from harness import Sfu, free_tcp_port
from media import MAIN_FIXTURE, SMALL_FIXTURE, VIDEO_FPS, load_fixture, unwrap, video_figures
from rtc import Publisher, Viewer, http_request, wait_for

GRACE_S = 2
# A pulled room has a publisher at the origin, whose GOP is replayed along the chain.
FIRST_FRAME_TIMEOUT = 10.0
MEASURE_SECONDS = 4.0
MIN_VIDEO_RATIO = 0.90
ORIGIN_TOKEN = "origin-token-7"
SLATE_SIZE = (640, 480)


def edge_args(upstream: Sfu, token: str | None = ORIGIN_TOKEN) -> list[str]:
    args = ["--dial-upstream", upstream.url, "--upstream-grace-s", str(GRACE_S)]
    if token:
        args += ["--upstream-token", token]
    return args


@pytest.fixture(scope="module")
def tree(start_sfu) -> tuple[Sfu, Sfu, Sfu]:
    # The origin guards viewing with a token; the edges carry it upstream and guard nothing themselves.
    origin = start_sfu(name="origin", workers=1, extra_args=["--view-token", ORIGIN_TOKEN])
    edge1 = start_sfu(name="edge1", workers=1, extra_args=edge_args(origin))
    edge2 = start_sfu(name="edge2", workers=2, extra_args=edge_args(edge1, token=None))
    return origin, edge1, edge2


def room_entry(sfu: Sfu, room: str) -> dict | None:
    _, body = sfu.rooms()
    return next((r for r in (body or {}).get("rooms", []) if r["name"] == room), None)


def metric(sfu: Sfu, name: str, **labels: str) -> float | None:
    text = sfu.get("/metrics").body
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def live_since(v: Viewer, t: float) -> list[int]:
    """Barcodes of the publisher's frames (the fixture's size, not the slate's) decoded since `t`."""
    return [f.n for f in v.rx.frames_since(t) if f.n is not None and f.size != SLATE_SIZE]


def slate_since(v: Viewer, t: float) -> int:
    return sum(1 for f in v.rx.frames_since(t) if f.size == SLATE_SIZE)


def test_deepest_edge_decodes_the_origin_publisher(tree, figures: list[str]) -> None:
    asyncio.run(deepest_edge(tree, figures))


async def deepest_edge(tree, figures: list[str]) -> None:
    origin, edge1, edge2 = tree
    room = "cascade"
    fixture = load_fixture()
    pub = Publisher(fixture)
    viewer = Viewer("edge2-viewer")
    try:
        r = await pub.publish(origin.url, room)
        assert r.status == 201, f"WHIP to the origin: {r.status} {r.body}"
        await pub.wait_connected()
        r = await viewer.view(edge2.url, room)
        assert r.status == 201, f"WHEP to the second-level edge: {r.status} {r.body}"
        await viewer.wait_connected()
        await wait_for(lambda: live_since(viewer, 0), FIRST_FRAME_TIMEOUT, "a publisher frame at edge2")
        first = next(f for f in viewer.rx.frames if f.n is not None and f.size != SLATE_SIZE)
        figures.append(f"cascade: first publisher frame at the second-level edge {first.t - viewer.t_post:.2f} s after its POST")

        await asyncio.sleep(MEASURE_SECONDS)
        last_sent = pub.video.last_sent()
        await asyncio.sleep(0.5)  # frames in flight at the cut
        live = [(x.t, x.n) for x in viewer.rx.frames if x.size != SLATE_SIZE]
        f = video_figures(pub.video.sent, live, fixture.frames_per_loop, last_sent)
        rtp = await viewer.rtp_counts()
        figures.append(
            f"cascade: origin -> edge1 -> edge2 viewer decoded {f.decoded} of {f.window} frames sent ({f.ratio:.3f}),"
            f" {f.duplicates} repeated, {f.out_of_order} out of order, newest decoded {f.last_decoded} of"
            f" {last_sent} sent; RTP video received/lost {rtp.get('video')}"
        )
        assert f.window >= MEASURE_SECONDS * VIDEO_FPS * 0.9, f"only {f.window} frames measured"
        assert f.ratio >= MIN_VIDEO_RATIO, f"decoded {f.decoded} of {f.window} publisher frames at edge2"
        if rtp.get("video", {}).get("lost", 0) == 0:
            assert f.duplicates == 0 and f.out_of_order == 0, f"frames repeated or out of order at edge2: {f}"

        # A late joiner of the edge starts from the edge's cached GOP: its first frame is one the publisher
        # sent before the viewer's POST (a replayed keyframe), not the next keyframe to come.
        late = Viewer("edge2-late-viewer")
        try:
            sent_at_post = pub.video.last_sent()
            assert (await late.view(edge2.url, room)).status == 201
            await late.wait_connected()
            await wait_for(lambda: live_since(late, 0), FIRST_FRAME_TIMEOUT, "the late joiner's first frame")
            f0 = next(f for f in late.rx.frames if f.n is not None and f.size != SLATE_SIZE)
            g0 = unwrap(f0.n, pub.video.last_sent(), fixture.frames_per_loop)
            figures.append(f"cascade: late joiner at edge2: first frame g {g0} (publisher at g {sent_at_post} at its POST),"
                           f" {1000 * (f0.t - late.t_post):.0f} ms after the POST")
            assert g0 <= sent_at_post, f"the late joiner started at g {g0}, after its POST (g {sent_at_post}): no replay"
        finally:
            await late.close()

        for sfu, upstream in ((edge1, origin), (edge2, edge1)):
            entry = await asyncio.to_thread(room_entry, sfu, room)
            assert entry and entry["state"] == "live", f"{sfu.name} /rooms: {entry}"
            assert entry["upstream"]["state"] == "pulling", f"{sfu.name} /rooms: {entry}"
            assert await asyncio.to_thread(metric, sfu, "deadsfu_upstream_pulling", room=room) == 1
            # The edge is one viewer of its upstream, however many viewers it serves.
            up = await asyncio.to_thread(room_entry, upstream, room)
            assert up and up["viewers"] == 1, f"{upstream.name} /rooms: {up}"

        # The viewer leaves: each edge's pull ends after the grace period (plus the readers' 3 s heartbeat
        # timeout at each level), and the origin is left without viewers.
        t_leave = time.monotonic()
        await viewer.close()

        def origin_viewers() -> int:
            entry = room_entry(origin, room)
            return entry["viewers"] if entry else 0

        await wait_for(lambda: origin_viewers() == 0, 2 * (3 + GRACE_S) + 8, "the pulls to end")
        figures.append(f"cascade: pulls ended {time.monotonic() - t_leave:.1f} s after the last viewer left"
                       f" (grace {GRACE_S} s per level)")
        for sfu in (edge1, edge2):
            entry = await asyncio.to_thread(room_entry, sfu, room)
            assert entry is None or "upstream" not in entry, f"{sfu.name} still pulls: {entry}"
    finally:
        await viewer.close()
        await pub.close()


def test_an_edge_refuses_publishers(tree) -> None:
    _, edge1, _ = tree

    async def attempt() -> tuple[int, str]:
        pub = Publisher(load_fixture(), "edge-publisher")
        try:
            r = await pub.publish(edge1.url, "cascade-pub")
            return r.status, r.body.strip()
        finally:
            await pub.close()

    status, reason = asyncio.run(attempt())
    assert status == 403, f"WHIP to an edge: {status} {reason!r}"
    assert "edge" in reason and "\n" not in reason, reason


def test_edge_publish_takes_publishers(start_sfu, tree) -> None:
    origin, _, _ = tree
    edge = start_sfu(name="edge-publish", workers=1, extra_args=edge_args(origin) + ["--edge-publish", "true"])

    async def attempt() -> int:
        pub = Publisher(load_fixture(), "edge-publisher")
        try:
            return (await pub.publish(edge.url, "local-room")).status
        finally:
            await pub.close()

    assert asyncio.run(attempt()) == 201


@pytest.mark.parametrize(
    "case,status,reason",
    [("wrong-token", "401", "unauthorized"), ("wrong-path", "404", "not_found")],
)
def test_refused_pulls_show_in_rooms_and_metrics(start_sfu, tree, figures: list[str], case: str, status: str,
                                                 reason: str) -> None:
    """An upstream that refuses the pull (a wrong token, a URL that names no deadsfu): the edge's viewer gets the
    slate, the edge retries, and `/rooms` and `/metrics` say why."""
    origin, _, _ = tree
    if case == "wrong-token":
        args = edge_args(origin, token="wrong")
    else:
        args = ["--dial-upstream", origin.url + "/no-such-prefix", "--upstream-token", ORIGIN_TOKEN]
    edge = start_sfu(name=f"edge-{case}", workers=1, extra_args=args)
    room = f"cascade-{status}"

    async def run() -> None:
        viewer = Viewer(f"{case}-viewer")
        try:
            r = await viewer.view(edge.url, room)
            assert r.status == 201, f"WHEP to the edge: {r.status} {r.body}"
            await viewer.wait_connected()

            def failed() -> bool:
                entry = room_entry(edge, room)
                return bool(entry and (entry.get("upstream") or {}).get("failures", 0) >= 2)

            await wait_for(failed, 10, "two failed pulls")
            entry = await asyncio.to_thread(room_entry, edge, room)
            figures.append(f"cascade: {case} -> /rooms {json.dumps(entry['upstream'])}")
            assert entry["state"] == "slate", entry
            assert entry["upstream"]["state"] in ("retrying", "connecting"), entry
            assert status in entry["upstream"]["error"], entry
            n = await asyncio.to_thread(metric, edge, "deadsfu_upstream_pull_failures_total", room=room, reason=reason)
            assert n is not None and n >= 2, f"{reason} failures in /metrics: {n}"
            # The viewer sees the slate meanwhile.
            t = time.monotonic()
            await wait_for(lambda: slate_since(viewer, t) >= 3, 5, "slate frames on the edge")
        finally:
            await viewer.close()

    asyncio.run(run())


def test_upstream_loss_and_restart(tmp_path, start_sfu, figures: list[str]) -> None:
    for d in ("o1", "o2"):
        (tmp_path / d).mkdir()
    origin = Sfu(tmp_path / "o1", workers=1, name="origin-restart").start()
    edge = start_sfu(name="edge-restart", workers=1, extra_args=edge_args(origin, token=None))
    room = "cascade-restart"

    async def run() -> None:
        nonlocal origin
        pub = Publisher(load_fixture())
        viewer = Viewer("restart-viewer")
        try:
            assert (await pub.publish(origin.url, room)).status == 201
            await pub.wait_connected()
            assert (await viewer.view(edge.url, room)).status == 201
            await viewer.wait_connected()
            await wait_for(lambda: live_since(viewer, 0), FIRST_FRAME_TIMEOUT, "publisher frames on the edge")

            # The upstream goes away entirely.
            await pub.close(delete=False)
            t_loss = time.monotonic()
            problems = await asyncio.to_thread(origin.stop)
            assert not problems, problems

            def retrying() -> dict | None:
                entry = room_entry(edge, room)
                up = (entry or {}).get("upstream") or {}
                return entry if up.get("state") == "retrying" and up.get("error") else None

            await wait_for(lambda: retrying() is not None, 15, "the edge to report the lost upstream")
            entry = await asyncio.to_thread(retrying)
            figures.append(f"cascade: upstream gone -> edge /rooms {json.dumps(entry['upstream'])}"
                           f" {time.monotonic() - t_loss:.1f} s after")
            assert entry["state"] == "slate", entry
            await wait_for(lambda: slate_since(viewer, t_loss + 2) >= 3, 10,
                           "slate frames on the edge while the upstream is gone")
            assert not live_since(viewer, t_loss + 1), "publisher frames on the edge after the upstream went away"

            def unreachable() -> float:
                return metric(edge, "deadsfu_upstream_pull_failures_total", room=room, reason="unreachable") or 0

            await wait_for(lambda: unreachable() >= 1, 10, "an unreachable failure in /metrics")

            # The upstream comes back on the same address, and its publisher with it.
            origin = Sfu(tmp_path / "o2", workers=1, name="origin-restart-2", http_port=origin.http_port).start()
            t_back = time.monotonic()
            pub2 = Publisher(load_fixture(), "publisher-2")
            try:
                assert (await pub2.publish(origin.url, room)).status == 201
                await pub2.wait_connected()
                await wait_for(lambda: live_since(viewer, t_back), 20, "publisher frames on the edge again")
                back = next(f for f in viewer.rx.frames_since(t_back) if f.n is not None and f.size != SLATE_SIZE)
                figures.append(f"cascade: publisher frames on the edge {back.t - t_back:.1f} s after the upstream restarted")
                # /rooms is what the processes last pushed to signaling: it says so moments after the frames.
                def pulling_live() -> bool:
                    entry = room_entry(edge, room) or {}
                    return entry.get("state") == "live" and (entry.get("upstream") or {}).get("state") == "pulling"

                await wait_for(lambda: pulling_live(), 2, "the edge's /rooms to say live and pulling")
            finally:
                await pub2.close()
        finally:
            await viewer.close()
            await pub.close(delete=False)

    try:
        asyncio.run(run())
    finally:
        origin.stop()


def test_edge_viewers_switch_rooms(tree, figures: list[str]) -> None:
    """A viewer of an edge switches between two rooms published at the origin; each switch starts the edge's
    pull of the new room (the slate may show until its keyframe arrives)."""
    origin, edge1, _ = tree
    rooms = {"cascade-a": load_fixture(MAIN_FIXTURE), "cascade-b": load_fixture(SMALL_FIXTURE)}
    sizes = {room: (f.width, f.height) for room, f in rooms.items()}

    async def run() -> None:
        pubs = [Publisher(fixture, f"pub-{room}") for room, fixture in rooms.items()]
        viewer = Viewer("switching-viewer")
        try:
            for pub, room in zip(pubs, rooms):
                assert (await pub.publish(origin.url, room)).status == 201
            await asyncio.gather(*(p.wait_connected() for p in pubs))
            assert (await viewer.view(edge1.url, "cascade-a")).status == 201
            await viewer.wait_connected()
            await wait_for(lambda: viewer.rx.first_frame(0, sizes["cascade-a"]) is not None, FIRST_FRAME_TIMEOUT,
                           "room a at the edge")
            for room in ["cascade-b", "cascade-a", "cascade-b"]:
                t = time.monotonic()
                r = await viewer.switch(room)
                assert r.status == 200, f"switch to {room}: {r.status} {r.body}"
                await wait_for(lambda: viewer.rx.first_frame(t, sizes[room]) is not None, 5, f"{room} after the switch")
                f = viewer.rx.first_frame(t, sizes[room])
                figures.append(f"cascade: edge viewer switched to {room}: its first frame {1000 * (f.t - t):.0f} ms after the POST")
                await asyncio.sleep(1.0)
                other = [x for x in viewer.rx.frames_since(f.t + 0.2) if x.size != sizes[room]]
                assert not other, f"frames of another size after switching to {room}: {sorted({x.size for x in other})}"
        finally:
            await viewer.close()
            await asyncio.gather(*(p.close() for p in pubs))

    asyncio.run(run())


def test_https_upstream_with_its_own_ca(tmp_path, start_sfu, figures: list[str]) -> None:
    """An origin serving HTTPS with a self-signed certificate: an edge given it with `--upstream-ca` pulls; an
    edge without it refuses the certificate and says so."""
    from test_https import self_signed

    cert, key = self_signed(tmp_path)
    port = free_tcp_port()
    origin = start_sfu(name="origin-https", workers=1,
                       extra_args=["--https", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key)])
    https_url = f"https://127.0.0.1:{port}"
    trusting = start_sfu(name="edge-ca", workers=1, extra_args=["--dial-upstream", https_url, "--upstream-ca", str(cert)])
    doubting = start_sfu(name="edge-no-ca", workers=1, extra_args=["--dial-upstream", https_url])
    room = "cascade-https"
    fixture = load_fixture()

    async def run() -> None:
        pub = Publisher(fixture)
        viewers = [Viewer("ca-viewer"), Viewer("no-ca-viewer")]
        try:
            assert (await pub.publish(origin.url, room)).status == 201
            await pub.wait_connected()
            for v, edge in zip(viewers, (trusting, doubting)):
                assert (await v.view(edge.url, room)).status == 201
            await asyncio.gather(*(v.wait_connected() for v in viewers))
            await wait_for(lambda: live_since(viewers[0], 0), FIRST_FRAME_TIMEOUT, "publisher frames through https")

            def refused() -> dict | None:
                entry = room_entry(doubting, room)
                up = (entry or {}).get("upstream") or {}
                return up if up.get("failures", 0) >= 1 and up.get("error") else None

            await wait_for(lambda: refused() is not None, 10, "the edge without the CA to fail")
            up = await asyncio.to_thread(refused)
            figures.append(f"cascade: https upstream, edge without its CA -> /rooms {json.dumps(up)}")
            assert "certificate" in up["error"].lower() or "unknownissuer" in up["error"].lower(), up
            assert not live_since(viewers[1], 0), "the edge without the CA showed publisher frames"
        finally:
            for v in viewers:
                await v.close()
            await pub.close()

    asyncio.run(run())
