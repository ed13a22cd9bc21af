"""GStreamer's webrtcbin (libnice ICE) as a WHIP publisher and a WHEP viewer for a minute.

The publisher sends H.264 (x264enc, zerolatency, a keyframe every 30 frames, 640x360 at 30 fps from a live
videotestsrc) and Opus; the viewer offers recvonly H.264 + Opus and decodes the video with avdec_h264. Both
gather only 127.0.0.1, use no STUN server and POST complete offers (no trickle). The clients are
`gst_client.py`, run under Debian's system Python (python3-gi); the test skips if it or a plugin is missing
(scripts/test installs them).

For the 60 s after the viewer's answer: the room stays live in `GET /rooms` (the publisher is never dropped)
and counts the viewer, and the viewer decodes at least 20 frames in every whole second after the first 3.
At the end the publisher's DELETE of its session is 200.

libnice (webrtcbin's ICE agent, controlling, regular nomination) sends two binding requests on a pair, the
check and the nominating one (USE-CANDIDATE), and from then on only binding indications, one every 25 s: it
sends requests as keepalives only when told to (NiceAgent `keepalive-conncheck` or `consent-freshness`, both
off in webrtcbin 1.22). An ICE-lite server that drops a pair on which no binding request came for some
seconds drops these peers while their media still flows.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness import Sfu

GST_PYTHON = "/usr/bin/python3"  # Debian's, with python3-gi; pytest may run under another Python
CLIENT = Path(__file__).with_name("gst_client.py")
APT_PACKAGES = ("python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 "
                "gir1.2-nice-0.1 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad "
                "gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-nice")

ROOM = "gst-webrtcbin"
RUN_SECONDS = 60  # from the viewer's answer
WARMUP_SECONDS = 3  # seconds of the viewer not held to MIN_FRAMES_PER_SECOND
MIN_FRAMES_PER_SECOND = 20  # of the 30 sent
POLL_INTERVAL = 0.5  # GET /rooms
CONNECT_TIMEOUT = 15.0


class GstClient:
    """One `gst_client.py` process; its JSON events, each with the time it was read."""

    def __init__(self, role: str, url: str, room: str, log_dir: Path) -> None:
        self.role = role
        self.stderr_path = log_dir / f"gst-{role}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [GST_PYTHON, str(CLIENT), role, url, room], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True, bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.events: list[dict] = []
        self._new: queue.Queue[dict | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"event": "noise", "line": line.rstrip()}
            self.events.append(ev)
            self._new.put(ev)
        self._new.put(None)

    def of(self, name: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == name]

    def wait_for(self, pred, timeout: float, what: str) -> dict:
        """The first event (seen so far or arriving within `timeout`) for which `pred` holds."""
        for e in list(self.events):
            if pred(e):
                return e
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                e = self._new.get(timeout=max(left, 0.01))
            except queue.Empty:
                e = None
                left = 0
            if e is not None and pred(e):
                return e
            if e is not None and e.get("event") == "error":
                raise AssertionError(f"gst {self.role}: {e.get('message')} while waiting for {what}\n{self.tail()}")
            if e is None and (left <= 0 or not self._reader.is_alive()):
                raise AssertionError(f"gst {self.role}: no {what} within {timeout:.0f} s"
                                     f" (exit code {self.proc.poll()})\n{self.tail()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """Asks it to DELETE its session and exit; kills it if it does not."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        self._stderr.close()
        return self.proc.returncode

    def tail(self, n: int = 3000) -> str:
        try:
            err = self.stderr_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            err = ""
        evs = [json.dumps({k: v for k, v in e.items() if k != "sdp"}) for e in self.events[-15:]]
        return f"last events of gst {self.role}:\n" + "\n".join(evs) + f"\nstderr:\n{err}"


@pytest.fixture(scope="module")
def gstreamer() -> None:
    if not os.access(GST_PYTHON, os.X_OK):
        pytest.skip(f"GStreamer interop needs Debian's {GST_PYTHON} with python3-gi (apt-get install {APT_PACKAGES})")
    out = subprocess.run([GST_PYTHON, str(CLIENT), "check"], capture_output=True, text=True, timeout=60)
    try:
        missing = json.loads(out.stdout.strip().splitlines()[-1])["missing"]
    except (ValueError, IndexError, KeyError):
        missing = [f"`{GST_PYTHON} {CLIENT.name} check` failed ({out.returncode}): {out.stderr.strip()[-500:]}"]
    if out.returncode != 0 or missing:
        pytest.skip(f"GStreamer webrtcbin not usable: {'; '.join(missing)} (apt-get install {APT_PACKAGES})")


@pytest.fixture(scope="module")
def host(start_sfu, gstreamer) -> Sfu:
    return start_sfu(name="deadsfu-gstreamer")


def room_entry(sfu: Sfu) -> dict | None:
    r, body = sfu.rooms(timeout=5)
    assert r.status == 200 and isinstance(body, dict), f"GET /rooms: {r.status} {r.body.strip()[:300]!r}"
    return next((e for e in body.get("rooms", []) if e.get("name") == ROOM), None)


def connected(e: dict) -> bool:
    return e.get("event") == "state" and e.get("what") == "connection-state" and e.get("value") == "connected"


def answered(client: GstClient) -> dict:
    a = client.wait_for(lambda e: e.get("event") == "answer", CONNECT_TIMEOUT, "answer to the offer")
    assert a["status"] == 201, f"gst {client.role}: POST offer -> {a['status']} {a.get('reason')!r}"
    return a


def test_webrtcbin_publisher_and_viewer_for_a_minute(host: Sfu, tmp_path: Path, figures: list[str]) -> None:
    pub = GstClient("publish", host.url, ROOM, tmp_path)
    viewer: GstClient | None = None
    polls: list[tuple[float, dict | None]] = []  # (monotonic time, the room's /rooms entry)
    try:
        answered(pub)
        t_pub = pub.wait_for(connected, CONNECT_TIMEOUT, "connection-state connected")["mono"]
        deadline = time.monotonic() + 5
        while (e := room_entry(host)) is None or e.get("state") != "live":
            assert time.monotonic() < deadline, f"{ROOM} not live in /rooms 5 s after the publisher connected: {e}"
            time.sleep(0.1)  # polling interval of a deadline loop

        viewer = GstClient("view", host.url, ROOM, tmp_path)
        answered(viewer)
        viewer.wait_for(connected, CONNECT_TIMEOUT, "connection-state connected")
        t_view = viewer.wait_for(lambda e: e.get("event") == "remote_description_set", 1, "answer applied")["mono"]
        t_end = t_view + RUN_SECONDS + 0.3  # the viewer's last whole second is reported on stop
        while (now := time.monotonic()) < t_end:
            polls.append((now, room_entry(host)))
            time.sleep(min(POLL_INTERVAL, max(t_end - time.monotonic(), 0)))
        viewer_exit = viewer.stop()
        pub_exit = pub.stop()
    finally:
        for c in (viewer, pub):
            if c is not None and c.proc.poll() is None:
                c.stop(timeout=5)

    # (a) the publisher: live in every poll, DELETE 200 at the end.
    not_live = [(t, e) for t, e in polls if not e or e.get("state") != "live"]
    pub_deleted = pub.of("deleted")
    pub_delete_status = pub_deleted[-1]["status"] if pub_deleted else None
    # (b) the viewer: counted in every poll.
    not_counted = [(t, e) for t, e in polls if not e or (e.get("viewers") or 0) < 1]
    # (c) the viewer's decoded frames per whole second since its answer.
    per_second = {e["index"]: e["video_frames"] for e in viewer.of("second")}
    audio_per_second = {e["index"]: e["audio_buffers"] for e in viewer.of("second")}
    judged = range(WARMUP_SECONDS, RUN_SECONDS)
    short = [(k, per_second.get(k)) for k in judged if (per_second.get(k) or 0) < MIN_FRAMES_PER_SECOND]
    frames = [per_second.get(k, 0) for k in judged]
    summary = (viewer.of("summary") or [{}])[-1]

    def since(t: float, t0: float) -> str:
        return f"{t - t0:.1f} s"

    polled = f"{len(polls)} polls over {polls[-1][0] - polls[0][0]:.1f} s" if polls else "no polls"
    pub_seen = (f"not live from {since(not_live[0][0], t_pub)} after it connected" if not_live
                else "live in every /rooms poll")
    figures.append(f"gstreamer: publisher (webrtcbin, x264 + opus) {pub_seen} ({polled}),"
                   f" DELETE -> {pub_delete_status}, exit {pub_exit}")
    viewer_seen = (f"not counted from {since(not_counted[0][0], t_view)} after its answer" if not_counted
                   else "counted in every /rooms poll")
    viewer_deleted = (viewer.of("deleted") or [{}])[-1].get("status")
    figures.append(
        f"gstreamer: viewer (webrtcbin, avdec_h264) {viewer_seen}; decoded {summary.get('video_frames')} video frames"
        f" and {summary.get('audio_buffers')} audio buffers in {RUN_SECONDS} s; frames per second over"
        f" s {WARMUP_SECONDS}-{RUN_SECONDS - 1}: min {min(frames)}, median {statistics.median(frames)},"
        f" {len(short)} seconds < {MIN_FRAMES_PER_SECOND}{f' (first: s {short[0][0]})' if short else ''};"
        f" DELETE -> {viewer_deleted}, exit {viewer_exit}"
    )
    figures.append("gstreamer: viewer video frames per second: "
                   + " ".join(str(per_second.get(k, "-")) for k in range(RUN_SECONDS)))

    problems = []
    if not_live:
        t, e = not_live[0]
        problems.append(f"(a) publisher dropped: {ROOM} not live in /rooms {since(t, t_pub)} after the publisher"
                        f" connected ({since(t, t_view)} after the viewer's answer): {e}; not live in"
                        f" {len(not_live)} of {len(polls)} polls")
    if pub_delete_status != 200:
        problems.append(f"(a) the publisher's DELETE of its session: {pub_delete_status}"
                        f" {pub_deleted[-1].get('body') if pub_deleted else '(none sent)'!r}")
    if not_counted:
        t, e = not_counted[0]
        problems.append(f"(b) viewer dropped: not counted in /rooms {since(t, t_view)} after its answer: {e};"
                        f" not counted in {len(not_counted)} of {len(polls)} polls")
    if short:
        problems.append(f"(c) {len(short)} of the seconds {WARMUP_SECONDS}-{RUN_SECONDS - 1} after the viewer's answer"
                        f" decoded < {MIN_FRAMES_PER_SECOND} frames, first s {short[0][0]}"
                        f" ({short[0][1]} frames); per second: {[per_second.get(k) for k in range(RUN_SECONDS)]};"
                        f" audio buffers per second: {[audio_per_second.get(k) for k in range(RUN_SECONDS)]}")
    for c in (pub, viewer):
        errors = c.of("error")
        if errors:
            problems.append(f"gst {c.role}: {errors[0].get('message')}")
    if problems:  # the message alone (the host's log follows in the report): the source says nothing more
        pytest.fail("\n".join(problems), pytrace=False)
