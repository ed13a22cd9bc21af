"""The soak script's one-minute run: a host under churn (publishers, viewers joining, leaving and switching,
hostile noise, a worker killed twice) keeps its memory, descriptors, threads and ring files flat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_minute_of_churn_leaves_resources_flat(tmp_path, figures):
    out = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak"), "--seconds", "60", "--kill-every", "25", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    report = run.stdout + run.stderr
    figures.append("soak (60 s): " + next((l for l in run.stdout.splitlines() if l.startswith("soak: ") and "actions" in l), "?"))
    assert run.returncode == 0, report
    result = json.loads(out.read_text())
    assert result["verdict"] == "flat", report
    counts = result["counts"]
    assert counts["view"] > 5 and counts["switch"] > 0 and counts["noise"] > 0 and counts["kill"] >= 2, counts
