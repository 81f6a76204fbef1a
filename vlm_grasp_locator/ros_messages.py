"""LocateResult -> ROS messages (Detection2DArray, GraspTarget, Image).

Pure conversion: the message classes come in through :class:`MsgTypes`, so this module
imports no ROS package itself and the tests may pass stand-ins. No node logic here.
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .image_conversion import mask_to_mono8_fields, rgb_to_image_fields


@dataclass(frozen=True)
class MsgTypes:
    """The message classes the conversions build."""

    image: type
    header: type
    detection_array: type
    detection: type
    hypothesis: type
    grasp_target: type

    @classmethod
    def load(cls) -> "MsgTypes":
        """The real classes (needs vision_msgs and the built vlm_grasp_locator messages)."""
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header
        from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

        from vlm_grasp_locator.msg import GraspTarget

        return cls(Image, Header, Detection2DArray, Detection2D, ObjectHypothesisWithPose,
                   GraspTarget)


def copy_header(header: Any, header_cls: Optional[type] = None) -> Any:
    """A fresh header with the same stamp and frame_id (outputs never share one object)."""
    cls = header_cls or type(header)
    out = cls()
    out.stamp.sec = header.stamp.sec
    out.stamp.nanosec = header.stamp.nanosec
    out.frame_id = header.frame_id
    return out


def _uint8_array(data: Any) -> array.array:
    """Image data as ``array.array('B')``: the fast path of the generated setter."""
    if isinstance(data, array.array) and data.typecode == "B":
        return data
    if isinstance(data, np.ndarray):
        return array.array("B", np.ascontiguousarray(data, dtype=np.uint8).tobytes())
    return array.array("B", bytes(data))


def image_from_fields(types: MsgTypes, header: Any, fields: dict) -> Any:
    """An Image message from a ``rgb_to_image_fields``-style dict."""
    msg = types.image()
    msg.header = copy_header(header, types.header)
    msg.height = int(fields["height"])
    msg.width = int(fields["width"])
    msg.encoding = str(fields["encoding"])
    msg.is_bigendian = int(fields.get("is_bigendian", 0))
    msg.step = int(fields["step"])
    msg.data = _uint8_array(fields["data"])
    return msg


def rgb_image_msg(types: MsgTypes, header: Any, rgb: np.ndarray) -> Any:
    """An rgb8 Image of an HxWx3 uint8 array."""
    return image_from_fields(types, header, rgb_to_image_fields(rgb))


def mask_image_msg(types: MsgTypes, header: Any, mask: np.ndarray) -> Any:
    """A mono8 Image of a boolean mask (255 on the object)."""
    return image_from_fields(types, header, mask_to_mono8_fields(mask))


def empty_image_msg(types: MsgTypes, header: Any) -> Any:
    """A zero-size Image carrying only the header (the mask of a not-found answer)."""
    msg = types.image()
    msg.header = copy_header(header, types.header)
    return msg


def detection_msg(types: MsgTypes, header: Any, detection: Any, rank: int) -> Any:
    """One Detection2D: box centre/size in source pixels, hypothesis = (target phrase, score)."""
    x0, y0, x1, y1 = (float(v) for v in detection.box_xyxy)
    msg = types.detection()
    msg.header = copy_header(header, types.header)
    msg.id = str(rank)
    center = msg.bbox.center
    if hasattr(center, "position"):  # vision_msgs >= 4: vision_msgs/Pose2D
        center.position.x = (x0 + x1) / 2.0
        center.position.y = (y0 + y1) / 2.0
    else:  # older vision_msgs: geometry_msgs/Pose2D
        center.x = (x0 + x1) / 2.0
        center.y = (y0 + y1) / 2.0
    center.theta = 0.0
    msg.bbox.size_x = max(0.0, x1 - x0)
    msg.bbox.size_y = max(0.0, y1 - y0)
    hyp = types.hypothesis()
    hyp.hypothesis.class_id = str(detection.label)
    hyp.hypothesis.score = float(detection.score)
    msg.results = [hyp]
    return msg


def detection_array_msg(types: MsgTypes, header: Any, detections: Sequence[Any]) -> Any:
    """A Detection2DArray, one Detection2D per detection, best (highest score) first."""
    ranked = sorted(detections, key=lambda d: float(d.score), reverse=True)
    msg = types.detection_array()
    msg.header = copy_header(header, types.header)
    msg.detections = [detection_msg(types, header, d, rank) for rank, d in enumerate(ranked)]
    return msg


def grasp_target_msg(
    types: MsgTypes,
    header: Any,
    *,
    command: str,
    target: Optional[str],
    found: bool,
    reason: str,
    detection: Any = None,
    mask: Any = None,
) -> Any:
    """A GraspTarget; ``detection``/``mask`` are messages (defaults: empty, with the header)."""
    msg = types.grasp_target()
    msg.header = copy_header(header, types.header)
    msg.command = command
    msg.target = target or ""
    msg.found = bool(found)
    msg.reason = reason
    if detection is None:
        detection = types.detection()
        detection.header = copy_header(header, types.header)
    msg.detection = detection
    msg.mask = mask if mask is not None else empty_image_msg(types, header)
    msg.pose_valid = False  # no depth yet
    msg.pose.header = copy_header(header, types.header)
    return msg


@dataclass
class Answer:
    """Everything published for one answer; ``mask``/``overlay`` may be None."""

    detections: Any
    grasp_target: Any
    mask: Any = None
    overlay: Any = None


def result_messages(
    types: MsgTypes,
    header: Any,
    result: Any,
    command: str,
    *,
    overlay_rgb: Optional[np.ndarray] = None,
) -> Answer:
    """All messages for a ``LocateResult`` computed on the frame with ``header``.

    The mask topic gets the best mask, or an all-zero mask of image size when nothing
    was found (so a consumer always gets one mask per located frame).
    """
    detections = list(result.detections) if result.found else []
    array_msg = detection_array_msg(types, header, detections)
    w, h = (int(v) for v in result.image_size)
    if array_msg.detections:
        best = max(detections, key=lambda d: float(d.score))
        mask_msg = mask_image_msg(types, header, np.asarray(best.mask, dtype=bool))
        target_msg = grasp_target_msg(
            types, header, command=command, target=result.target, found=True, reason="",
            detection=array_msg.detections[0], mask=mask_msg,
        )
    else:
        mask_msg = mask_image_msg(types, header, np.zeros((h, w), dtype=bool))
        reason = result.reason or "no detection"
        target_msg = grasp_target_msg(
            types, header, command=command, target=result.target, found=False, reason=reason,
        )
    overlay_msg = rgb_image_msg(types, header, overlay_rgb) if overlay_rgb is not None else None
    return Answer(array_msg, target_msg, mask_msg, overlay_msg)


def not_found_messages(
    types: MsgTypes, header: Any, command: str, target: Optional[str], reason: str
) -> Answer:
    """An answer without inference: empty detections and found=false with the reason."""
    return Answer(
        detection_array_msg(types, header, []),
        grasp_target_msg(types, header, command=command, target=target, found=False,
                         reason=reason),
    )
