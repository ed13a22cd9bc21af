#!/usr/bin/env python3
"""Publishes the looping H.264 + Opus fixture into one room of a deadsfu host, for the benchmark.

Usage: publish.py BASE_URL ROOM [FIXTURE]

Prints `published` on stdout once the session is connected, then publishes (looping the fixture) until its
stdin closes or it gets SIGTERM/SIGINT; then it DELETEs its session and exits.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))

from media import MAIN_FIXTURE, load_fixture  # noqa: E402
from rtc import Publisher  # noqa: E402


async def main() -> int:
    base_url, room = sys.argv[1], sys.argv[2]
    fixture = load_fixture(Path(sys.argv[3]) if len(sys.argv) > 3 else MAIN_FIXTURE)
    pub = Publisher(fixture)
    resp = await pub.publish(base_url, room)
    if resp.status != 201:
        print(f"publish failed: {resp.status} {resp.body.strip()}", file=sys.stderr)
        return 1
    await pub.wait_connected(20)
    print("published", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.buffer.read1(4096) else None)
    await stop.wait()
    await pub.close(delete=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
