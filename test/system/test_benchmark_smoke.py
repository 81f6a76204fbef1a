"""bench/benchmark.py --quick runs end to end and ends with a sane JSON summary."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlm_grasp_locator.pipeline.locator import FAST_SCORED_CROPS, LocatorConfig

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = (
    "speedup_exact", "best_box_iou", "repeat_command_ms", "peak_rss_mb", "reference_ms",
    "package_ms",
    "speedup_fast", "fast_ms", "fast_prompts", "fast_crops", "fast_best_box_iou",
)


@pytest.fixture(scope="module")
def summary() -> dict:
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
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
        value = summary[key]
        assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)
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
        # The fast-mode row: at most its prompt budget (<= 32) decoded, few crops scored.
        assert entry["speedup_fast"] > 0 and entry["fast_ms"] > 0
        assert 1 <= entry["fast_prompts"] <= summary["fast_prompts_limit"] <= 32
        assert 0 <= entry["fast_crops"] <= max(FAST_SCORED_CROPS, LocatorConfig.max_detections)
        assert 0.0 <= entry["fast_best_box_iou"] <= 1.0


@pytest.fixture()
def benchmark_module(monkeypatch):
    """bench/benchmark.py imported as a module (nothing runs at import)."""
    spec = importlib.util.spec_from_file_location("benchmark_under_test",
                                                  ROOT / "bench" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_missing_onnx_models_skip_the_optional_row(benchmark_module, tmp_path, capsys):
    """--backend-onnx with an empty folder: the row is skipped with the reason, nothing fails."""
    # no random weights: missing models are an error
    config = benchmark_module.LocatorConfig(device="cpu")
    rows = benchmark_module.onnx_locators(config, config, str(tmp_path / "no-models"))
    assert rows == {}
    assert "ONNX Runtime row skipped" in capsys.readouterr().out


def test_every_extra_row_prints_and_goes_into_the_json(benchmark_module):
    """The fast and ONNX rows' report line and JSON keys (the ONNX rows cannot run here)."""
    row = {
        "ms": {"total": 2000.0, "encoder": 0.0, "masks": 2000.0, "cpu": 2500.0},
        "gflop": {"encoder": 0.0, "masks": 0.0, "total": 0.0},
        "stage_ms": {"relevance": 300.0, "proposals": 1500.0, "crops": 200.0, "text": 1.0},
        "prompts": 12, "crops": 6, "best_box_iou": 0.5, "new_target_ms": 1700.0,
        "peak_rss_mb": 1.0,
    }
    reference = {"total": 40000.0, "cpu": 42000.0}
    for name in benchmark_module.LOCATE_ROWS:
        line = benchmark_module.row_line(name, row, reference)
        assert line.startswith(benchmark_module.ROW_LABELS[name]) and "20.0x" in line
        assert ("12 prompts decoded" in line) == name.endswith("fast")
        keys = benchmark_module.row_json(name, row, {"reference": reference})
        assert keys[f"speedup_{name}"] == 20.0 and keys[f"{name}_prompts"] == 12
