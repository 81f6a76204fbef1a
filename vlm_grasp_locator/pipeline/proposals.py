"""``Proposals``: the candidate object masks of one image, whoever proposed them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


@dataclass
class Proposals:
    """Candidate object masks for one image.

    masks: (N, H, W) bool at the image's size. boxes_xyxy: (N, 4) pixel box around
    each mask, x1/y1 exclusive. predicted_iou, stability_score: (N,) MobileSAM's own
    quality estimates. point_coords: (N, 2) the grid point (x, y) that prompted it.
    """

    masks: np.ndarray
    boxes_xyxy: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    point_coords: np.ndarray

    def __len__(self) -> int:
        return len(self.masks)

    @property
    def areas(self) -> np.ndarray:
        return self.masks.reshape(len(self.masks), -1).sum(axis=1)

    def subset(self, index: np.ndarray) -> "Proposals":
        """The proposals at ``index`` (an index array or boolean mask), in that order."""
        return Proposals(
            masks=self.masks[index],
            boxes_xyxy=self.boxes_xyxy[index],
            predicted_iou=self.predicted_iou[index],
            stability_score=self.stability_score[index],
            point_coords=self.point_coords[index],
        )

    @classmethod
    def empty(cls, size_hw: Tuple[int, int]) -> "Proposals":
        h, w = size_hw
        return cls(
            masks=np.zeros((0, h, w), dtype=bool),
            boxes_xyxy=np.zeros((0, 4), dtype=np.float32),
            predicted_iou=np.zeros(0, dtype=np.float32),
            stability_score=np.zeros(0, dtype=np.float32),
            point_coords=np.zeros((0, 2), dtype=np.float32),
        )

    @classmethod
    def from_masks(cls, masks: np.ndarray, quality: Optional[np.ndarray] = None) -> "Proposals":
        """Proposals of any (N, H, W) masks (a plug-in proposer's): boxes from the masks,
        ``quality`` (default 1) as both quality estimates, each mask's centre of mass as
        its point ((0, 0) for an empty mask)."""
        masks = np.asarray(masks, dtype=bool)
        n = len(masks)
        boxes = np.zeros((n, 4), dtype=np.float32)
        points = np.zeros((n, 2), dtype=np.float32)
        for i, mask in enumerate(masks):
            ys, xs = np.nonzero(mask)
            if len(xs):
                boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                points[i] = (xs.mean(), ys.mean())
        quality = np.ones(n, np.float32) if quality is None else np.asarray(quality, np.float32)
        return cls(masks, boxes, quality.copy(), quality.copy(), points)
