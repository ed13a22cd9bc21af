"""The benchmark runs end to end: `scripts/bench` with a few viewers for a few seconds produces its report.

Only the report's shape and sanity are checked here (every viewer got media, the figures are there, agree
with each other and measure what their columns say); speed is the benchmark's business, not a test's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import BIN_DIR, REPO_ROOT

pytestmark = pytest.mark.timeout(300)


def bench(tmp_path, *args: str) -> subprocess.CompletedProcess:
    for b in ("deadsfu", "deadsfu-load", "deadsfu-floor", "deadsfu-ring"):
        assert (BIN_DIR / b).exists(), f"{BIN_DIR / b} missing: run `cargo build --release --workspace`"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench"), "--seconds", "3", "--warmup", "1",
         "--idle-seconds", "2", "--workdir", str(tmp_path), *args],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def cgroup_cpu_root() -> Path | None:
    """Where `scripts/bench --cpu-limit` makes its cgroups: cgroup v1's cpu controller or cgroup v2."""
    v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
    if (v1 / "cpu.cfs_quota_us").exists():
        return v1
    controllers = v2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return v2
    return None


CGROUP_CPU = cgroup_cpu_root()


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = bench(tmp_path, "--viewers", "5", "--workers", "1", "--pin", "--json", str(out))
    assert "| workers | viewers |" in proc.stdout, proc.stdout
    # The default publisher paces its packets as a browser does, and sends the H.264 fixture, as the report says.
    assert "pacing RTP at" in (tmp_path / "publisher-bench.log").read_text()
    assert "Stream: testsrc-h264-opus.mkv (H264, opus), paced at 2.5x its bitrate" in proc.stdout, proc.stdout
    report = json.loads(out.read_text())
    assert report["machine"]
    (r,) = report["results"]
    assert "error" not in r, r
    assert (r["workers"], r["viewers"]) == (1, 5)
    assert r["codecs"] == ["H264", "opus"], r["codecs"]
    # --pin: the worker on the second CPU this process may use, the rest on the first.
    first, second = sorted(os.sched_getaffinity(0))[:2]
    assert r["pinned"] == {"fanout_cpu": second, "other_cpu": first}, r

    ramp = r["ramp"]
    assert ramp["with_media"] == 5 and ramp["failed"] == 0, ramp
    assert ramp["ttff_ms"]["n"] == 5 and 0 < ramp["ttff_ms"]["p50"] <= ramp["ttff_ms"]["p99"], ramp
    # Joins per core are the viewers with media over the CPU signaling and the fanout spent on the ramp (none
    # when the ramp was shorter than a CPU tick).
    ramp_cpu = ramp["cpu_s"]["signaling"] + ramp["cpu_s"]["fanout"]
    assert ramp["joins_per_s_per_core"] == (pytest.approx(5 / ramp_cpu) if ramp_cpu > 0 else None), ramp
    # Every joining viewer got the cached GOP replayed (the ring held three keyframes before they came). Live
    # packets may be none yet in so short a ramp, but the count must be there: the "less live" figure is
    # the ramp's CPU less that count at the window's cost per packet.
    assert ramp["packets_replayed"] >= 5, ramp
    assert isinstance(ramp["packets_live"], int), ramp

    w = r["window"]
    assert w["ring_packets"] > 0 and w["received"] > 0, w
    assert w["expected"] == w["ring_packets"] * 5
    assert 0 < w["delivery_ratio"] <= 1.05, w
    assert set(w["anomalies"]) == {"gaps", "missing", "duplicates", "reorders"}
    assert w["fanout_us_per_packet"] > 0 and w["ingest_us_per_packet"] > 0, w
    assert w["fanout_throttled_s"] == 0, w  # no --cpu-limit: nothing holds the workers back
    assert w["fanout_wakeups_per_s"] > 0, w  # the worker slept between its turns
    join_cpu = ramp_cpu - ramp["packets_live"] * w["fanout_us_per_packet"] * 1e-6
    assert ramp["join_cpu_s"] == pytest.approx(join_cpu), (ramp, w["fanout_us_per_packet"])
    assert ramp["joins_per_s_per_core_less_live"] == (pytest.approx(5 / join_cpu) if join_cpu > 0 else None), ramp
    assert w["latency_us"]["n"] > 0 and 0 <= w["latency_us"]["p50"] <= w["latency_us"]["p99"], w["latency_us"]
    assert w["sample"]["decrypted_rtp"] > 0, w["sample"]  # the decrypting viewers authenticated SRTP

    # The floor ran twice, before the viewers came and after they left; the ratio is over their mean.
    f, f2 = r["floor"], r["floor_after"]
    for run in (f, f2):
        assert run["sent"] > 0 and run["sender_cpu_us_per_packet"] > 0 and run["viewers"] == 5, run
        # It looped whole GOPs of the stream as it flows: the first run, at the stream's start, left out the
        # first GOP, whose keyframe the publisher sends unpaced.
        assert run["capture_gops"] >= 1, run
    assert f["capture_skipped_first_gop"], f
    runs = (f["sender_cpu_us_per_packet"], f2["sender_cpu_us_per_packet"])
    assert r["floor_us_per_packet"] == pytest.approx({"before": runs[0], "after": runs[1], "mean": sum(runs) / 2})
    assert r["ratio_fanout_floor"] == pytest.approx(w["fanout_us_per_packet"] / (sum(runs) / 2))
    assert isinstance(r["rss_kb_per_viewer"], (int, float))
    # Idle means what the column says: the viewers stay connected and no media reaches them (no publisher,
    # no slate), so the figure is the cost of the sessions alone.
    idle = r["idle"]
    assert idle["viewers_connected"] == 5 and idle["packets_per_s"] == 0, idle
    assert isinstance(idle["fanout_core_percent"], float) and math.isfinite(idle["fanout_core_percent"]), idle
    assert idle["load_core_percent"] >= 0 and math.isfinite(idle["load_core_percent"]), idle


@pytest.mark.skipif(CGROUP_CPU is None or not os.access(CGROUP_CPU, os.W_OK),
                    reason="no writable cgroup cpu controller (run as root)")
def test_bench_cpu_limit_pacing_and_fixture_smoke(tmp_path):
    """`--cpu-limit` holds each worker to its share of a core and prints what each worker count carried; with
    `--publisher-pacing 0` the publisher sends a frame's packets back to back; with `--fixture` it publishes that
    file, here the VP8 one, which the room's ring then carries."""
    out = tmp_path / "bench.json"
    vp8 = REPO_ROOT / "tests" / "fixtures" / "testsrc-vp8-opus.mkv"
    proc = bench(tmp_path, "--viewers", "5", "--workers", "1,2", "--no-floor", "--cpu-limit", "0.5",
                 "--publisher-pacing", "0", "--fixture", str(vp8), "--json", str(out))
    assert "pacing RTP at" not in (tmp_path / "publisher-bench.log").read_text()
    assert "Stream: testsrc-vp8-opus.mkv (VP8, opus), unpaced" in proc.stdout, proc.stdout
    assert "| workers | viewers | limit per worker |" in proc.stdout, proc.stdout
    assert "- 2 workers: at most 5 viewers" in proc.stdout, proc.stdout
    results = json.loads(out.read_text())["results"]
    assert [(r["workers"], r.get("cpu_limit")) for r in results] == [(1, 0.5), (2, 0.5)], results
    for r in results:
        assert r["codecs"] == ["VP8", "opus"], r["codecs"]
        w = r["window"]
        assert w["delivery_ratio"] >= 0.99 and w["delivered_per_s"] > 0, w
        # Throttled time is read from each worker's cgroup, in seconds: a worker cannot be throttled longer
        # than the window on each core (a figure off by the unit, ns or µs, would be far beyond).
        assert 0 <= w["fanout_throttled_s"] <= r["workers"] * os.cpu_count() * w["wall_s"], w
    assert not list(CGROUP_CPU.glob("deadsfu-bench-*")), "the bench removed its cgroups"


def load_bench():
    """`scripts/bench` as a module (it has no .py suffix), for its report's pure functions."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("bench", str(REPO_ROOT / "scripts" / "bench"))
    spec = importlib.util.spec_from_loader("bench", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_rounds_summary_gives_medians_over_the_rounds_each_rounds_p99_and_the_floors():
    bench_module = load_bench()

    def run(viewers, ratio, p50, floor_p50, p99, floor_p99):
        return {
            "workers": 1, "viewers": viewers, "ratio_fanout_floor": ratio,
            "floor_us_per_packet": {"mean": 4.0},
            "floor": {"latency_us": {"p50": floor_p50, "p99": floor_p99}},
            "window": {"fanout_us_per_packet": 4.0 * ratio, "latency_us": {"p50": p50, "p99": p99}},
            "idle": {"fanout_core_percent": 1.0},
        }

    results = [
        run(200, 1.2, 600, 700, 1500, 4000),
        run(200, 1.5, 1900, 700, 5000, 4000),  # a slow round: its p99 is the worst, 1 ms over the floor's
        run(200, 1.1, 800, 700, 1200, 4200),
        run(1000, 1.3, 2500, 2000, 9000, 20000),
    ]
    text, summary = bench_module.rounds_summary(results)
    at200, at1000 = summary["by_count"]
    assert at200["ratio_fanout_floor"] == pytest.approx(1.2)
    # p50 over the floor's: -0.1, 1.2 and 0.1 ms; their median.
    assert at200["latency_p50_over_floor_ms"] == pytest.approx(0.1)
    # p99 over the floor's: -2.5, 1.0 and -3.0 ms; their median and the worst.
    assert at200["latency_p99_over_floor_ms"] == pytest.approx(-2.5)
    assert at200["latency_p99_over_floor_ms_worst"] == pytest.approx(1.0)
    assert at1000["latency_p50_over_floor_ms"] == pytest.approx(0.5)
    assert at1000["latency_p99_over_floor_ms_worst"] == pytest.approx(-11.0)
    assert summary["flatness"][1]["spread"] == pytest.approx(1.3 / 1.2 - 1)
    assert "| 1 | 200 | 3 of 3 | 4.80 | 4.00 | 1.20 (1.20, 1.50, 1.10) | 0.10 (-0.10, 1.20, 0.10) " \
        "| -2.50 (-2.50, 1.00, -3.00) | 4.00, 4.00, 4.20 | 1.00 |" in text, text
