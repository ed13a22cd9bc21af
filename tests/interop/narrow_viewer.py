"""One aiortc WHEP viewer, run by test_narrow_link.py inside the network namespace it made: it gathers its
candidate on the namespace's address, keeps deadsfu's candidates on the veth address only, watches for
`--seconds` after connecting and prints one JSON object: the answer's status, when it POSTed (monotonic clock,
which the test process shares), each decoded video frame (time, barcode) and what its RTP taps saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aioice.ice

import rtc
from observe import rtp_reports, rtp_problems
from rtc import Viewer


def candidates_on(sdp: str, address: str) -> str:
    """The SDP with only the ICE candidates on `address`."""
    kept = [line for line in sdp.splitlines()
            if not line.startswith("a=candidate:") or (len(line.split()) > 4 and line.split()[4] == address)]
    return "\r\n".join(kept) + "\r\n"


async def main(args: argparse.Namespace) -> dict:
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [args.address]
    rtc.loopback_candidates_only = lambda sdp: candidates_on(sdp, args.server)
    v = Viewer("narrow")
    try:
        r = await v.view(args.url, args.room)
        out: dict = {"status": r.status, "body": r.body[:200] if r.status != 201 else "", "t_post": v.t_post}
        if r.status != 201:
            return out
        await v.wait_connected()
        await asyncio.sleep(args.seconds)
        reports = rtp_reports(v)
        out.update({
            "t_end": time.monotonic(),
            "frames": [(f.t, f.n) for f in v.rx.frames],
            "problems": rtp_problems(v, reports),
            "rtp": {kind: r.summary() for kind, r in reports.items()},
            "video_packets": len(v.rtp["video"].media()),
            "counts": await v.rtp_counts(),
        })
        return out
    finally:
        await v.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--room", required=True)
    p.add_argument("--address", required=True, help="this namespace's address")
    p.add_argument("--server", required=True, help="deadsfu's address on the veth")
    p.add_argument("--seconds", type=float, required=True)
    result = asyncio.run(main(p.parse_args()))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
