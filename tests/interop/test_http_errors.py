"""Client mistakes on WHIP/WHEP get a 4xx with a one-line reason, tokens are enforced, and after every refused
request a good publish still works on the same host, with the same processes (nothing else was lost)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from harness import Sfu
from media import load_fixture
from rtc import Publisher, Response, Viewer, http_request, wait_for

TOKEN = "s3cret-token_for-tests"
WRONG = "not-the-token"

_room_counter = itertools.count()


def fresh_room(prefix: str) -> str:
    return f"{prefix}-{next(_room_counter)}"


async def _offer(kind: str) -> str:
    peer = Publisher(load_fixture(), "offer-maker") if kind == "whip" else Viewer("offer-maker")
    try:
        offer = await peer.pc.createOffer()
        await peer.pc.setLocalDescription(offer)
        return peer.pc.localDescription.sdp
    finally:
        await peer.pc.close()


@pytest.fixture(scope="module")
def offers() -> dict[str, str]:
    """A valid offer for each endpoint (a publisher's sendonly one, a viewer's recvonly one)."""
    return {"whip": asyncio.run(_offer("whip")), "whep": asyncio.run(_offer("whep"))}


def _pids(sfu: Sfu) -> list[int]:
    h = sfu.healthz()
    return [h["signaling"]["pid"], h["ingest"]["pid"], *(w["pid"] for w in h["workers"])]


@pytest.fixture(scope="module")
def host(start_sfu) -> Sfu:
    s = start_sfu(name="deadsfu-open")
    s.baseline_pids = _pids(s)
    return s


@pytest.fixture(scope="module")
def token_host(start_sfu) -> Sfu:
    s = start_sfu(name="deadsfu-token", token=TOKEN)
    s.baseline_pids = _pids(s)
    return s


def assert_refused(r: Response, statuses: set[int], what: str) -> None:
    reason = r.body.strip()
    assert r.status in statuses, f"{what}: expected {sorted(statuses)}, got {r.status} {reason!r}"
    assert reason, f"{what}: {r.status} without a reason in the body"
    assert "\n" not in reason, f"{what}: the reason is not one line: {reason!r}"


def assert_good_publish(sfu: Sfu, room: str | None = None, token: str | None = None, query: bool = False) -> None:
    """Publishes the fixture into a fresh room, sees media reach the ring, DELETEs the session (twice: the second
    is a 404), and checks that no process of the host was replaced."""
    room = room or fresh_room("ok")

    async def run() -> None:
        pub = Publisher(load_fixture(), f"publisher in {room}")
        try:
            path = f"/whip/{room}"
            headers = {}
            if token and query:
                path = sfu.with_token(path, token)
            elif token:
                headers["Authorization"] = f"Bearer {token}"
            r = await pub.offer_answer(sfu.url, path, headers)
            assert r.status == 201, f"good publish to {path}: {r.status} {r.body.strip()!r}"
            await pub.wait_connected()
            await wait_for(sfu.ring_path(room).exists, 5, f"ring of {room}")
            await wait_for(lambda: int(sfu.ring_stat(room)["head"]) > 0, 5, f"media in the ring of {room}", 0.1)
            session = f"/session/{pub.session_id}"
            auth = {"Authorization": f"Bearer {token}"} if token else {}
            d = await asyncio.to_thread(http_request, sfu.url, "DELETE", session, None, auth)
            assert d.status in (200, 204), f"DELETE {session}: {d.status} {d.body.strip()!r}"
            d = await asyncio.to_thread(http_request, sfu.url, "DELETE", session, None, auth)
            assert_refused(d, {404}, f"second DELETE {session}")
        finally:
            await pub.close(delete=False)

    asyncio.run(run())
    assert _pids(sfu) == sfu.baseline_pids, "a process of the host was replaced"


def post(sfu: Sfu, path: str, body: str, content_type: str | None = "application/sdp", **headers: str) -> Response:
    h = dict(headers)
    if content_type is not None:
        h["Content-Type"] = content_type
    return http_request(sfu.url, "POST", path, body, h)


ENDPOINTS = ["whip", "whep"]


def test_good_publish_to_a_64_character_room(host: Sfu) -> None:
    assert_good_publish(host, room="r" * 64)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
def test_wrong_content_type_is_415(host: Sfu, offers: dict[str, str], endpoint: str, content_type) -> None:
    r = post(host, f"/{endpoint}/{fresh_room('ct')}", offers[endpoint], content_type)
    assert_refused(r, {415}, f"{endpoint} with Content-Type {content_type}")
    assert_good_publish(host)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    "body", ["this is not SDP", "v=0\r\n", "", "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP\r\n"],
    ids=["text", "only-v", "empty", "truncated"],
)
def test_garbage_sdp_is_400(host: Sfu, endpoint: str, body: str) -> None:
    r = post(host, f"/{endpoint}/{fresh_room('sdp')}", body)
    assert_refused(r, {400}, f"{endpoint} with body {body!r}")
    assert_good_publish(host)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    "room,statuses",
    [
        ("r" * 65, {400}),
        ("a/b", {400, 404, 405}),  # a slash may already fail routing
        ("a.ring", {400}),
        ("a%20b", {400}),
        ("%2e%2e", {400, 404}),
    ],
    ids=["65-chars", "slash", "dot", "space", "dot-dot"],
)
def test_bad_room_name_is_refused(host: Sfu, offers: dict[str, str], endpoint: str, room: str, statuses) -> None:
    r = post(host, f"/{endpoint}/{room}", offers[endpoint])
    assert_refused(r, statuses, f"{endpoint} to room {room!r}")
    assert_good_publish(host)


@pytest.mark.parametrize("session", ["nonexistent", "w0-0000000000000000", "w9-x"])
def test_delete_unknown_session_is_404(host: Sfu, session: str) -> None:
    r = http_request(host.url, "DELETE", f"/session/{session}")
    assert_refused(r, {404}, f"DELETE /session/{session}")
    assert_good_publish(host)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_missing_token_is_401_with_challenge(token_host: Sfu, offers: dict[str, str], endpoint: str) -> None:
    r = post(token_host, f"/{endpoint}/{fresh_room('tok')}", offers[endpoint])
    assert_refused(r, {401}, f"{endpoint} without a token")
    challenge = r.header("WWW-Authenticate") or ""
    assert challenge.split(" ")[0].lower() == "bearer", f"WWW-Authenticate: {challenge!r}"
    assert_good_publish(token_host, token=TOKEN)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("how", ["header", "query"])
def test_wrong_token_is_401(token_host: Sfu, offers: dict[str, str], endpoint: str, how: str) -> None:
    path = f"/{endpoint}/{fresh_room('tok')}"
    if how == "query":
        r = post(token_host, token_host.with_token(path, WRONG), offers[endpoint])
    else:
        r = post(token_host, path, offers[endpoint], Authorization=f"Bearer {WRONG}")
    assert_refused(r, {401}, f"{endpoint} with a wrong token in the {how}")
    assert_good_publish(token_host, token=TOKEN)


@pytest.mark.parametrize("how", ["header", "query"])
def test_right_token_publishes(token_host: Sfu, how: str) -> None:
    assert_good_publish(token_host, token=TOKEN, query=(how == "query"))


def test_session_delete_needs_no_other_session(host: Sfu) -> None:
    """Two publishers in two rooms; DELETE of one leaves the other's media flowing."""

    async def run() -> None:
        a, b = Publisher(load_fixture(), "pub-a"), Publisher(load_fixture(), "pub-b")
        ra, rb = fresh_room("keep"), fresh_room("drop")
        try:
            for p, room in ((a, ra), (b, rb)):
                r = await p.offer_answer(host.url, f"/whip/{room}")
                assert r.status == 201, f"publish {room}: {r.status} {r.body.strip()!r}"
            await asyncio.gather(a.wait_connected(), b.wait_connected())
            await wait_for(lambda: host.ring_path(ra).exists(), 5, f"ring of {ra}")
            d = await asyncio.to_thread(http_request, host.url, "DELETE", f"/session/{b.session_id}")
            assert d.status in (200, 204), f"DELETE: {d.status} {d.body.strip()!r}"
            head = int(host.ring_stat(ra)["head"])
            await wait_for(lambda: int(host.ring_stat(ra)["head"]) > head + 30, 5, f"{ra} still flowing", 0.1)
        finally:
            await asyncio.gather(a.close(), b.close(delete=False), return_exceptions=True)

    asyncio.run(run())
