#!/usr/bin/python3
"""A GStreamer webrtcbin WHIP publisher or WHEP viewer, for test_gstreamer.py.

It runs under Debian's system Python (python3-gi and the GStreamer typelibs), not the Python of pytest, so the
test starts it as a subprocess. It speaks JSON lines on stdout, one event per line, each with `event` and
`mono` (CLOCK_MONOTONIC seconds, the same clock as the test's `time.monotonic()`):

    gst_client.py check                                   # {"event": "check", "missing": [...]}; exit 1 if any
    gst_client.py publish URL ROOM                        # WHIP: H.264 (x264enc) + Opus from test sources
    gst_client.py view URL ROOM                           # WHEP: recvonly H.264 + Opus, decodes and counts

Both gather ICE candidates on 127.0.0.1 only (libnice is given that one local address; no STUN or TURN
server), wait for gathering to complete and POST the complete offer (no trickle). They run until a line
`stop` (or EOF) on stdin, then DELETE their session (event `deleted` with the status) and print `summary`.
The viewer prints `second` events: the video frames decoded and audio buffers decoded in each whole second
since its answer was applied (`index` 0 is the first second).
"""

from __future__ import annotations

import bisect
import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ELEMENTS = {
    "publish": ["webrtcbin", "nicesrc", "nicesink", "dtlssrtpenc", "srtpenc", "videotestsrc", "videoconvert",
                "x264enc", "h264parse", "rtph264pay", "audiotestsrc", "audioconvert", "audioresample", "opusenc",
                "rtpopuspay"],
    "view": ["webrtcbin", "nicesrc", "nicesink", "dtlssrtpdec", "srtpdec", "rtph264depay", "h264parse",
             "avdec_h264", "rtpopusdepay", "opusdec", "fakesink"],
}
ELEMENT_PACKAGES = {
    "webrtcbin": "gstreamer1.0-plugins-bad", "dtlssrtpenc": "gstreamer1.0-plugins-bad",
    "dtlssrtpdec": "gstreamer1.0-plugins-bad", "srtpenc": "gstreamer1.0-plugins-bad",
    "srtpdec": "gstreamer1.0-plugins-bad", "h264parse": "gstreamer1.0-plugins-bad",
    "nicesrc": "gstreamer1.0-nice", "nicesink": "gstreamer1.0-nice", "x264enc": "gstreamer1.0-plugins-ugly",
    "avdec_h264": "gstreamer1.0-libav", "rtph264pay": "gstreamer1.0-plugins-good",
    "rtph264depay": "gstreamer1.0-plugins-good", "rtpopuspay": "gstreamer1.0-plugins-good",
    "rtpopusdepay": "gstreamer1.0-plugins-good", "fakesink": "libgstreamer1.0-0",
}

PUBLISH_PIPELINE = """
webrtcbin name=wb bundle-policy=max-bundle
videotestsrc is-live=true pattern=smpte
  ! video/x-raw,width=640,height=360,framerate=30/1 ! videoconvert
  ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=800
  ! video/x-h264,profile=constrained-baseline ! h264parse
  ! rtph264pay config-interval=-1 aggregate-mode=zero-latency pt=96
  ! application/x-rtp,media=video,encoding-name=H264,payload=96,clock-rate=90000 ! wb.
audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! opusenc
  ! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! wb.
"""

VIEW_VIDEO_CAPS = ("application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
                   "packetization-mode=(string)1,profile-level-id=(string)42e01f,"
                   "level-asymmetry-allowed=(string)1")
VIEW_AUDIO_CAPS = ("application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,"
                   "encoding-params=(string)2")


_EMIT_LOCK = threading.Lock()  # events come from GStreamer's threads too: one whole line at a time


def emit(event: str, **fields) -> None:
    line = json.dumps({"event": event, "mono": round(time.monotonic(), 4), **fields}) + "\n"
    with _EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


def check(role: str | None) -> int:
    missing: list[str] = []
    try:
        import gi

        for ns, ver, pkg in [("Gst", "1.0", "gir1.2-gstreamer-1.0"), ("GstSdp", "1.0", "gir1.2-gst-plugins-base-1.0"),
                             ("GstWebRTC", "1.0", "gir1.2-gst-plugins-bad-1.0"), ("Nice", "0.1", "gir1.2-nice-0.1")]:
            try:
                gi.require_version(ns, ver)
                __import__("gi.repository", fromlist=[ns])
            except (ValueError, ImportError) as e:
                missing.append(f"typelib {ns}-{ver} ({pkg}): {e}")
        if not missing:
            from gi.repository import Gst

            Gst.init(None)
            for name in ELEMENTS["publish"] + ELEMENTS["view"] if role is None else ELEMENTS[role]:
                if Gst.ElementFactory.find(name) is None and f"element {name}" not in " ".join(missing):
                    missing.append(f"element {name} ({ELEMENT_PACKAGES.get(name, 'gstreamer1.0-plugins-base')})")
    except ImportError as e:
        missing.append(f"python3-gi: {e}")
    emit("check", missing=missing)
    return 1 if missing else 0


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "check":
        return check(sys.argv[2] if len(sys.argv) > 2 else None)
    if len(sys.argv) != 4 or sys.argv[1] not in ("publish", "view"):
        print(__doc__, file=sys.stderr)
        return 2
    role, base_url, room = sys.argv[1:]

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstSdp", "1.0")
    gi.require_version("GstWebRTC", "1.0")
    gi.require_version("Nice", "0.1")  # before the first NiceAgent is wrapped, so it gets the typelib's class
    from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice

    Gst.init(None)
    loop = GLib.MainLoop()
    state = {"location": None, "t_answer": None, "exit": 0, "stopping": False}
    frames: list[float] = []  # monotonic times of decoded video frames
    audio: list[float] = []  # monotonic times of decoded audio buffers
    lock = threading.Lock()

    def fail(msg: str) -> None:
        emit("error", message=msg)
        state["exit"] = 1
        GLib.idle_add(stop)

    def http(method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(urllib.parse.urljoin(base_url, path), data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode(errors="replace")

    if role == "publish":
        pipe = Gst.parse_launch(PUBLISH_PIPELINE)
        wb = pipe.get_by_name("wb")
        for i in range(2):
            wb.emit("get-transceiver", i).set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
    else:
        pipe = Gst.Pipeline.new("viewer")
        wb = Gst.ElementFactory.make("webrtcbin", "wb")
        wb.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
        pipe.add(wb)
        for caps in (VIEW_VIDEO_CAPS, VIEW_AUDIO_CAPS):
            wb.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, Gst.Caps.from_string(caps))

    # Loopback only: libnice gathers host candidates on the addresses it is given (by default every interface
    # but loopback). No STUN or TURN server is set, so nothing but 127.0.0.1 is ever contacted.
    # Keep the wrappers for the process's life: webrtcbin leaves its GstWebRTCNice floating, and a wrapper that
    # is collected takes webrtcbin's ICE agent with it.
    state["ice"] = ice = wb.get_property("ice-agent")
    state["agent"] = agent = ice.get_property("agent")
    addr = Nice.Address.new()
    addr.set_from_string("127.0.0.1")
    agent.add_local_address(addr)
    emit("ice_agent", **{p: agent.get_property(p) for p in ("keepalive-conncheck", "consent-freshness",
                                                           "full-mode", "controlling-mode", "idle-timeout")})

    def on_state(obj, pspec) -> None:
        emit("state", what=pspec.name, value=obj.get_property(pspec.name).value_nick)

    for prop in ("connection-state", "ice-connection-state", "ice-gathering-state"):
        wb.connect(f"notify::{prop}", on_state)

    def count_probe(times: list[float]):
        def probe(pad, info):
            with lock:
                times.append(time.monotonic())
            return Gst.PadProbeReturn.OK

        return probe

    def on_pad_added(_wb, pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps() or pad.query_caps(None)
        media = caps.get_structure(0).get_string("media")
        if media == "video":
            desc = "queue ! rtph264depay ! h264parse ! avdec_h264 name=dec ! fakesink sync=false"
        else:
            desc = "queue ! rtpopusdepay ! opusdec name=dec ! fakesink sync=false"
        bin_ = Gst.parse_bin_from_description(desc, True)
        pipe.add(bin_)
        bin_.get_by_name("dec").get_static_pad("src").add_probe(
            Gst.PadProbeType.BUFFER, count_probe(frames if media == "video" else audio))
        bin_.sync_state_with_parent()
        ret = pad.link(bin_.get_static_pad("sink"))
        emit("track", media=media, link=ret.value_nick, caps=caps.to_string())

    wb.connect("pad-added", on_pad_added)

    def post_offer() -> bool:
        desc = wb.get_property("local-description")
        sdp = desc.sdp.as_text()
        emit("offer", sdp=sdp)
        if "a=candidate:" not in sdp:
            fail("the complete offer has no ICE candidate")
            return False
        status, headers, body = http("POST", f"/{'whip' if role == 'publish' else 'whep'}/{room}", sdp.encode(),
                                     {"Content-Type": "application/sdp"})
        location = next((v for k, v in headers.items() if k.lower() == "location"), None)
        emit("answer", status=status, location=location, sdp=body if status == 201 else None,
             reason=None if status == 201 else body.strip()[:300])
        if status != 201:
            fail(f"POST offer: {status} {body.strip()[:300]}")
            return False
        state["location"] = location
        lines = [ln for ln in body.splitlines() if not ln.startswith("a=candidate:")
                 or ln.split()[4].startswith("127.")]
        ok, msg = GstSdp.SDPMessage.new_from_text("\r\n".join(lines) + "\r\n")
        if ok != GstSdp.SDPResult.OK:
            fail(f"cannot parse the answer: {ok}")
            return False
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        promise = Gst.Promise.new()
        wb.emit("set-remote-description", answer, promise)
        promise.wait()
        state["t_answer"] = time.monotonic()
        emit("remote_description_set")
        return False

    def on_gathering(obj, _pspec) -> None:
        if obj.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE \
                and state["location"] is None and state["t_answer"] is None and not state.get("posted"):
            state["posted"] = True
            GLib.idle_add(post_offer)

    wb.connect("notify::ice-gathering-state", on_gathering)

    def on_offer(promise) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        wb.emit("set-local-description", offer, Gst.Promise.new())

    def on_negotiation_needed(_wb) -> None:
        if state.get("offered"):
            return
        state["offered"] = True
        wb.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer))

    wb.connect("on-negotiation-needed", on_negotiation_needed)

    def seconds_report() -> bool:
        """Emits `second` for each whole second since the answer that has fully passed."""
        t0 = state["t_answer"]
        if t0 is None:
            return True
        now = time.monotonic()
        done = int(now - t0)
        with lock:
            f, a = list(frames), list(audio)  # each in time order: one streaming thread appends to each
        while state.setdefault("reported", 0) < done:
            k = state["reported"]
            lo, hi = t0 + k, t0 + k + 1
            emit("second", index=k, video_frames=bisect.bisect_left(f, hi) - bisect.bisect_left(f, lo),
                 audio_buffers=bisect.bisect_left(a, hi) - bisect.bisect_left(a, lo))
            state["reported"] += 1
        return True

    if role == "view":
        GLib.timeout_add(200, seconds_report)

    def stop() -> bool:
        if state["stopping"]:
            return False
        state["stopping"] = True
        if role == "view":
            seconds_report()
        if state["location"]:
            status, _, body = http("DELETE", urllib.parse.urlsplit(state["location"]).path)
            emit("deleted", status=status, body=body.strip()[:300])
        pipe.set_state(Gst.State.NULL)
        with lock:
            emit("summary", video_frames=len(frames), audio_buffers=len(audio), t_answer=state["t_answer"],
                 first_frame=frames[0] if frames else None, last_frame=frames[-1] if frames else None)
        loop.quit()
        return False

    def read_stdin() -> None:
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        GLib.idle_add(stop)

    threading.Thread(target=read_stdin, daemon=True).start()

    bus = pipe.get_bus()
    bus.add_signal_watch()

    def on_message(_bus, msg) -> None:
        if msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            fail(f"{msg.src.get_name()}: {err.message} ({dbg})")
        elif msg.type == Gst.MessageType.WARNING:
            err, dbg = msg.parse_warning()
            emit("warning", source=msg.src.get_name(), message=err.message)

    bus.connect("message", on_message)
    if pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        emit("error", message="the pipeline does not start")
        return 1
    emit("started", role=role)
    loop.run()
    return state["exit"]


if __name__ == "__main__":
    sys.exit(main())
