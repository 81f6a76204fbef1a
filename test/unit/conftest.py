"""Fixtures of the unit tests: the real architectures with random weights, built once."""
from __future__ import annotations

import numpy as np
import pytest

from scenes import SMALL_PIPELINE, synthetic_scene


@pytest.fixture(scope="session")
def scene() -> np.ndarray:
    return synthetic_scene()


@pytest.fixture(scope="session")
def locator():
    import torch

    from vlm_grasp_locator.pipeline.locator import Locator, LocatorConfig

    torch.set_num_threads(2)
    return Locator.from_config(LocatorConfig(**SMALL_PIPELINE))
