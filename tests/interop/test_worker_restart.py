"""A fanout worker stopped or killed: its viewers learn at once (SIGTERM: the worker says goodbye over DTLS),
can come back on a live worker within 2 s, and viewers on the other worker lose no packet; the supervisor
restarts the worker; the publisher is untouched."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from harness import Sfu
from media import MAIN_FIXTURE, load_fixture
from observe import rtp_problems, rtp_reports
from rtc import Publisher, Viewer, publish_and_view, wait_for

BACK_WITHIN = 2.0  # a viewer that retries as the page does has media again within this


@pytest.fixture(scope="module")
def host(start_sfu) -> Sfu:
    return start_sfu(name="deadsfu-worker-restart")


def worker_pid(sfu: Sfu, index: int) -> int | None:
    """The pid of worker `index`, or None while it is not up."""
    return next((w["pid"] for w in sfu.healthz()["workers"] if w["index"] == index), None)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_worker_stop(host: Sfu, figures: list[str], sig: signal.Signals) -> None:
    asyncio.run(run(host, figures, sig))


async def run(sfu: Sfu, figures: list[str], sig: signal.Signals) -> None:
    room = f"restart-{sig.name.lower()}"
    publisher = Publisher(load_fixture(MAIN_FIXTURE), "restart-publisher")
    a, b = Viewer("on-victim"), Viewer("on-survivor")
    peers = [publisher, a, b]
    try:
        await publish_and_view(sfu.url, room, publisher, a, b)
        assert {a.worker_index(), b.worker_index()} == {0, 1}, "the two viewers are on different workers"
        for v in (a, b):
            await wait_for(lambda v=v: len(v.rx.video) > 10, 10, f"{v.name} decoding")
        ingest_pid = sfu.healthz()["ingest"]["pid"]
        victim = a.worker_index()
        pid = worker_pid(sfu, victim)

        t0 = time.monotonic()
        os.kill(pid, sig)
        if sig == signal.SIGTERM:
            # The worker closes its sessions with a DTLS close_notify: the viewer learns without a timeout.
            await wait_for(lambda: a.pc.connectionState in ("closed", "failed"), 3,
                           f"{a.name}'s connection to end after SIGTERM (state {a.pc.connectionState})")
            told = time.monotonic() - t0
        # The viewer retries as the page does until it has media again.
        again = Viewer("came-back")
        peers.append(again)
        while True:
            r = await again.view(sfu.url, room)
            if r.status == 201:
                break
            assert r.status == 503, f"retry: {r.status} {r.body.strip()!r}"
            assert time.monotonic() - t0 < BACK_WITHIN, f"no worker took the viewer within {BACK_WITHIN} s"
            await asyncio.sleep(0.1)  # retry interval of a deadline loop
        await wait_for(lambda: len(again.rx.video) > 0, BACK_WITHIN, "the returning viewer's first frame")
        back = time.monotonic() - t0
        assert back <= BACK_WITHIN, f"media again only {back:.2f} s after the worker stopped"
        await wait_for(lambda: worker_pid(sfu, victim) not in (None, pid), 10, "the supervisor to restart the worker")

        # Let the survivor run on a little, then check it lost nothing.
        await asyncio.sleep(1.0)  # observation window for packet continuity
        problems = rtp_problems(b, rtp_reports(b))
        assert not problems, f"the viewer on the other worker: {problems}"
        assert sfu.healthz()["ingest"]["pid"] == ingest_pid, "ingest untouched"
        assert publisher.pc.connectionState == "connected", "the publisher is untouched"
        line = f"worker {victim} {sig.name}: viewer on it back with media after {back * 1000:.0f} ms"
        if sig == signal.SIGTERM:
            line += f" (told of the stop after {told * 1000:.0f} ms)"
        figures.append(line + "; the other worker's viewer lost no packet")
    finally:
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
