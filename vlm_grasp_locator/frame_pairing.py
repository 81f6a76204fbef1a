"""Pair each colour frame with the depth frame closest in time, without ROS.

Subscription callbacks call ``add_depth`` / ``set_camera_info``; the worker calls
``match`` with the colour frame's stamp. All methods are thread-safe.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Optional


def stamp_to_seconds(stamp: Any) -> float:
    """Seconds from a builtin_interfaces/Time-like object (``sec`` + ``nanosec``) or a number."""
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return float(stamp)
    try:
        return float(stamp.sec) + float(stamp.nanosec) * 1e-9
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"not a time stamp (needs sec and nanosec): {stamp!r}") from e


@dataclass(frozen=True)
class StampedFrame:
    stamp: float  # seconds
    payload: Any


class FramePairer:
    """Keeps the last ``capacity`` depth frames and the latest camera_info."""

    def __init__(self, max_dt: float = 0.05, capacity: int = 10) -> None:
        if not (max_dt >= 0.0 and math.isfinite(max_dt)):
            raise ValueError(f"max_dt must be a finite number >= 0, got {max_dt}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.max_dt = float(max_dt)
        self._frames: Deque[StampedFrame] = deque(maxlen=capacity)
        self._camera_info: Any = None
        self._lock = threading.Lock()

    def add_depth(self, stamp: float, payload: Any) -> None:
        """Buffer a depth frame; the oldest one drops out when the buffer is full."""
        stamp = _finite(stamp)
        with self._lock:
            self._frames.append(StampedFrame(stamp, payload))

    def match(self, stamp: float) -> Optional[StampedFrame]:
        """The buffered depth frame closest to ``stamp`` within ``max_dt``, else None.

        On a tie the later frame wins.
        """
        stamp = _finite(stamp)
        with self._lock:
            frames = list(self._frames)
        best: Optional[StampedFrame] = None
        best_dt = math.inf
        for frame in frames:
            dt = abs(frame.stamp - stamp)
            if dt < best_dt or (dt == best_dt and best is not None and frame.stamp > best.stamp):
                best, best_dt = frame, dt
        return best if best is not None and best_dt <= self.max_dt else None

    def set_camera_info(self, info: Any) -> None:
        with self._lock:
            self._camera_info = info

    @property
    def camera_info(self) -> Any:
        """The latest camera_info, or None before the first one."""
        with self._lock:
            return self._camera_info

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    def clear(self) -> None:
        """Forget buffered depth frames and camera_info (e.g. after a time jump)."""
        with self._lock:
            self._frames.clear()
            self._camera_info = None


def _finite(stamp: float) -> float:
    value = float(stamp)
    if not math.isfinite(value):
        raise ValueError(f"stamp must be finite, got {stamp!r}")
    return value
