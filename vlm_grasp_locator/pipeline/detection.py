"""``Detection``: one located object, whoever located it (``Locator.locate`` or a track).

Its own module so that ``tracking`` (which ``locator`` imports) can carry detections
without importing ``locator``; ``locator`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

import numpy as np


@dataclass
class Detection:
    """One located object. box_xyxy: pixels of the input image, x1/y1 exclusive."""

    label: str
    score: float  # calibrated, in [0, 1]
    box_xyxy: Tuple[float, float, float, float]
    mask: np.ndarray = field(repr=False)  # bool (H, W) at the input image's size
    mask_area: int
    similarity: float  # raw cosine similarity of crop and phrase
