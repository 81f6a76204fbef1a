"""Fast mode's first step: let the target phrase decide where MobileSAM is prompted.

Exact mode prompts MobileSAM with a 16x16 grid (256 prompts) and scores every surviving
mask with TinyCLIP. Fast mode spends a little TinyCLIP work up front instead:

1. **Relevance windows.** A few square windows at two scales tile the image (side = the
   short side, then half of it; the fewest windows that cover the image, spread evenly,
   so 2 + 6 = 8 windows at 640x480 and 2 + 8 at 1280x720). Each window is one 224x224
   TinyCLIP forward through ``encode_images`` (no patch-token internals, so any backend
   that provides an ``ImageTextModel`` works) and gets the same calibrated score as a mask
   crop: target phrase against the generic negatives. The window embeddings depend on
   the image alone, so a new phrase on the same frame reuses them.
2. **Relevance map.** The relevance of a pixel is the mean score of the windows that
   contain it: the large windows say which half of the image, the small ones refine it.
3. **Prompt choice.** Candidate points are each window's centre and its four quarter
   points (spacing a quarter of the window side). They are taken greedily by relevance,
   skipping any closer than ``min_spacing`` to one already taken, up to ``max_prompts``
   (at most 32). Single-point prompts decode to the object under the point at three
   granularities, so a handful of spread points over the hot region finds its objects.

Why windows rather than patch tokens: CLIP's final patch tokens are poorly aligned with
text without model surgery (MaskCLIP-style value-path tricks) that depends on the
vision tower's internals; whole-window embeddings are what CLIP was trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import cv2
import numpy as np
import torch

from vlm_grasp_locator.models.interfaces import ImageTextModel
from vlm_grasp_locator.pipeline.crop_scoring import crops_to_tensor

# Window sides as fractions of the image's short side, coarse to fine. Two scales keep
# the relevance pass at ~8-10 TinyCLIP forwards (~4 GFLOP each for ViT-61M/32).
WINDOW_SCALES: Tuple[float, ...] = (1.0, 0.5)
# At most this many windows per axis and scale: an extreme strip of an image (a 2048x8
# panorama) gets wider windows instead of hundreds of TinyCLIP forwards.
MAX_WINDOWS_PER_AXIS = 4
MAX_PROMPTS = 32  # hard ceiling for ``fast_prompts``
WINDOW_SIZE = 224  # TinyCLIP's input side

RelevanceScorer = Callable[[np.ndarray], np.ndarray]  # window boxes (N, 4) -> scores (N,)


def relevance_windows(
    width: int, height: int, scales: Sequence[float] = WINDOW_SCALES
) -> np.ndarray:
    """(N, 4) int windows x0, y0, x1, y1 (x1/y1 exclusive), all inside the image.

    Per scale: side = scale x the short side; the fewest windows per axis that cover it,
    spread evenly from edge to edge (they overlap where the side does not divide the axis).
    Windows are square unless an axis would need more than ``MAX_WINDOWS_PER_AXIS``; then
    they widen along it (only for images over ~4:1 at scale 1, ~8:1 at scale 0.5).
    """
    if width < 1 or height < 1:
        raise ValueError(f"image of {width}x{height} pixels has no windows")
    short = min(width, height)
    boxes: List[Tuple[int, int, int, int]] = []
    for scale in scales:
        side = max(1, int(round(short * scale)))
        side_w = min(width, max(side, math.ceil(width / MAX_WINDOWS_PER_AXIS)))
        side_h = min(height, max(side, math.ceil(height / MAX_WINDOWS_PER_AXIS)))
        xs = np.linspace(0, width - side_w, math.ceil(width / side_w)).round().astype(int)
        ys = np.linspace(0, height - side_h, math.ceil(height / side_h)).round().astype(int)
        boxes.extend((int(x), int(y), int(x) + side_w, int(y) + side_h) for y in ys for x in xs)
    return np.unique(np.array(boxes, dtype=np.int64), axis=0)


def window_crops(
    image: np.ndarray, windows: np.ndarray, size: int = WINDOW_SIZE
) -> List[np.ndarray]:
    """Plain square crops of ``image`` (HxWx3 uint8) for each window, resized to ``size``."""
    crops = []
    for x0, y0, x1, y1 in windows:
        region = image[y0:y1, x0:x1]
        interpolation = cv2.INTER_AREA if region.shape[0] > size else cv2.INTER_CUBIC
        crops.append(cv2.resize(region, (size, size), interpolation=interpolation))
    return crops


@torch.inference_mode()
def embed_windows(
    clip: ImageTextModel, image: np.ndarray, windows: np.ndarray, batch_size: int
) -> torch.Tensor:
    """(N, D) normalised TinyCLIP embeddings of the window crops, ``batch_size`` at a time."""
    chunks = []
    for start in range(0, len(windows), batch_size):
        crops = window_crops(image, windows[start : start + batch_size])  # noqa: E203
        chunks.append(clip.encode_images(crops_to_tensor(crops)))
    return torch.cat(chunks)


def relevance_at(points_xy: np.ndarray, windows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The relevance map at ``points_xy`` (K, 2): mean score of the windows containing
    each point."""
    x, y = points_xy[:, 0:1], points_xy[:, 1:2]
    inside = (
        (x >= windows[:, 0]) & (x < windows[:, 2]) & (y >= windows[:, 1]) & (y < windows[:, 3])
    )  # (K, N)
    counts = inside.sum(axis=1)
    return np.where(
        counts > 0, (inside * scores[None, :]).sum(axis=1) / np.maximum(counts, 1), 0.0
    )


def candidate_points(windows: np.ndarray) -> np.ndarray:
    """Each window's centre and its four quarter points, (5N, 2) pixel x, y (duplicates
    removed)."""
    x0, y0, x1, y1 = (windows[:, i].astype(np.float64) for i in range(4))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    qx, qy = (x1 - x0) / 4.0, (y1 - y0) / 4.0
    offsets = ((0.0, 0.0), (-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0))
    points = np.concatenate([np.stack([cx + dx * qx, cy + dy * qy], axis=1) for dx, dy in offsets])
    return np.unique(points, axis=0)


@dataclass
class PromptChoice:
    """The chosen prompts, best first, and the relevance behind them."""

    points_xy: np.ndarray  # (K, 2) float pixel x, y inside the image
    relevance: np.ndarray  # (K,) relevance map value at each point
    windows: np.ndarray  # (N, 4) the relevance windows
    window_scores: np.ndarray  # (N,)


def choose_prompts(
    width: int,
    height: int,
    windows: np.ndarray,
    window_scores: np.ndarray,
    max_prompts: int,
    min_spacing: float = 0.0,
) -> PromptChoice:
    """Up to ``max_prompts`` points, most relevant first, no two closer than ``min_spacing``.

    ``min_spacing`` 0 means a quarter of the smallest window side (the candidate grid's
    own spacing, so only coincident points are dropped at the finest scale).
    """
    if not 1 <= max_prompts <= MAX_PROMPTS:
        raise ValueError(f"max_prompts must be in [1, {MAX_PROMPTS}], got {max_prompts}")
    window_scores = np.asarray(window_scores, dtype=np.float64)
    if window_scores.shape != (len(windows),):
        raise ValueError(
            f"need one score per window: {len(windows)} windows, "
            f"scores of shape {window_scores.shape}"
        )
    if min_spacing <= 0:
        min_spacing = (
            float(np.minimum(windows[:, 2] - windows[:, 0], windows[:, 3] - windows[:, 1]).min())
            / 4.0
        )
    points = candidate_points(windows)
    points[:, 0] = points[:, 0].clip(0, width - 1)
    points[:, 1] = points[:, 1].clip(0, height - 1)
    relevance = relevance_at(points, windows, window_scores)
    # Most relevant first; ties (flat maps, e.g. random weights) by closeness to the centre.
    centre_distance = np.hypot(points[:, 0] - width / 2.0, points[:, 1] - height / 2.0)
    order = np.lexsort((centre_distance, -relevance))
    chosen: List[int] = []
    for i in order:
        if all(np.hypot(*(points[i] - points[j])) >= min_spacing - 1e-9 for j in chosen):
            chosen.append(int(i))
            if len(chosen) == max_prompts:
                break
    return PromptChoice(points[chosen], relevance[chosen], windows, window_scores)


def prompt_rank_of(mask_points_xy: np.ndarray, prompts_xy: np.ndarray) -> np.ndarray:
    """For each mask's prompting point, the index of that prompt in ``prompts_xy`` (best first)."""
    if len(mask_points_xy) == 0:
        return np.zeros(0, dtype=np.int64)
    distance = np.abs(mask_points_xy[:, None, :].astype(np.float64) - prompts_xy[None, :, :]).sum(
        axis=-1
    )
    return distance.argmin(axis=1)
