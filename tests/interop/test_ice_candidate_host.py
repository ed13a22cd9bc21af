"""`--ice-candidate-host`: the media processes advertise the configured address (a host behind 1:1 NAT) instead
of their own, bind all interfaces, and media flows to and from it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from harness import Sfu
from media import MAIN_FIXTURE, load_fixture
from rtc import Publisher, Viewer, wait_for


def candidate_addresses(sdp: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) ", sdp, re.MULTILINE)}


def test_advertised_address(tmp_path: Path, figures: list[str]) -> None:
    # 127.0.0.1 stands in for the public address: it is the only one the test may send to.
    sfu = Sfu(tmp_path, workers=1, name="deadsfu-nat", extra_args=["--ice-candidate-host", "127.0.0.1"]).start()

    async def run() -> None:
        publisher, viewer = Publisher(load_fixture(MAIN_FIXTURE), "nat-publisher"), Viewer("nat-viewer")
        try:
            r = await publisher.publish(sfu.url, "nat")
            assert r.status == 201, r.body
            assert candidate_addresses(r.body) == {"127.0.0.1"}, f"ingest advertises {candidate_addresses(r.body)}"
            await publisher.wait_connected()
            r = await viewer.view(sfu.url, "nat")
            assert r.status == 201, r.body
            assert candidate_addresses(r.body) == {"127.0.0.1"}, f"the worker advertises {candidate_addresses(r.body)}"
            await wait_for(lambda: len(viewer.rx.video) >= 30, 10, "30 frames at the viewer")
            figures.append("ice-candidate-host: only the configured address advertised; 30 frames decoded")
        finally:
            await asyncio.gather(publisher.close(), viewer.close(), return_exceptions=True)

    try:
        asyncio.run(run())
    finally:
        sfu.stop()
