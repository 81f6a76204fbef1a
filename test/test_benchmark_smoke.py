"""bench/benchmark.py --quick runs end to end and ends with a sane JSON summary."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("speedup_exact", "best_box_iou", "repeat_command_ms", "peak_rss_mb", "reference_ms", "package_ms")


@pytest.fixture(scope="module")
def summary() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    # < 60 s on an idle 2-core machine; the limit leaves room for a busy one.
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "benchmark.py"), "--quick"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines, "benchmark printed nothing"
    return json.loads(lines[-1])


def test_summary_has_the_keys(summary):
    for key in REQUIRED:
        assert key in summary, key
        assert isinstance(summary[key], (int, float)) and math.isfinite(summary[key]), (key, summary[key])
    assert summary["sizes"] and summary["size"] in summary["sizes"]


def test_values_are_sane(summary):
    assert summary["speedup_exact"] > 0
    assert summary["speedup_locate"] > 0
    assert 0.0 <= summary["best_box_iou"] <= 1.0
    assert summary["repeat_command_ms"] > 0
    assert summary["reference_ms"] > 0 and summary["package_ms"] > 0
    assert summary["peak_rss_mb"] > 100  # two models are loaded
    for entry in summary["sizes"].values():
        assert entry["speedup_exact"] > 0 and 0.0 <= entry["best_box_iou"] <= 1.0
        # Both pipelines scored the same number of masks, and locate() found some.
        assert entry["masks"]["reference"] == entry["masks"]["package"] == summary["crops"]
        assert entry["masks"]["locate"] >= 1
