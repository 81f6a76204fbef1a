"""Test inputs shared by the test folders: the tiny pipeline config and a synthetic scene."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

# Coarse grid and no quality thresholds: random weights still leave masks to score,
# and MobileSAM's encoder (the same cost for any image size) runs as rarely as possible.
SMALL_PIPELINE: Dict[str, Any] = dict(
    device="cpu",
    allow_random_weights=True,
    points_per_side=4,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    min_mask_region_area=0,
    score_threshold=0.0,
    num_threads=2,
)


def synthetic_scene(height: int = 240, width: int = 320, seed: int = 0) -> np.ndarray:
    """Grey table with three clearly separate coloured blocks, a little noise."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 190, dtype=np.int16)
    image[height // 10 : height * 4 // 10, width // 10 : width * 4 // 10] = (220, 30, 30)
    image[height // 2 : height * 9 // 10, width // 2 : width * 9 // 10] = (30, 30, 220)
    image[height // 5 : height * 6 // 10, width * 6 // 10 : width * 8 // 10] = (30, 160, 30)
    image += rng.integers(-8, 9, image.shape, dtype=np.int16)
    return image.clip(0, 255).astype(np.uint8)


def assert_well_formed(result, width: int, height: int) -> None:
    """A LocateResult is consistent: ranked, boxes inside the image and tight on the masks."""
    assert result.image_size == (width, height)
    scores = [d.score for d in result.detections]
    assert scores == sorted(scores, reverse=True)
    for d in result.detections:
        x0, y0, x1, y1 = d.box_xyxy
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert d.mask.shape == (height, width) and d.mask.dtype == bool
        assert d.mask_area == int(d.mask.sum()) > 0
        ys, xs = np.nonzero(d.mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        assert 0.0 <= d.score <= 1.0 and np.isfinite(d.similarity)
        assert d.label == result.target
    assert np.isfinite(result.timings_ms["total"])
