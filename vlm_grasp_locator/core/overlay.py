"""A picture of the answer for people: mask tinted, box drawn, "label score" written."""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np

BEST_COLOUR: Tuple[int, int, int] = (0, 220, 80)
OTHER_COLOUR: Tuple[int, int, int] = (255, 170, 0)
TINT_ALPHA = 0.45
RANDOM_WEIGHTS_BANNER = "RANDOM WEIGHTS"
BANNER_COLOUR: Tuple[int, int, int] = (255, 0, 0)


def draw_overlay(image_rgb: np.ndarray, result, *, random_weights: bool = False) -> np.ndarray:
    """An RGB copy of ``image_rgb`` (HxWx3 uint8) with ``result``'s detections drawn on it.

    The best detection is green; the others are orange, outlined only. When nothing was
    found, the reason is written in the corner. ``random_weights`` adds a red banner
    along the bottom edge, so a smoke run's picture is never taken for a real answer.
    """
    out = np.ascontiguousarray(image_rgb, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    thickness = max(1, round(max(h, w) / 400))
    font_scale = max(0.4, max(h, w) / 1200)
    for rank, det in reversed(list(enumerate(result.detections))):
        colour = BEST_COLOUR if rank == 0 else OTHER_COLOUR
        if rank == 0:
            tint = np.array(colour, dtype=np.float32)
            out[det.mask] = (out[det.mask] * (1 - TINT_ALPHA) + tint * TINT_ALPHA).astype(np.uint8)
        x0, y0, x1, y1 = (int(round(v)) for v in det.box_xyxy)
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), colour, thickness)
        _label(out, f"{det.label} {det.score:.2f}", (x0, y0), colour, font_scale, thickness)
    if not result.found:
        _label(out, f"not found: {result.reason}"[:80], (0, 0), (230, 60, 60), font_scale,
               thickness)
    if random_weights:
        _banner(out, RANDOM_WEIGHTS_BANNER, font_scale, thickness)
    return out


def _banner(image: np.ndarray, text: str, font_scale: float, thickness: int) -> None:
    """White text on a full-width red band at the bottom edge."""
    h, w = image.shape[:2]
    (_, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    band = min(h, th + baseline + 6)
    image[h - band:] = BANNER_COLOUR
    cv2.putText(image, text, (3, h - baseline - 3), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                (255, 255, 255), thickness, cv2.LINE_AA)


def _label(image: np.ndarray, text: str, corner: Tuple[int, int], colour: Tuple[int, int, int],
           font_scale: float, thickness: int) -> None:
    """Text on a filled box just above ``corner`` (or below it at the image's top edge)."""
    (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
    x, y = corner
    top = y - th - baseline - 2 if y - th - baseline - 2 >= 0 else y
    cv2.rectangle(image, (x, top), (x + tw + 2, top + th + baseline + 2), colour, -1)
    cv2.putText(image, text, (x + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                (0, 0, 0), thickness, cv2.LINE_AA)
