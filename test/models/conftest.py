"""Fixtures of the model tests: the real architectures with random weights, built once."""

from __future__ import annotations

import pytest

from scenes import SMALL_PIPELINE


@pytest.fixture(scope="session")
def locator():
    import torch

    from vlm_grasp_locator.backends.factory import build_locator
    from vlm_grasp_locator.pipeline.locator import LocatorConfig

    torch.set_num_threads(2)
    return build_locator(LocatorConfig(**SMALL_PIPELINE), workers=None)
