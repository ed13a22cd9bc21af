"""The benchmark runs end to end: `scripts/bench` with a few viewers for a few seconds produces its report.

Only the report's shape and sanity are checked here (every viewer got media, the figures are there and
plausible); speed is the benchmark's business, not a test's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness import BIN_DIR, REPO_ROOT

pytestmark = pytest.mark.timeout(300)


def test_bench_smoke(tmp_path):
    for b in ("deadsfu", "deadsfu-load", "deadsfu-floor"):
        assert (BIN_DIR / b).exists(), f"{BIN_DIR / b} missing: run `cargo build --release --workspace`"
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench"), "--viewers", "5", "--workers", "1",
         "--seconds", "3", "--warmup", "1", "--idle-seconds", "2", "--json", str(out), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    assert "| workers | viewers |" in proc.stdout, proc.stdout
    report = json.loads(out.read_text())
    assert report["machine"]
    (r,) = report["results"]
    assert "error" not in r, r
    assert (r["workers"], r["viewers"]) == (1, 5)

    ramp = r["ramp"]
    assert ramp["with_media"] == 5 and ramp["failed"] == 0, ramp
    assert ramp["ttff_ms"]["n"] == 5 and 0 < ramp["ttff_ms"]["p50"] <= ramp["ttff_ms"]["p99"], ramp
    assert ramp["joins_per_s_per_core"] is None or ramp["joins_per_s_per_core"] > 0

    w = r["window"]
    assert w["ring_packets"] > 0 and w["received"] > 0, w
    assert w["expected"] == w["ring_packets"] * 5
    assert 0 < w["delivery_ratio"] <= 1.05, w
    assert set(w["anomalies"]) == {"gaps", "missing", "duplicates", "reorders"}
    assert w["fanout_us_per_packet"] > 0 and w["ingest_us_per_packet"] > 0, w
    assert w["latency_us"]["n"] > 0 and 0 <= w["latency_us"]["p50"] <= w["latency_us"]["p99"], w["latency_us"]
    assert w["sample"]["decrypted_rtp"] > 0, w["sample"]  # the decrypting viewers authenticated SRTP

    f = r["floor"]
    assert f["sent"] > 0 and f["sender_cpu_us_per_packet"] > 0 and f["viewers"] == 5, f
    assert r["ratio_fanout_floor"] > 0
    assert isinstance(r["rss_kb_per_viewer"], (int, float))
    assert r["idle"]["viewers_connected"] == 5 and r["idle"]["fanout_core_percent"] >= 0, r["idle"]
