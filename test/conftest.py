"""Markers by folder, and an empty model cache for every test and node process.

The folders are the layers of the suite: ``unit`` (pure code, and the pipeline with
parts of known semantics; seconds), ``models`` (the real architectures with random
weights: loading, equivalence with the reference, backends, CLI), ``ros`` (nodes over
DDS, the launch files and the ``ros2`` tools), ``system`` (colcon builds, the benchmark
and soak smoke runs, install scripts). ``pytest -m unit`` runs the first alone. Nothing
here imports torch or rclpy.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

import numpy as np
import pytest

from scenes import synthetic_scene

LAYERS = ("unit", "models", "ros", "system")


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    for item in items:
        parts = Path(str(item.path)).resolve().relative_to(here).parts
        if parts and parts[0] in LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session", autouse=True)
def no_real_checkpoints(tmp_path_factory: pytest.TempPathFactory):
    """An empty model cache, so every run (and every node process) uses random weights
    the same way, whatever a developer has downloaded."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("empty-cache"))
    yield
    if saved is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@pytest.fixture(scope="session")
def scene() -> np.ndarray:
    """The synthetic table scene (red and blue blocks) the unit and model tests share."""
    return synthetic_scene()
