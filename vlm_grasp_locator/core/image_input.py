"""Bring numpy images into the one form the models take: HxWx3 uint8 RGB.

Also sizes images down for processing and masks back up, so a 4K frame costs what a
1024-pixel one does and the result still lines up with the original pixels.
"""
from __future__ import annotations

import hashlib
from typing import Tuple

import cv2
import numpy as np

CHANNEL_ORDERS = ("rgb", "bgr")


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy.ndarray, got {type(image).__name__}")
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be HxW or HxWxC, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must have non-zero height and width, got shape {image.shape}")
    return np.asarray(image)  # drop subclasses such as np.matrix or masked arrays


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale values to uint8; the result may share memory with ``image`` when it is uint8."""
    dtype = image.dtype
    if dtype == np.uint8:
        return image
    if dtype == np.bool_:
        return image.astype(np.uint8) * np.uint8(255)
    if dtype.kind == "u" and dtype.itemsize == 2:
        # Round to nearest of x / 257, the exact inverse of 8 -> 16 bit expansion (x * 257).
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ValueError("float image contains NaN or infinity")
        scaled = np.clip(image, 0.0, 1.0).astype(np.float32) * np.float32(255.0)
        return np.rint(scaled).astype(np.uint8)
    raise ValueError(
        f"unsupported image dtype {dtype}; "
        "expected uint8, uint16, bool or float (values in [0, 1])"
    )


def to_rgb_uint8(image: np.ndarray, *, channel_order: str = "rgb") -> np.ndarray:
    """Return ``image`` as a C-contiguous HxWx3 uint8 RGB array.

    Takes HxW, HxWx1, HxWx3 or HxWx4 (alpha dropped) arrays of uint8, uint16 (divided
    by 257 with rounding), bool (True -> 255) or float in [0, 1] (x255, clipped).
    ``channel_order="bgr"`` swaps colour images to RGB (BGRA: 4 channels with "bgr").
    An array already in the target form is returned itself, not a copy.
    """
    if channel_order not in CHANNEL_ORDERS:
        raise ValueError(
            f"unknown channel_order {channel_order!r}; expected one of {CHANNEL_ORDERS}"
        )
    image = _check_image(image)
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must have 1, 3 or 4 channels, got shape {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and channel_order == "bgr":
        image = image[:, :, 2::-1]
    elif image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    # Convert before broadcasting grey to three channels, so the arithmetic runs once.
    image = _to_uint8(image)
    if image.ndim == 2:
        return np.repeat(image[:, :, np.newaxis], 3, axis=2)
    return np.ascontiguousarray(image)


def fit_long_side(image: np.ndarray, max_side: int) -> Tuple[np.ndarray, float]:
    """Shrink ``image`` so its long side is ``max_side``; return it and ``new / old``.

    Boxes found in the small image map back to the original by dividing by the scale.
    The scale is exact for the long side; the short side is rounded to whole pixels.
    An image that already fits is returned as the same object with scale 1.0.
    """
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < 1:
        raise ValueError(f"max_side must be a positive int, got {max_side!r}")
    image = _check_image(image)
    height, width = image.shape[:2]
    long_side = max(height, width)
    if long_side <= max_side:
        return image, 1.0
    scale = int(max_side) / long_side
    new_h = max_side if height == long_side else max(1, round(height * scale))
    new_w = max_side if width == long_side else max(1, round(width * scale))
    try:
        resized = cv2.resize(
            np.ascontiguousarray(image), (int(new_w), int(new_h)), interpolation=cv2.INTER_AREA
        )
    except cv2.error as e:
        raise ValueError(
            f"cannot resize an image of dtype {image.dtype} and shape {image.shape}; OpenCV takes "
            "uint8, uint16, int16, float32 or float64 with up to 512 channels"
        ) from e
    if image.ndim == 3 and resized.ndim == 2:  # OpenCV drops a single channel axis
        resized = resized[:, :, np.newaxis]
    return resized, scale


def resize_mask(mask: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """Resize a 2-D mask to ``size_hw`` (height, width) by nearest neighbour; returns bool.

    Pixel centres are sampled (like PIL's nearest), so masks don't drift by half a
    pixel as they would with ``cv2.INTER_NEAREST``. Non-bool masks count non-zero as True.
    """
    mask = _check_image(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {mask.shape}")
    if len(size_hw) != 2 or any(
        isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in size_hw
    ):
        raise ValueError(f"size_hw must be two positive ints (height, width), got {size_hw!r}")
    out_h, out_w = int(size_hw[0]), int(size_hw[1])
    if mask.dtype != np.bool_:
        mask = mask != 0
    in_h, in_w = mask.shape
    rows = np.minimum(((np.arange(out_h) + 0.5) * (in_h / out_h)).astype(np.intp), in_h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * (in_w / out_w)).astype(np.intp), in_w - 1)
    return np.ascontiguousarray(mask[rows][:, cols])


def frame_key(image: np.ndarray) -> str:
    """A content hash: the same pixels give the same key, whatever array holds them."""
    digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16)
    digest.update(repr(image.shape).encode())
    return digest.hexdigest()
