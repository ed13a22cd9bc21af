"""Anonymous clients that mean harm, against a running host with default limits (except where a test names a
flag): each attack is refused or absorbed, no process restarts, nothing is left behind, and a real publisher
and viewer keep working."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import threading
import time
import uuid

import pytest

from harness import Sfu
from media import load_fixture
from rtc import Publisher, Viewer, http_request, publish_and_view, wait_for


def _pids(sfu: Sfu) -> dict[str, int]:
    h = sfu.healthz()
    pids = {"signaling": h["signaling"]["pid"], "ingest": h["ingest"]["pid"]}
    pids.update({f"fanout-{w['index']}": w["pid"] for w in h["workers"]})
    return pids


def _ring_files(sfu: Sfu) -> list[str]:
    rings = sfu.runtime_dir / "rings"
    return sorted(p.name for p in rings.iterdir()) if rings.is_dir() else []


def _tmpfs_bytes(sfu: Sfu) -> int:
    out = subprocess.run(["du", "-sb", str(sfu.runtime_dir)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def _raw(sfu: Sfu, data: bytes, timeout: float = 10) -> bytes:
    """Sends raw bytes to the HTTP listener and reads until the server closes."""
    with socket.create_connection(("127.0.0.1", sfu.http_port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
        return out


def _status(answer: bytes) -> int:
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


@pytest.fixture(scope="module")
def host(start_sfu) -> Sfu:
    s = start_sfu(name="deadsfu-hostile", extra_args=["--room-grace-s", "1"])
    s.baseline_pids = _pids(s)
    return s


def assert_nothing_restarted(sfu: Sfu) -> None:
    assert _pids(sfu) == sfu.baseline_pids, "a process restarted"


def test_an_absurd_content_length_is_refused_and_signaling_stays(host):
    for length in (2**64 - 1, 2**63 - 1, 2**40):
        answer = _raw(
            host,
            f"POST /whep/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/sdp\r\nContent-Length: {length}\r\n\r\n".encode(),
        )
        assert _status(answer) in (413, 431), answer[:300]
    assert_nothing_restarted(host)


def test_refused_requests_leave_no_rooms_and_no_ring_files(host):
    rings_before, used_before = _ring_files(host), _tmpfs_bytes(host)
    statuses = set()
    for i in range(100):
        r = http_request(host.url, "POST", f"/whep/r{uuid.uuid4().hex[:12]}", "v=0", {"Content-Type": "application/sdp"})
        statuses.add(r.status)
        r = http_request(host.url, "POST", f"/session/w0-{i:04x}/switch?room=s{uuid.uuid4().hex[:12]}", "")
        statuses.add(r.status)
    assert statuses <= {400, 404}, statuses
    # Nothing is made for them at all (not even for a grace period).
    assert _ring_files(host) == rings_before
    assert _tmpfs_bytes(host) - used_before < 64 * 1024
    assert not any(r["name"].startswith(("r", "s")) and len(r["name"]) == 13 for r in host.rooms()[1]["rooms"])
    assert_nothing_restarted(host)


def test_a_room_whose_viewers_left_is_removed_with_its_ring(host):
    room = f"gone-{uuid.uuid4().hex[:6]}"

    async def run() -> None:
        v = Viewer("leaver")
        try:
            r = await v.view(host.url, room)
            assert r.status == 201, r.body
            await v.wait_connected()
            await wait_for(lambda: f"{room}.ring" in _ring_files(host), 10, "the room's ring")
        finally:
            await v.close()

    asyncio.run(run())
    # Reader heartbeat timeout (3 s) + room grace (1 s) + housekeeping.
    deadline = time.monotonic() + 20
    while f"{room}.ring" in _ring_files(host) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"{room}.ring" not in _ring_files(host), "the ring of an unused room is still there"
    assert room not in [r["name"] for r in host.rooms()[1]["rooms"]]


def test_a_viewer_past_the_room_limit_is_503_and_holds_nothing(start_sfu):
    sfu = start_sfu(name="deadsfu-room-limit", extra_args=["--max-rooms", "1"])

    async def run() -> None:
        first, second = Viewer("first"), Viewer("second")
        try:
            r = await first.view(sfu.url, "only")
            assert r.status == 201, r.body
            await first.wait_connected()
            r = await second.view(sfu.url, "one-too-many")
            assert r.status == 503, (r.status, r.body)
            assert r.header("Retry-After") == "1", r.headers
            assert "limit of 1 rooms" in r.body, r.body
            # The session the worker made for it is gone again (once its goodbye is out), and no ring was made.
            await wait_for(lambda: sum(w["viewers"] for w in sfu.healthz()["workers"]) == 1, 3,
                           "the refused viewer's worker session to close")
            assert _ring_files(sfu) == ["only.ring"]
        finally:
            await first.close()
            await second.close()

    asyncio.run(run())


def test_a_room_past_what_the_runtime_directory_holds_is_503_and_holds_nothing(tmp_path):
    """A runtime directory on a 20 MiB tmpfs holds two rings of the default 8 MiB: ingest says so at start, a
    third room is refused with a reason, leaves no file, and the two rooms it holds keep working."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m,mode=0700", "tmpfs", str(small)], check=True)
    sfu = Sfu(tmp_path, name="deadsfu-small-tmpfs", workers=1, runtime_dir=small / "d")
    try:
        sfu.start()
        assert "holds 2 rings, fewer than max_rooms" in sfu.log_text(), sfu.log_text()
        pids = _pids(sfu)

        async def run() -> None:
            viewers = [Viewer(name) for name in ("one", "two", "three")]
            try:
                for v in viewers[:2]:
                    r = await v.view(sfu.url, v.name)
                    assert r.status == 201, r.body
                    await v.wait_connected()
                r = await viewers[2].view(sfu.url, "three")
                assert r.status == 503, (r.status, r.body)
                assert "no room for a ring" in r.body and "ring_slots" in r.body, r.body
                assert _ring_files(sfu) == ["one.ring", "two.ring"]
                # The rooms it holds still play (the slate, there being no publisher).
                for v in viewers[:2]:
                    await wait_for(lambda v=v: len(v.rx.frames) > 0, 10, f"viewer {v.name}'s first frame")
            finally:
                for v in viewers:
                    await v.close()

        asyncio.run(run())
        assert _pids(sfu) == pids, "a process restarted"
    finally:
        problems = sfu.stop()
        subprocess.run(["umount", "-l", str(small)], check=False)
    assert not problems, problems


# Payload types bound to different codecs in different m-lines: str0m asserted on these.
PT_REUSE_OFFERS = {
    "video vp8 96 + audio opus 96": (
        ("video", "96", ["a=rtpmap:96 VP8/90000"]),
        ("audio", "96", ["a=rtpmap:96 opus/48000/2"]),
    ),
    "vp8 96 + rtx 97, then h264 97": (
        ("video", "96 97", ["a=rtpmap:96 VP8/90000", "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96"]),
        ("video", "97", ["a=rtpmap:97 H264/90000", "a=fmtp:97 packetization-mode=1;profile-level-id=42e01f"]),
    ),
}


def _offer(sections, direction: str) -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE " + " ".join(str(i) for i in range(len(sections)))]
    for mid, (kind, pts, attrs) in enumerate(sections):
        lines += [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF {pts}",
            "c=IN IP4 0.0.0.0",
            "a=ice-ufrag:abcd",
            "a=ice-pwd:abcdefghijklmnopqrstuvwx",
            "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
            "a=setup:actpass",
            f"a=mid:{mid}",
            f"a={direction}",
            "a=rtcp-mux",
            *attrs,
        ]
    return "\r\n".join(lines) + "\r\n"


@pytest.mark.parametrize("name", sorted(PT_REUSE_OFFERS))
def test_offers_reusing_a_payload_type_are_400_and_kill_nothing(host, name):
    sections = PT_REUSE_OFFERS[name]
    for path, direction in ((f"/whep/pt-{uuid.uuid4().hex[:6]}", "recvonly"), (f"/whip/pt-{uuid.uuid4().hex[:6]}", "sendonly")):
        r = http_request(host.url, "POST", path, _offer(sections, direction), {"Content-Type": "application/sdp"})
        assert r.status == 400, f"{path}: {r.status} {r.body!r}"
        assert r.body.strip(), "no reason given"
    assert_nothing_restarted(host)


def test_slow_heads_are_dropped_while_a_publisher_and_viewer_keep_working(start_sfu, figures):
    """1000 connections that send a request line and then one header line every second are closed once the
    header timeout has passed, while a real publisher and viewer carry on."""
    sfu = start_sfu(
        name="deadsfu-slowloris",
        extra_args=["--http-header-timeout-ms", "3000", "--http-max-connections-per-ip", "2000", "--http-max-connections", "2000"],
    )
    baseline = _pids(sfu)
    # 1000 sockets of our own: past the usual soft limit of 1024 descriptors with the rest of the test.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard or (soft < hard and hard == resource.RLIM_INFINITY):
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    stop = threading.Event()
    conns: list[socket.socket] = []

    def trickle() -> None:
        # One header line per second on every connection, until each is closed by the server.
        n = 0
        while not stop.is_set():
            for s in conns:
                try:
                    s.send(f"X-Slow-{n}: 1\r\n".encode())
                except OSError:
                    pass
            n += 1
            stop.wait(1.0)

    for _ in range(1000):
        s = socket.create_connection(("127.0.0.1", sfu.http_port), timeout=5)
        s.send(b"GET /rooms HTTP/1.1\r\nHost: x\r\n")
        conns.append(s)
    t_opened = time.monotonic()
    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()

    async def media() -> tuple[int, int]:
        pub, v = Publisher(load_fixture(), "pub"), Viewer("viewer")
        try:
            await publish_and_view(sfu.url, "slow", pub, v)
            await wait_for(lambda: len(v.rx.video) >= 60, 20, "viewer decodes 60 frames")
            return len(v.rx.video), len(v.rx.audio)
        finally:
            await asyncio.gather(v.close(), pub.close())

    video, audio = asyncio.run(media())

    def all_closed() -> bool:
        for s in conns:
            s.setblocking(False)
            try:
                if s.recv(4096) != b"":
                    return False  # the 408 answer, if any, comes before the close
            except BlockingIOError:
                return False
            except OSError:
                pass
        return True

    deadline = t_opened + 3.0 + 15
    while not all_closed() and time.monotonic() < deadline:
        time.sleep(0.2)
    closed_after = time.monotonic() - t_opened
    stop.set()
    trickler.join()
    still_open = sum(1 for s in conns if not _closed(s))
    for s in conns:
        s.close()
    figures.append(f"slow heads: 1000 connections, header timeout 3 s: all closed {closed_after:.1f} s after opening; meanwhile the viewer decoded {video} video and {audio} audio frames")
    assert still_open == 0, f"{still_open} slow connections still open"
    assert _pids(sfu) == baseline


def _closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_udp_garbage_and_floods_kill_nothing(host, figures):
    """Garbage datagrams shaped like STUN, DTLS, RTP/RTCP and nothing at all, as fast as one socket sends them
    for 3 s, at ingest and every worker, while a publisher and viewer run: nothing restarts, the control
    sockets keep answering during the flood, and the viewer still gets frames after it."""
    h = host.healthz()
    ports = [host.ingest_port] + [host.fanout_port + w["index"] for w in h["workers"]]
    prefixes = [b"\x00\x01\x00\x08\x21\x12\xa4\x42", b"\x16\xfe\xfd\x00\x00", b"\x80\x60\x00\x01", b"\x80\xc8\x00\x06", b""]
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        payloads = [p + os.urandom(n) for p in prefixes for n in (0, 20, 200, 1200)]
        i = 0
        while not stop.is_set():
            try:
                s.sendto(payloads[i % len(payloads)], ("127.0.0.1", ports[i % len(ports)]))
                sent[0] += 1
            except OSError:
                pass
            i += 1
        s.close()

    async def run() -> tuple[int, float]:
        pub, v = Publisher(load_fixture(), "pub"), Viewer("viewer")
        try:
            await publish_and_view(host.url, "flooded", pub, v)
            await wait_for(lambda: len(v.rx.video) >= 10, 20, "viewer decodes 10 frames")
            flooder = threading.Thread(target=flood, daemon=True)
            flooder.start()
            slowest = 0.0
            t_end = time.monotonic() + 3
            while time.monotonic() < t_end:
                t = time.monotonic()
                r = await asyncio.to_thread(host.get, "/healthz")
                slowest = max(slowest, time.monotonic() - t)
                assert r.status == 200, r.body
                await asyncio.sleep(0.2)
            stop.set()
            flooder.join()
            before = len(v.rx.video)
            await wait_for(lambda: len(v.rx.video) >= before + 30, 20, "viewer decodes 30 more frames after the flood")
            return sent[0], slowest
        finally:
            stop.set()
            await asyncio.gather(v.close(), pub.close())

    n, slowest = asyncio.run(run())
    figures.append(f"udp flood: {n} garbage datagrams in 3 s to ingest and workers; slowest /healthz meanwhile {slowest * 1000:.0f} ms; nothing restarted")
    assert_nothing_restarted(host)


def test_a_nack_flood_is_answered_within_the_resend_budget(host, figures):
    """A viewer that NACKs the last 100 video packets every 10 ms for 3 s (30,000 resend requests) gets
    resends at the worker's budget (200 packets a second, plus a second's burst), not its cache again and
    again."""
    seconds, budget = 3.0, 200

    async def run() -> tuple[int, int, int]:
        pub, v = Publisher(load_fixture(), "pub"), Viewer("nacker")
        receiver = next(t.receiver for t in v.pc.getTransceivers() if t.kind == "video")
        codecs = lambda: getattr(receiver, "_RTCRtpReceiver__codecs", {})  # noqa: E731
        seen: dict[str, int] = {"rtx": 0}
        last: dict[str, int] = {}
        inner = receiver._handle_rtp_packet

        async def counting(packet, arrival_time_ms: int) -> None:
            codec = codecs().get(packet.payload_type)
            if codec is not None and codec.mimeType.lower() == "video/rtx":
                seen["rtx"] += 1
            else:
                last["ssrc"], last["seq"] = packet.ssrc, packet.sequence_number
            await inner(packet, arrival_time_ms)

        receiver._handle_rtp_packet = counting
        try:
            await publish_and_view(host.url, "nacked", pub, v)
            await wait_for(lambda: len(v.rx.video) >= 30, 20, "viewer decodes 30 frames")
            rtx_before, nacks = seen["rtx"], 0
            t_end = time.monotonic() + seconds
            while time.monotonic() < t_end:
                seq = last["seq"]
                await receiver._send_rtcp_nack(last["ssrc"], sorted((seq - k) & 0xFFFF for k in range(1, 101)))
                nacks += 1
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # the last answers on their way
            return nacks, seen["rtx"] - rtx_before, len(v.rx.video)
        finally:
            await asyncio.gather(v.close(), pub.close())

    nacks, resent, frames = asyncio.run(run())
    figures.append(f"NACK flood: {nacks} NACKs for 100 packets each in {seconds:.0f} s -> {resent} packets resent over RTX (budget {budget}/s)")
    assert resent <= budget * (seconds + 0.5 + 1), f"{resent} resends for a flood of {nacks} NACKs"
    assert resent > 0, "no resend at all: the budget is not what bounds them"
    assert_nothing_restarted(host)
