"""First light: an aiortc publisher and two aiortc viewers through a whole deadsfu host.

The publisher sends the fixture's H.264 + Opus as they are (no re-encoding), paced in real time. Each viewer
must land on its own worker and decode at least 90 % of the video frames sent from its first decoded frame on,
over at least 5 s, with no frame twice or out of order; audio must flow too. Along the way: signaling,
ingest and the workers are separate processes of separate binaries, and the room's ring head advances.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from harness import Sfu, proc_cmdline, proc_exe_name
from media import VIDEO_FPS, load_fixture, unwrap, video_figures
from rtc import Publisher, Viewer, wait_for

ROOM = "first-light"
MEASURE_SECONDS = 6.0  # per viewer, from its first decoded frame; the assertion needs at least 5 s of it
MIN_WINDOW_FRAMES = 5 * VIDEO_FPS
MIN_VIDEO_RATIO = 0.90
MIN_AUDIO_RATIO = 0.80
FIRST_FRAME_TIMEOUT = 10.0  # 2 s GOP + connection setup, with room to spare
TAIL_TIMEOUT = 3.0


def parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def sent_counts(rtp: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{kind} {d.get('sent')}" for kind, d in sorted(rtp.items()))


def received_counts(rtp: dict[str, dict[str, int]]) -> str:
    return ", ".join(f"{kind} {d.get('received')}/{d.get('lost')}" for kind, d in sorted(rtp.items()))


def check_processes(sfu: Sfu, health: dict) -> list[str]:
    sig = int(health["signaling"]["pid"])
    ing = int(health["ingest"]["pid"])
    workers = {int(w["index"]): int(w["pid"]) for w in health["workers"]}
    assert sorted(workers) == list(range(sfu.workers)), f"worker indexes in /healthz: {health['workers']}"
    pids = [sig, ing, *workers.values()]
    assert len(set(pids)) == len(pids), f"signaling, ingest and workers share a pid: {health}"
    assert sfu.proc.pid not in pids, f"the supervisor (pid {sfu.proc.pid}) is itself one of the roles: {health}"
    names = {pid: proc_exe_name(pid) for pid in pids}
    lines = [f"  pid {pid:>7}  {names[pid]:<20} {' '.join(proc_cmdline(pid)).replace(chr(10), ' ')[:120]}" for pid in pids]
    for pid in pids:
        assert names[pid].startswith("deadsfu"), f"pid {pid} runs {names[pid]!r}, not a deadsfu binary"
        assert parent_pid(pid) == sfu.proc.pid, f"pid {pid} ({names[pid]}) is not a child of the supervisor"
    assert "signaling" in names[sig], f"signaling pid {sig} runs {names[sig]!r}"
    assert "ingest" in names[ing], f"ingest pid {ing} runs {names[ing]!r}"
    for k, pid in workers.items():
        assert "fanout" in names[pid], f"worker {k} pid {pid} runs {names[pid]!r}"
    assert len({names[sig], names[ing], names[workers[0]]}) == 3, f"roles share a binary: {names}"
    return lines


def test_first_light(sfu: Sfu, figures: list[str]) -> None:
    asyncio.run(first_light(sfu, figures))


async def first_light(sfu: Sfu, figures: list[str]) -> None:
    fixture = load_fixture()
    health = await asyncio.to_thread(sfu.healthz)
    process_lines = check_processes(sfu, health)

    pub = Publisher(fixture)
    viewers = [Viewer("viewer-a"), Viewer("viewer-b")]
    try:
        r = await pub.publish(sfu.url, ROOM)
        assert r.status == 201, f"WHIP publish: {r.status} {r.body}"
        await pub.wait_connected()

        ring = sfu.ring_path(ROOM)
        await wait_for(ring.exists, 5, f"ring file {ring}")
        stat_before: dict = {}

        async def ring_has_data() -> None:
            while True:
                stat_before.update(await asyncio.to_thread(sfu.ring_stat, ROOM))
                if int(stat_before["head"]) > 0:
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(ring_has_data(), 5)

        # One after the other, so least-loaded assignment must put them on different workers.
        for v in viewers:
            r = await v.view(sfu.url, ROOM)
            assert r.status == 201, f"{v.name} WHEP: {r.status} {r.body}"
        indexes = [v.worker_index() for v in viewers]
        assert len(set(indexes)) == len(viewers), f"viewers share a worker: {[v.session_id for v in viewers]}"
        await asyncio.gather(*(v.wait_connected() for v in viewers))

        def first_readable(v: Viewer) -> float | None:
            return next((t for t, n in v.rx.video if n is not None), None)

        for v in viewers:
            try:
                await wait_for(lambda: first_readable(v) is not None, FIRST_FRAME_TIMEOUT, f"{v.name}: first frame")
            except AssertionError as e:
                stat = await asyncio.to_thread(sfu.ring_stat, ROOM)
                raise AssertionError(
                    f"{e}: it decoded {len(v.rx.video)} video frames (none with a readable frame number) and"
                    f" {len(v.rx.audio)} audio frames; RTP received/lost {received_counts(await v.rtp_counts())};"
                    f" the publisher sent {pub.video.last_sent() + 1} video frames, RTP packets"
                    f" {sent_counts(await pub.rtp_counts())}; ring stat {stat}"
                ) from None

        health = await asyncio.to_thread(sfu.healthz)
        load = {int(w["index"]): int(w.get("viewers", -1)) for w in health["workers"]}
        assert all(load[k] == 1 for k in indexes), f"/healthz viewers per worker {load}, viewers on {indexes}"

        # The measured span: MEASURE_SECONDS from each viewer's first decoded frame.
        await wait_for(
            lambda: all(time.monotonic() - first_readable(v) >= MEASURE_SECONDS for v in viewers),
            MEASURE_SECONDS + 1, "the measurement window",
        )
        t_cut = time.monotonic()
        last_sent = pub.video.last_sent()
        stat_after = await asyncio.to_thread(sfu.ring_stat, ROOM)

        # Frames still in flight at the cut count as sent: give them a moment to arrive, then count.
        def caught_up(v: Viewer) -> bool:
            tail = [n for _, n in v.rx.video[-3:] if n is not None]
            return any(unwrap(n, pub.video.last_sent(), fixture.frames_per_loop) >= last_sent for n in tail)

        try:
            await wait_for(lambda: all(caught_up(v) for v in viewers), TAIL_TIMEOUT, "viewers to catch up")
        except AssertionError:
            pass  # the missing tail shows in the ratio

        problems = []
        pub_rtp = await pub.rtp_counts()
        figures.append(f"first light: room {ROOM}, processes:")
        figures.extend(process_lines)
        figures.append(
            f"  ring head {stat_before['head']} -> {stat_after['head']} during the measurement"
            f" (epoch {stat_after.get('epoch')}); publisher RTP packets sent"
            f" {sent_counts(pub_rtp)}"
        )
        for v in viewers:
            f = video_figures(pub.video.sent, v.rx.video, fixture.frames_per_loop, last_sent)
            rtp = await v.rtp_counts()
            t_first = first_readable(v)
            audio_expected = (t_cut - t_first) * 50
            audio_got = sum(1 for t in v.rx.audio if t_first <= t <= t_cut)
            audio_ratio = audio_got / audio_expected
            figures.append(
                f"  {v.name} on worker {v.worker_index()} (session {v.session_id}): video frames sent {f.window}"
                f" (g {f.first}..{f.last_sent}), decoded {f.decoded}, ratio {f.ratio:.3f}, repeated {f.duplicates},"
                f" out of order {f.out_of_order}, unreadable {f.unreadable};"
                f" first frame {1000 * (t_first - v.t_post):.0f} ms after POST;"
                f" audio frames {audio_got} of {audio_expected:.0f} ({audio_ratio:.3f}); sizes {sorted(v.rx.video_sizes)};"
                f" RTP received/lost {received_counts(rtp)}"
            )
            if f.window < MIN_WINDOW_FRAMES:
                problems.append(f"{v.name}: measured only {f.window} frames (< {MIN_WINDOW_FRAMES})")
            if f.ratio < MIN_VIDEO_RATIO:
                problems.append(f"{v.name}: decoded {f.decoded} of {f.window} frames sent ({f.ratio:.3f})")
            # A decoder conceals a lost frame by repeating a picture, so a repeated frame number only shows
            # that the SFU sent a frame twice (or out of order) when no video packet was lost.
            if (f.duplicates or f.out_of_order) and rtp.get("video", {}).get("lost", 0) == 0:
                problems.append(f"{v.name}: {f.duplicates} repeated and {f.out_of_order} out-of-order frames")
            if audio_ratio < MIN_AUDIO_RATIO:
                problems.append(f"{v.name}: {audio_got} audio frames where {audio_expected:.0f} were sent")
            if v.rx.video_sizes != {(fixture.width, fixture.height)}:
                problems.append(f"{v.name}: frame sizes {v.rx.video_sizes}")
        if int(stat_after["head"]) <= int(stat_before["head"]):
            problems.append(f"ring head did not advance: {stat_before} -> {stat_after}")
        assert not problems, "; ".join(problems)
    finally:
        await asyncio.gather(*(v.close() for v in viewers), pub.close(), return_exceptions=True)

    # The host is still whole after the viewers and the publisher left, and the workers let go of them.
    after: dict = {}

    def viewers_gone() -> bool:
        after.update(sfu.healthz())
        return all(int(w.get("viewers", -1)) == 0 for w in after["workers"])

    await wait_for(viewers_gone, 5, "/healthz to count 0 viewers after the DELETEs", interval=0.1)
    assert after["ok"], after
    assert [w["pid"] for w in after["workers"]] == [w["pid"] for w in health["workers"]], (health, after)
