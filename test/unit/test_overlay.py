"""The overlay people look at: answer drawn, and random-weights runs marked as such."""
from __future__ import annotations

import numpy as np

from vlm_grasp_locator.pipeline.locator import Detection, LocateResult
from vlm_grasp_locator.core.overlay import BANNER_COLOUR, draw_overlay


def _result() -> LocateResult:
    mask = np.zeros((120, 160), bool)
    mask[20:60, 30:90] = True
    det = Detection("cup", 0.14, (30.0, 20.0, 90.0, 60.0), mask, int(mask.sum()), 0.2)
    return LocateResult("take the cup", "cup", True, "", (160, 120), [det], {})


def _red_rows(image: np.ndarray) -> int:
    """Rows at the bottom edge whose pixels are mostly the banner colour."""
    rows = 0
    for row in image[::-1]:
        if np.mean(np.all(row == BANNER_COLOUR, axis=-1)) < 0.3:
            break
        rows += 1
    return rows


def test_random_weights_overlay_carries_a_banner_and_a_real_one_does_not() -> None:
    image = np.full((120, 160, 3), 200, np.uint8)
    plain = draw_overlay(image, _result())
    marked = draw_overlay(image, _result(), random_weights=True)
    assert _red_rows(plain) == 0
    assert 8 <= _red_rows(marked) < 40
    # the band has white text in it, and the answer above it is drawn the same way
    band = marked[-_red_rows(marked):]
    assert np.any(np.all(band == 255, axis=-1))
    np.testing.assert_array_equal(marked[:60], plain[:60])
    assert image.max() == 200  # the input is not drawn on
