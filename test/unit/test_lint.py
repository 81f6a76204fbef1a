"""flake8 over the package, the tests, the benchmark, the launch files and the examples.

One line length for all (99 columns, setup.cfg's [flake8] section); ``colcon test``
runs this file alone as the ``lint`` test too.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("vlm_grasp_locator", "test", "bench", "launch", "examples")


@pytest.mark.skipif(importlib.util.find_spec("flake8") is None,
                    reason="flake8 is not installed (scripts/setup.sh installs it)")
def test_flake8_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "flake8", *CHECKED], cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
