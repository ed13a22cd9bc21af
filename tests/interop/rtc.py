"""aiortc peers that talk WHIP/WHEP to deadsfu, and the small HTTP client they use.

Everything here is asyncio; blocking HTTP runs in a thread so a publisher's pacing never stalls behind it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media import Clock, Fixture, PacedAudioTrack, PacedVideoTrack, read_barcode
from rtpcheck import RtpTap

# On loopback, aiortc would otherwise gather candidates on every interface and stall on DNS/STUN. The
# tests only ever talk to 127.0.0.1.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

H264_PROFILE_LEVEL_ID = "42e01f"


def rtc_config() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[])


# --- waiting --------------------------------------------------------------------------------------------


async def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Polls `cond` until it holds; raises AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        await asyncio.sleep(interval)


# --- HTTP -----------------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def http_request(
    base_url: str, method: str, path: str, body: str | bytes | None = None, headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One blocking HTTP/1.1 request; never raises on a 4xx/5xx status."""
    url = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    try:
        if isinstance(body, str):
            body = body.encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read().decode(errors="replace")
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


async def http_request_async(*args, **kwargs) -> Response:
    return await asyncio.to_thread(http_request, *args, **kwargs)


def loopback_candidates_only(sdp: str) -> str:
    """Drops ICE candidates that are not on loopback, so the tests never send to another address."""
    lines = sdp.splitlines()
    kept = []
    for line in lines:
        if line.startswith("a=candidate:"):
            parts = line.split()
            addr = parts[4] if len(parts) > 4 else ""
            if not (addr.startswith("127.") or addr == "::1"):
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


def session_id_of(location: str) -> str:
    m = re.fullmatch(r"(?:https?://[^/]+)?/session/([^/?#]+)", location)
    if not m:
        raise AssertionError(f"Location {location!r} is not /session/{{id}}")
    return m.group(1)


# --- peers ----------------------------------------------------------------------------------------------


class Peer:
    """A peer connection with one WHIP/WHEP session."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pc = RTCPeerConnection(rtc_config())
        self.base_url: str | None = None
        self.location: str | None = None
        self.session_id: str | None = None
        self.t_post: float | None = None  # monotonic time the offer was POSTed
        self.t_answer: float | None = None

    async def offer_answer(self, base_url: str, path: str, headers: dict[str, str] | None = None) -> Response:
        """Creates the offer (all candidates gathered), POSTs it, applies a 201's answer; returns the response."""
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        # aiortc gathers every candidate inside setLocalDescription: the offer is complete (non-trickle).
        await wait_for(lambda: self.pc.iceGatheringState == "complete", 10, f"{self.name}: ICE gathering")
        hdrs = {"Content-Type": "application/sdp"}
        hdrs.update(headers or {})
        self.base_url = base_url
        self.t_post = time.monotonic()
        resp = await http_request_async(base_url, "POST", path, self.pc.localDescription.sdp, hdrs)
        self.t_answer = time.monotonic()
        if resp.status == 201:
            self.location = resp.header("Location")
            assert self.location, f"{self.name}: 201 without a Location header"
            self.session_id = session_id_of(self.location)
            answer = loopback_candidates_only(resp.body)
            assert "a=candidate:" in answer, f"{self.name}: the answer has no loopback ICE candidate:\n{resp.body}"
            await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        return resp

    async def wait_connected(self, timeout: float = 10) -> None:
        def connected() -> bool:
            if self.pc.connectionState == "failed":
                raise AssertionError(f"{self.name}: peer connection failed")
            return self.pc.connectionState == "connected"

        await wait_for(connected, timeout, f"{self.name}: ICE + DTLS connected")

    async def rtp_counts(self) -> dict[str, dict[str, int]]:
        """Per media kind, aiortc's RTP counters: `sent` (outbound), `received` and `lost` (inbound)."""
        out: dict[str, dict[str, int]] = {}
        for s in (await self.pc.getStats()).values():
            if s.type == "outbound-rtp":
                out.setdefault(s.kind, {})["sent"] = s.packetsSent
            elif s.type == "inbound-rtp":
                d = out.setdefault(s.kind, {})
                d["received"] = d.get("received", 0) + s.packetsReceived
                d["lost"] = d.get("lost", 0) + s.packetsLost
        return out

    async def close(self, delete: bool = True) -> None:
        if delete and self.location and self.base_url:
            location, self.location = self.location, None  # DELETE once, however often close() is called
            try:
                await http_request_async(self.base_url, "DELETE", urllib.parse.urlsplit(location).path)
            except OSError:
                pass
        await self.pc.close()


class Publisher(Peer):
    """Publishes a fixture, pre-encoded, Opus and its video: H.264 (profile-level-id 42e01f) or VP8."""

    def __init__(self, fixture: Fixture, name: str = "publisher", kinds: tuple[str, ...] = ("audio", "video")) -> None:
        super().__init__(name)
        self.clock = Clock()
        self.video = PacedVideoTrack(fixture, self.clock)
        self.audio = PacedAudioTrack(fixture, self.clock)
        if "audio" in kinds:
            self.pc.addTransceiver(self.audio, direction="sendonly")
        if "video" not in kinds:
            return
        vt = self.pc.addTransceiver(self.video, direction="sendonly")
        caps = RTCRtpSender.getCapabilities("video").codecs
        if fixture.codec == "vp8":
            video = [c for c in caps if c.mimeType == "video/VP8"]
        else:
            video = [
                c for c in caps
                if c.mimeType == "video/H264"
                and c.parameters.get("profile-level-id") == H264_PROFILE_LEVEL_ID
                and c.parameters.get("packetization-mode") == "1"
            ]
        assert video, f"aiortc offers no {fixture.codec} as the fixture needs"
        rtx = [c for c in caps if c.mimeType == "video/rtx"]
        vt.setCodecPreferences(video + rtx)

    async def publish(self, base_url: str, room: str, token: str | None = None) -> Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.offer_answer(base_url, f"/whip/{room}", headers)

    async def vanish(self) -> None:
        """Disappears without a word: stops sending and closes its UDP sockets, so no DELETE, no DTLS alert, no
        RTCP BYE, and no answer to STUN (consent checks) from then on. `close(delete=False)` cleans up later."""
        self.video.stop()
        self.audio.stop()
        for t in self.pc.getTransceivers():
            dtls = t.sender.transport
            conn = getattr(getattr(dtls, "transport", None), "_connection", None)
            for proto in list(getattr(conn, "_protocols", [])):
                proto.transport.abort()


@dataclass(frozen=True)
class FrameRx:
    t: float  # monotonic time it was decoded
    n: int | None  # file frame number (barcode), None if unreadable
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


@dataclass
class Reception:
    video: list[tuple[float, int | None]] = field(default_factory=list)  # (monotonic time, file frame number)
    audio: list[float] = field(default_factory=list)  # monotonic time of each decoded audio frame
    video_sizes: set[tuple[int, int]] = field(default_factory=set)
    frames: list[FrameRx] = field(default_factory=list)  # every decoded video frame, with its size

    def frames_since(self, t: float) -> list[FrameRx]:
        return [f for f in self.frames if f.t >= t]

    def first_frame(self, since: float, size: tuple[int, int] | None = None) -> FrameRx | None:
        """The first frame decoded at or after `since` (of that size, if given)."""
        return next((f for f in self.frames if f.t >= since and (size is None or f.size == size)), None)


class Viewer(Peer):
    """A WHEP viewer: recvonly audio + video (or the `kinds` given); decodes everything and reads each frame's
    barcode.

    `video_codecs` (e.g. `["VP8"]`) restricts the video codecs it offers (aiortc offers VP8 and H.264 by
    default); RTX stays offered. Every RTP packet its receivers get is logged in `rtp` (see rtpcheck.py).
    """

    def __init__(
        self, name: str, video_codecs: list[str] | None = None, kinds: tuple[str, ...] = ("audio", "video")
    ) -> None:
        super().__init__(name)
        self.rx = Reception()
        self._tasks: list[asyncio.Task] = []
        at = self.pc.addTransceiver("audio", direction="recvonly") if "audio" in kinds else None
        vt = self.pc.addTransceiver("video", direction="recvonly") if "video" in kinds else None
        if video_codecs is not None and vt is not None:
            caps = RTCRtpSender.getCapabilities("video").codecs
            wanted = {f"video/{c}".lower() for c in video_codecs}
            chosen = [c for c in caps if c.mimeType.lower() in wanted]
            assert chosen, f"aiortc has none of the video codecs {video_codecs}"
            vt.setCodecPreferences(chosen + [c for c in caps if c.mimeType == "video/rtx"])
        self.rtp = {kind: RtpTap(t.receiver, kind) for kind, t in (("audio", at), ("video", vt)) if t is not None}
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            if track.kind == "video":
                n = read_barcode(frame)
                self.rx.video.append((now, n))
                self.rx.video_sizes.add((frame.width, frame.height))
                self.rx.frames.append(FrameRx(now, n, frame.width, frame.height))
            else:
                self.rx.audio.append(now)

    async def view(self, base_url: str, room: str, token: str | None = None) -> Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.offer_answer(base_url, f"/whep/{room}", headers)

    async def switch(self, room: str, headers: dict[str, str] | None = None) -> Response:
        """`POST /session/{id}/switch` with `{"room": room}`: moves this viewer to another room, no renegotiation."""
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        body = json.dumps({"room": room})
        return await http_request_async(self.base_url, "POST", f"/session/{self.session_id}/switch", body, hdrs)

    def worker_index(self) -> int:
        m = re.match(r"w(\d+)-", self.session_id or "")
        assert m, f"{self.name}: session id {self.session_id!r} does not start with w{{k}}-"
        return int(m.group(1))

    async def close(self, delete: bool = True) -> None:
        await super().close(delete)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def publish_and_view(base_url: str, room: str, publisher: Publisher, *viewers: Viewer) -> None:
    """Publishes into `room` and waits for the publisher's connection, then has every viewer view the room;
    any answer but 201 fails the test."""
    r = await publisher.publish(base_url, room)
    assert r.status == 201, f"{publisher.name}: publish: {r.status} {r.body.strip()!r}"
    await publisher.wait_connected()
    for v in viewers:
        r = await v.view(base_url, room)
        assert r.status == 201, f"{v.name}: view: {r.status} {r.body.strip()!r}"


async def gather_closing(*coros: Awaitable) -> None:
    await asyncio.gather(*coros, return_exceptions=True)
