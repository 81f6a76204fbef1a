"""From an object's pixel mask and a depth image to a 3D grasp pose, without ROS.

The camera model belongs to the *depth* image (its CameraInfo); the mask may come at
the colour image's resolution and is scaled to the depth image by nearest neighbour.
Colour and depth must be registered (an ``aligned_depth_to_color`` style stream):
the same pixel grid up to scale.

Points are in the depth camera's optical frame (REP-103: x right, y down, z forward).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Tuple

import cv2
import numpy as np

from vlm_grasp_locator.core.image_input import resize_mask

DEPTH_ENCODINGS = ("16UC1", "32FC1")
_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this = its standard deviation
_MAD_FLOOR_M = 0.005
_OUTLIER_SIGMAS = 3.0
_KERNEL = np.ones((3, 3), np.uint8)


class PoseError(ValueError):
    """No trustworthy 3D point; the message is the reason, fit to publish as-is."""


@dataclass(frozen=True)
class CameraModel:
    """Pinhole intrinsics of one image, after ROI and binning (image_geometry's conventions).

    ``tx``/``ty`` are P's fourth column (``-fx * baseline`` for a stereo right camera,
    0 for a monocular or depth camera).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    tx: float = 0.0
    ty: float = 0.0

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        values = (self.fx, self.fy, self.cx, self.cy, self.tx, self.ty)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"camera intrinsics must be finite, got {values}")
        if self.fx <= 0.0 or self.fy <= 0.0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def from_camera_info(cls, info: Any) -> "CameraModel":
        """Build from a duck-typed sensor_msgs/CameraInfo (fields ``k``, ``p``, ``width``, ...).

        Uses the rectified projection matrix P; K only when P is unset (fx' == 0).
        ROI offsets are subtracted from the principal point before dividing by binning.
        """
        p = _matrix_or_zeros(info, "p", 12)
        k = _matrix_or_zeros(info, "k", 9)
        if p[0] != 0.0:
            fx, cx, tx, fy, cy, ty = p[0], p[2], p[3], p[5], p[6], p[7]
        elif k[0] != 0.0:
            fx, cx, fy, cy, tx, ty = k[0], k[2], k[4], k[5], 0.0, 0.0
        else:
            raise ValueError("camera_info has neither P nor K set (both all zeros)")
        bin_x = max(1, int(getattr(info, "binning_x", 0) or 0))
        bin_y = max(1, int(getattr(info, "binning_y", 0) or 0))
        x_off, y_off, width, height = _roi(info)
        return cls(
            width=width // bin_x,
            height=height // bin_y,
            fx=fx / bin_x,
            fy=fy / bin_y,
            cx=(cx - x_off) / bin_x,
            cy=(cy - y_off) / bin_y,
            tx=tx / bin_x,
            ty=ty / bin_y,
        )


def _matrix_or_zeros(info: Any, name: str, size: int) -> np.ndarray:
    values = getattr(info, name, None)
    if values is None:
        return np.zeros(size)
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"camera_info.{name} must be {size} numbers") from e
    if arr.size != size:
        raise ValueError(f"camera_info.{name} must have {size} values, got {arr.size}")
    if not np.isfinite(arr).all():
        raise ValueError(f"camera_info.{name} contains NaN or infinity")
    return arr


def _roi(info: Any) -> Tuple[int, int, int, int]:
    """(x_offset, y_offset, width, height) of the image in full-resolution pixels."""
    try:
        full_w, full_h = int(info.width), int(info.height)
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError("camera_info needs integer width and height") from e
    roi = getattr(info, "roi", None)
    if roi is None:
        return 0, 0, full_w, full_h
    w, h = int(getattr(roi, "width", 0)), int(getattr(roi, "height", 0))
    if w == 0 or h == 0:  # unset ROI: the full image
        return 0, 0, full_w, full_h
    return int(getattr(roi, "x_offset", 0)), int(getattr(roi, "y_offset", 0)), w, h


@dataclass(frozen=True)
class GraspPose:
    """A grasp point and yaw in the depth image's optical frame.

    ``orientation_xyzw`` rotates the optical frame about its z axis by ``yaw``: the
    rotated x axis runs along the object's long axis, the rotated y axis is the
    gripper's closing direction (across the short side), z is the approach (the
    camera's viewing direction).
    """

    position: Tuple[float, float, float]
    orientation_xyzw: Tuple[float, float, float, float]
    yaw: float
    valid_points: int
    points: np.ndarray = field(repr=False, compare=False)


def depth_to_metres(depth: np.ndarray, encoding: str) -> np.ndarray:
    """Depth image as float32 metres with NaN wherever there is no measurement.

    16UC1 is millimetres, 32FC1 metres. 0, NaN, infinity and negative values -> NaN.
    """
    if not isinstance(depth, np.ndarray):
        raise TypeError(f"depth must be a numpy.ndarray, got {type(depth).__name__}")
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2:
        raise ValueError(f"depth must be HxW, got shape {depth.shape}")
    if encoding == "16UC1":
        metres = depth.astype(np.float32) * np.float32(0.001)
    elif encoding == "32FC1":
        metres = depth.astype(np.float32, copy=True)
    else:
        raise ValueError(
            f"unsupported depth encoding {encoding!r}; expected one of {DEPTH_ENCODINGS}"
        )
    with np.errstate(invalid="ignore"):
        metres[~(np.isfinite(metres) & (metres > 0.0))] = np.nan
    return metres


def grasp_pose_from_mask(
    mask: np.ndarray,
    depth_m: np.ndarray,
    camera: CameraModel,
    *,
    erode_px: int = 3,
    min_depth: float = 0.1,
    max_depth: float = 5.0,
    min_valid_points: int = 20,
) -> GraspPose:
    """Grasp point and yaw of the object under ``mask``.

    ``mask`` (bool, any resolution, e.g. the colour image's) is scaled to ``depth_m``'s
    size; ``camera`` must describe ``depth_m`` (same width/height). The mask is eroded
    by up to ``erode_px`` 3x3 steps (less when that would leave fewer than
    ``min_valid_points`` valid depths) so that edge pixels, which often see the
    background, are skipped. Depths outside [min_depth, max_depth] are ignored, then
    those further than 3 sigma (from the MAD, at least 5 mm) from the median.

    Position: the centroid of the remaining back-projected pixels, i.e. the centre of
    the object's *visible surface* (not of its volume). Pixel (u, v) = (column, row),
    integers at pixel centres as in image_geometry:
    X = ((u - cx) * z - tx) / fx, Y = ((v - cy) * z - ty) / fy, Z = z.

    Yaw: the angle from the optical frame's +x axis (image right) to the object's long
    axis, turning towards +y (image down), i.e. a rotation about the optical +z axis,
    normalised to (-pi/2, pi/2]. The long axis is the principal axis (PCA) of the
    scaled mask's pixels, with u/fx and v/fy so non-square pixels don't skew it. The
    gripper closes perpendicular to it. For a round or square blob the yaw is arbitrary.
    Quaternion (x, y, z, w) = (0, 0, sin(yaw/2), cos(yaw/2)).

    Raises PoseError when no trustworthy point is found, ValueError on bad inputs.
    """
    _check_args(erode_px, min_depth, max_depth, min_valid_points)
    depth_m = _check_depth(depth_m, camera)
    mask = resize_mask(_check_mask(mask), depth_m.shape)
    if not mask.any():
        raise PoseError("the mask is empty at the depth image's resolution")
    with np.errstate(invalid="ignore"):
        in_range = np.isfinite(depth_m) & (depth_m >= min_depth) & (depth_m <= max_depth)
    region = _eroded_region(mask, in_range, erode_px, min_valid_points)
    rows, cols = np.nonzero(region)
    z = depth_m[rows, cols].astype(np.float64)
    keep = _inliers(z)
    if keep.sum() < min_valid_points:
        raise PoseError(
            f"only {int(keep.sum())} consistent depth pixels in the mask after outlier "
            f"rejection (need {min_valid_points})"
        )
    points = _back_project(cols[keep], rows[keep], z[keep], camera)
    yaw = _principal_yaw(mask, camera)
    centre = points.mean(axis=0)
    return GraspPose(
        position=(float(centre[0]), float(centre[1]), float(centre[2])),
        orientation_xyzw=(0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0)),
        yaw=yaw,
        valid_points=int(points.shape[0]),
        points=points.astype(np.float32),
    )


def _check_args(erode_px: int, min_depth: float, max_depth: float, min_valid_points: int) -> None:
    if erode_px < 0:
        raise ValueError(f"erode_px must be >= 0, got {erode_px}")
    if not (0.0 <= min_depth < max_depth) or not math.isfinite(max_depth):
        raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
    if min_valid_points < 1:
        raise ValueError(f"min_valid_points must be >= 1, got {min_valid_points}")


def _check_depth(depth_m: np.ndarray, camera: CameraModel) -> np.ndarray:
    if not isinstance(depth_m, np.ndarray):
        raise TypeError(f"depth_m must be a numpy.ndarray, got {type(depth_m).__name__}")
    if depth_m.ndim == 3 and depth_m.shape[2] == 1:
        depth_m = depth_m[:, :, 0]
    if depth_m.ndim != 2 or depth_m.dtype.kind != "f":
        raise ValueError(
            f"depth_m must be an HxW float array in metres, got {depth_m.dtype} {depth_m.shape}"
        )
    if depth_m.shape != (camera.height, camera.width):
        # Intrinsics for another resolution would silently misplace every point.
        raise ValueError(
            f"depth is {depth_m.shape[1]}x{depth_m.shape[0]} but the camera model is "
            f"{camera.width}x{camera.height}; use the depth image's own camera_info"
        )
    return depth_m


def _check_mask(mask: np.ndarray) -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a numpy.ndarray, got {type(mask).__name__}")
    if mask.ndim != 2 or mask.shape[0] == 0 or mask.shape[1] == 0:
        raise ValueError(f"mask must be a non-empty HxW array, got shape {mask.shape}")
    return mask


def _eroded_region(
    mask: np.ndarray, valid: np.ndarray, erode_px: int, min_valid_points: int
) -> np.ndarray:
    """The most eroded mask (up to ``erode_px`` steps) still holding enough valid depths."""
    levels = [mask.astype(np.uint8)]
    for _ in range(erode_px):
        levels.append(cv2.erode(levels[-1], _KERNEL))
    for level in reversed(levels):
        region = level.astype(bool) & valid
        if np.count_nonzero(region) >= min_valid_points:
            return region
    found = int(np.count_nonzero(mask & valid))
    raise PoseError(f"only {found} valid depth pixels in the mask (need {min_valid_points})")


def _inliers(z: np.ndarray) -> np.ndarray:
    """Depths within 3 sigma of the median, sigma from the MAD with a 5 mm floor."""
    median = np.median(z)
    sigma = max(_MAD_TO_SIGMA * float(np.median(np.abs(z - median))), _MAD_FLOOR_M)
    return np.abs(z - median) <= _OUTLIER_SIGMAS * sigma


def _back_project(u: np.ndarray, v: np.ndarray, z: np.ndarray, camera: CameraModel) -> np.ndarray:
    x = ((u - camera.cx) * z - camera.tx) / camera.fx
    y = ((v - camera.cy) * z - camera.ty) / camera.fy
    return np.column_stack((x, y, z))


def _principal_yaw(mask: np.ndarray, camera: CameraModel) -> float:
    rows, cols = np.nonzero(mask)
    coords = np.column_stack((cols / camera.fx, rows / camera.fy))
    coords -= coords.mean(axis=0)
    cov = coords.T @ coords
    _, vectors = np.linalg.eigh(cov)  # ascending eigenvalues
    major = vectors[:, -1]
    return _normalise_yaw(math.atan2(float(major[1]), float(major[0])))


def _normalise_yaw(yaw: float) -> float:
    """An axis has no direction: map to (-pi/2, pi/2]."""
    if yaw > math.pi / 2:
        yaw -= math.pi
    elif yaw <= -math.pi / 2:
        yaw += math.pi
    return yaw
