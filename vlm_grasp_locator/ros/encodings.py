"""sensor_msgs/Image <-> numpy without ROS or cv_bridge.

A message is anything with ``height``, ``width``, ``encoding``, ``is_bigendian``,
``step`` and ``data`` attributes; outgoing images are returned as a dict of those
fields, which the ROS layer copies into a real message.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from vlm_grasp_locator.core.image_input import to_rgb_uint8

SUPPORTED_COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")

# encoding -> (dtype without byte order, channels)
_ENCODINGS: Dict[str, Tuple[str, int]] = {
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "rgba8": ("u1", 4),
    "bgra8": ("u1", 4),
    "mono8": ("u1", 1),
    "mono16": ("u2", 1),
    "8UC1": ("u1", 1),
    "8UC3": ("u1", 3),
    "16UC1": ("u2", 1),
    "32FC1": ("f4", 1),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)

_CHANNEL_ORDER = {
    "rgb8": "rgb", "rgba8": "rgb", "bgr8": "bgr", "bgra8": "bgr", "mono8": "rgb", "mono16": "rgb",
}


def _field_int(msg: Any, name: str) -> int:
    try:
        value = getattr(msg, name)
    except AttributeError as e:
        raise ValueError(f"image message has no {name!r} field") from e
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"image {name} must be an int, got {value!r}")
    return int(value)


def _data_bytes(data: Any) -> np.ndarray:
    """``data`` as a flat uint8 array, without copying when it exposes a buffer.

    Buffers (bytes, bytearray, array.array, memoryview, uint8 arrays) are read as raw
    bytes; other sequences, and numpy arrays of other dtypes, must hold ints in 0..255.
    """
    if isinstance(data, str):
        raise ValueError("image data must be bytes or a sequence of ints 0..255, got str")
    if not (isinstance(data, np.ndarray) and data.dtype != np.uint8):
        try:
            view = memoryview(data)
        except TypeError:
            pass  # not a buffer: a sequence of ints
        else:
            return np.frombuffer(view if view.c_contiguous else view.tobytes(), np.uint8)
    try:
        values = np.asarray(data)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError("image data must be bytes or a sequence of ints 0..255") from e
    if values.size == 0:
        return np.zeros(0, np.uint8)
    if values.ndim != 1 or values.dtype.kind not in "iub":
        raise ValueError(
            "image data must be bytes or a flat sequence of ints 0..255, "
            f"got {values.dtype} of shape {values.shape}"
        )
    if values.min() < 0 or values.max() > 255:
        raise ValueError("image data values must be in 0..255")
    return values.astype(np.uint8)


@dataclass(frozen=True)
class _Layout:
    dtype: np.dtype
    channels: int
    height: int
    width: int
    step: int

    @property
    def row_bytes(self) -> int:
        return self.width * self.channels * self.dtype.itemsize


def _layout(msg: Any, encodings: Tuple[str, ...] = SUPPORTED_ENCODINGS) -> _Layout:
    """The message's pixel layout, checked against its fields (not its data)."""
    encoding = getattr(msg, "encoding", None)
    if not isinstance(encoding, str) or encoding not in encodings:
        kind = "colour image" if encodings == SUPPORTED_COLOR_ENCODINGS else "image"
        raise ValueError(
            f"unsupported {kind} encoding {encoding!r}; supported: {', '.join(encodings)}"
        )
    base, channels = _ENCODINGS[encoding]
    height, width = _field_int(msg, "height"), _field_int(msg, "width")
    step = _field_int(msg, "step")
    if height <= 0 or width <= 0:
        raise ValueError(f"image height and width must be positive, got {height}x{width}")
    dtype = np.dtype(base).newbyteorder(">" if getattr(msg, "is_bigendian", 0) else "<")
    layout = _Layout(dtype, channels, height, width, step)
    if step < layout.row_bytes:
        raise ValueError(
            f"image step {step} is less than width * bytes per pixel = {width} * "
            f"{channels * dtype.itemsize} = {layout.row_bytes} for {encoding}"
        )
    return layout


def _check_size(layout: _Layout, size: int) -> None:
    if size < layout.step * layout.height:
        raise ValueError(
            "image data too short: expected step * height = "
            f"{layout.step} * {layout.height} = {layout.step * layout.height} bytes, got {size}"
        )


def check_color_image(msg: Any) -> None:
    """Raise ValueError unless :func:`image_msg_to_rgb` can decode ``msg``; cheap (reads
    the fields and the data's length, converts nothing): frames are checked on arrival
    and decoded only when a query uses them."""
    layout = _layout(msg, SUPPORTED_COLOR_ENCODINGS)
    data = getattr(msg, "data", None)
    size: Optional[int] = None
    if not isinstance(data, (str, np.ndarray)) or data.dtype == np.uint8:
        try:
            size = memoryview(data).nbytes  # raw bytes, as _data_bytes reads them
        except TypeError:
            pass
    if size is None:  # a sequence of ints (or an odd array): checked in full
        size = _data_bytes(data).size
    _check_size(layout, size)


def _raw_view(msg: Any) -> np.ndarray:
    """The image as an array in the message's byte order; it may share the message's memory."""
    layout = _layout(msg)
    dtype, channels, height, width, step = (layout.dtype, layout.channels, layout.height,
                                            layout.width, layout.step)
    row_bytes = layout.row_bytes
    buffer = _data_bytes(getattr(msg, "data", None))
    _check_size(layout, buffer.size)
    rows = buffer[: step * height].reshape(height, step)[:, :row_bytes]
    pixels = np.ascontiguousarray(rows).view(dtype)  # copies only when rows are padded
    shape = (height, width) if channels == 1 else (height, width, channels)
    return pixels.reshape(shape)


def image_msg_to_array(msg: Any) -> np.ndarray:
    """Decode an image message to an owned array in native byte order.

    HxW for single-channel encodings, else HxWxC; dtype uint8, uint16 or float32 by
    encoding. Row padding (``step`` beyond the pixels) and extra data are ignored.
    """
    view = _raw_view(msg)
    return view.astype(view.dtype.newbyteorder("="), copy=True)


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """Decode a colour or mono image message to a new C-contiguous HxWx3 uint8 RGB array."""
    _layout(msg, SUPPORTED_COLOR_ENCODINGS)
    encoding = msg.encoding
    view = _raw_view(msg)
    rgb = to_rgb_uint8(view, channel_order=_CHANNEL_ORDER[encoding])
    if np.shares_memory(rgb, view):  # rgb8 without padding: still the message's bytes
        rgb = rgb.copy()
    return rgb


def rgb_to_image_fields(image: np.ndarray) -> Dict[str, Any]:
    """Fields of an ``rgb8`` sensor_msgs/Image for an HxWx3 uint8 RGB array."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy.ndarray, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be HxWx3 uint8 RGB, got {image.dtype} of shape {image.shape}"
        )
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"image must have non-zero height and width, got shape {image.shape}")
    return {
        "height": height,
        "width": width,
        "encoding": "rgb8",
        "is_bigendian": 0,
        "step": width * 3,
        "data": np.ascontiguousarray(image).tobytes(),
    }


def mask_to_mono8_fields(mask: np.ndarray) -> Dict[str, Any]:
    """Fields of a ``mono8`` sensor_msgs/Image: 255 on the object, 0 elsewhere.

    ``mask`` is HxW; any non-bool mask counts non-zero as object.
    """
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy.ndarray, got {type(mask).__name__}")
    if mask.ndim != 2 or mask.shape[0] == 0 or mask.shape[1] == 0:
        raise ValueError(
            f"mask must be HxW with non-zero height and width, got shape {mask.shape}"
        )
    height, width = mask.shape
    pixels = (mask if mask.dtype == np.bool_ else mask != 0).astype(np.uint8) * np.uint8(255)
    return {
        "height": height,
        "width": width,
        "encoding": "mono8",
        "is_bigendian": 0,
        "step": width,
        "data": pixels.tobytes(),
    }
