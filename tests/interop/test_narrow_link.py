"""A joining viewer's GOP replay fits its link: a viewer behind 3 Mbit/s joins a ~1 Mbit/s room mid-GOP.

The viewer (aiortc, `narrow_viewer.py`) runs in a network namespace this test makes, joined to the root
namespace (deadsfu, the publisher) by a veth pair whose root end sends through `tc`'s tbf at 3 Mbit/s with
50 ms of queue. The publisher sends `testsrc-gop5-h264-opus.mkv` (about 1 Mbit/s, a keyframe every 5 s)
pre-encoded; the viewer POSTs 1.5 s into a GOP and watches until just before the next keyframe. Its replay
(1.5 s of stream and what comes while it runs) goes at 200% of the room's bitrate, with live audio alongside: the link must drop nothing, the viewer's
sequence numbers have no gap, its first frame is the GOP's keyframe within 1 s of its POST, and it is live
(within 0.5 s of the publisher) when it stops. Then the same with `--replay-rate-percent 10000` (the replay
as fast as the worker sends it), which the link must be seen to drop: the shaping is real.

Needs root (network namespaces, veth, tc); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import Sfu
from media import FIXTURE_DIR, VIDEO_FPS, load_fixture
from observe import gop_start, is_keyframe
from rtc import Publisher, wait_for

ROOM = "narrow"
GOP5_FIXTURE = FIXTURE_DIR / "testsrc-gop5-h264-opus.mkv"
RATE = "3mbit"
JOIN_INTO_GOP = 1.5  # seconds into a GOP at which the viewer POSTs
WATCH = 3.0  # seconds the viewer watches after connecting: it stops before the next keyframe
MAX_TTFF = 1.0
MAX_LIVE_LAG = 0.5
IP = shutil.which("ip") or "/usr/sbin/ip"
TC = shutil.which("tc") or "/usr/sbin/tc"
HERE = Path(__file__).resolve().parent


def run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


class NarrowLink:
    """A namespace with one end of a veth pair; the root end's egress (towards the namespace) through tbf."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}{random.randint(0, 99)}"
        self.ns = f"dsfu-narrow-{tag}"
        self.host_if, self.ns_if = f"dnh{tag}"[:15], f"dnn{tag}"[:15]
        used = run(IP, "-4", "addr")
        while True:
            prefix = f"10.{200 + random.randint(0, 49)}.{random.randint(0, 255)}."
            if prefix not in used:
                break
        self.host_addr, self.ns_addr = f"{prefix}1", f"{prefix}2"

    def __enter__(self) -> "NarrowLink":
        run(IP, "netns", "add", self.ns)
        try:
            run(IP, "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.ns)
            run(IP, "addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            run(IP, "link", "set", self.host_if, "up")
            run(IP, "-n", self.ns, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if)
            run(IP, "-n", self.ns, "link", "set", self.ns_if, "up")
            run(IP, "-n", self.ns, "link", "set", "lo", "up")
            run(TC, "qdisc", "add", "dev", self.host_if, "root", "tbf", "rate", RATE, "burst", "4kb", "latency", "50ms")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        # Deleting the namespace deletes its veth end and so the pair.
        subprocess.run([IP, "netns", "del", self.ns], capture_output=True)
        subprocess.run([IP, "link", "del", self.host_if], capture_output=True)

    def drops(self) -> int:
        out = run(TC, "-s", "qdisc", "show", "dev", self.host_if)
        m = re.search(r"dropped (\d+)", out)
        assert m, f"no drop count in tc's output: {out}"
        return int(m.group(1))


def can_shape() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, tc)"
    if not (Path(IP).exists() and Path(TC).exists()):
        return "needs ip and tc (iproute2)"
    return None


@pytest.mark.skipif(can_shape() is not None, reason=can_shape() or "")
def test_a_replay_fits_a_narrow_link(tmp_path, figures) -> None:
    lines = [f"narrow link: a viewer behind tbf {RATE} (50 ms of queue) joins {GOP5_FIXTURE.name} {JOIN_INTO_GOP} s"
             f" into a GOP"]
    try:
        paced = asyncio.run(one_join(tmp_path / "paced", []))
        lines.append(f"  replay at the default pace: {paced['line']}")
        flat_out = asyncio.run(one_join(tmp_path / "flat-out", ["--replay-rate-percent", "10000"]))
        lines.append(f"  replay at 10000%: {flat_out['line']}")
    finally:
        figures.extend(lines)
    problems = list(paced["problems"])
    if paced["drops"]:
        problems.append(f"the link dropped {paced['drops']} packets at the default pace")
    if flat_out["drops"] == 0:
        problems.append("the link dropped nothing of a replay at 10000%: is it shaped?")
    assert not problems, "; ".join(problems)


async def one_join(log_dir: Path, extra_args: list[str]) -> dict:
    log_dir.mkdir(parents=True)
    fixture = load_fixture(GOP5_FIXTURE)
    gop = fixture.keyframes[1] - fixture.keyframes[0]
    assert gop == 5 * VIDEO_FPS, f"{GOP5_FIXTURE.name}: GOP of {gop} frames (run scripts/make-fixtures)"
    with NarrowLink() as link:
        sfu = Sfu(log_dir, workers=1, extra_args=extra_args, http_host=link.host_addr).start()
        pub = Publisher(fixture)
        try:
            r = await pub.publish(sfu.url, ROOM)
            assert r.status == 201, f"WHIP publish: {r.status} {r.body.strip()!r}"
            await pub.wait_connected()
            # In the second GOP (the first carries the publisher's start). The worker opens its feed of the room
            # when the viewer comes, and takes the room's bitrate from the 2 s of the GOP in its ring.
            target = gop + round(JOIN_INTO_GOP * VIDEO_FPS)
            await wait_for(lambda: pub.video.last_sent() >= target, target / VIDEO_FPS + 10, f"publisher frame {target}")
            g_post = pub.video.last_sent()
            drops_before = link.drops()
            cmd = [IP, "netns", "exec", link.ns, sys.executable, str(HERE / "narrow_viewer.py"), "--url", sfu.url,
                   "--room", ROOM, "--address", link.ns_addr, "--server", link.host_addr, "--seconds", str(WATCH)]
            proc = await asyncio.create_subprocess_exec(*cmd, cwd=HERE, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, f"narrow_viewer.py exited {proc.returncode}: {err.decode()[-2000:]}"
            v = json.loads(out.decode().strip().splitlines()[-1])
            assert v["status"] == 201, f"WHEP from the namespace: {v['status']} {v['body']!r}"
            drops = link.drops() - drops_before
            # The publisher's newest frame when the viewer stopped watching.
            newest_sent = max(g for g, t in pub.video.sent if t <= v.get("t_end", 0)) if "t_end" in v else g_post
        finally:
            await pub.close()
            sfu.stop()
    return judge(fixture, pub, g_post, newest_sent, v, drops)


def judge(fixture, pub: Publisher, g_post: int, newest_sent: int, v: dict, drops: int) -> dict:
    """What one join showed: a line for the figures and what is wrong with it."""
    problems = [f"viewer: {p}" for p in v["problems"]]
    sent = pub.video.sent  # (g, monotonic time sent)

    def g_of(t: float, n: int | None) -> int | None:
        # The stream index of file frame n decoded at t: the newest g sent by then with that frame number.
        if n is None:
            return None
        candidates = [g for g, ts in sent if ts <= t and g % fixture.frames_per_loop == n]
        return candidates[-1] if candidates else None

    frames = v["frames"]
    if not frames:
        problems.append("viewer decoded no video frame")
        return {"problems": problems, "drops": drops, "line": f"no frame decoded; link drops {drops}"}
    t_first, n_first = frames[0]
    ttff = t_first - v["t_post"]
    g_first = g_of(t_first, n_first)
    t_last, n_last = frames[-1]
    g_last = g_of(t_last, n_last)
    lag = (newest_sent - g_last) / VIDEO_FPS if g_last is not None else float("inf")
    if ttff > MAX_TTFF:
        problems.append(f"first frame {ttff:.2f} s after the POST (max {MAX_TTFF} s)")
    if g_first is None or not is_keyframe(fixture, g_first) or g_first != gop_start(fixture, g_post):
        problems.append(f"first frame g {g_first} is not the keyframe of the GOP current at the POST (g {g_post})")
    if lag > MAX_LIVE_LAG:
        problems.append(f"{lag:.2f} s behind live when it stopped (decoded g {g_last}, publisher at g {newest_sent})")
    line = (f"POST at g {g_post}; first frame g {g_first} after {ttff * 1000:.0f} ms; {len(frames)} frames decoded,"
            f" the last g {g_last} ({lag * 1000:.0f} ms behind the publisher); {v['video_packets']} video packets;"
            f" link drops {drops}; RTP {v['rtp']}; counts {v['counts']}")
    return {"problems": problems, "drops": drops, "line": line}
