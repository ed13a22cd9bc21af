"""A worker that falls far behind a room's ring (here: stopped for a while, as a worker starved of CPU would be)
does not play its viewers ever older video: it skips to the newest keyframe, and says so in /metrics."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

from harness import Sfu
from media import MAIN_FIXTURE, VIDEO_FPS, load_fixture, unwrap
from rtc import Publisher, Viewer, publish_and_view, wait_for

STOPPED_S = 5.0  # far over the worker's 1 s limit, well under the ring's ~19 s of this stream and a fixture loop
GOP_FRAMES = 60  # the fixture's keyframe interval (2 s at 30 fps)


def lag_skips(sfu: Sfu) -> int:
    text = sfu.get("/metrics").body
    return sum(int(float(m)) for m in re.findall(r'^deadsfu_lag_skips_total\{process="fanout-\d+"\} (\S+)$', text, re.M))


def test_a_stalled_worker_skips_to_the_newest_keyframe(start_sfu, figures: list[str]) -> None:
    asyncio.run(run(start_sfu(workers=1, name="deadsfu-lag-skip"), figures))


async def run(sfu: Sfu, figures: list[str]) -> None:
    fixture = load_fixture(MAIN_FIXTURE)
    publisher = Publisher(fixture, "lag-publisher")
    viewer = Viewer("lag-viewer")
    try:
        await publish_and_view(sfu.url, "lag", publisher, viewer)
        await wait_for(lambda: len(viewer.rx.video) > 10, 10, "the viewer decoding")
        assert lag_skips(sfu) == 0, "no skip while the worker keeps up"

        pid = sfu.healthz()["workers"][0]["pid"]
        stopped_at = publisher.video.last_sent()
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(STOPPED_S)
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        resumed_at = publisher.video.last_sent()

        await wait_for(lambda: len(viewer.rx.frames_since(resumed)) >= 30, 5, "frames after the worker resumed")
        after = [f for f in viewer.rx.frames_since(resumed) if f.n is not None]
        assert after, "no readable frame after the worker resumed"
        first = unwrap(after[0].n, publisher.video.last_sent(), fixture.frames_per_loop)
        # Without the skip the viewer would go on from where the worker stopped, STOPPED_S behind.
        assert first > stopped_at + GOP_FRAMES // 2, (
            f"first frame after resuming is g {first}; the worker stopped at g {stopped_at}, resumed at "
            f"g {resumed_at}: it replayed the stale backlog"
        )
        assert resumed_at - first <= GOP_FRAMES + VIDEO_FPS, (
            f"first frame after resuming is g {first}, {resumed_at - first} frames behind the publisher"
        )
        figures.append(f"lag skip: worker stopped {STOPPED_S:.0f} s at g {stopped_at}, resumed at g {resumed_at}; "
                       f"first frame after resuming g {first}, {after[0].t - resumed:.2f} s later")
        assert lag_skips(sfu) >= 1, "/metrics counts the skip"
        log = sfu.log_text()
        assert "skipping to the newest keyframe" in log, "the worker logs why it skipped"
    finally:
        await viewer.close()
        await publisher.close()
