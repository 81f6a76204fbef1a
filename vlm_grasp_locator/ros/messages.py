"""LocateResult -> ROS messages (Detection2DArray, GraspTarget, Image; with depth:
PoseStamped, PointCloud2, MarkerArray).

Pure conversion: the message classes come in through :class:`MsgTypes`, so this module
imports no ROS package itself and the tests may pass stand-ins. No node logic here.
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple, Union

import numpy as np

from vlm_grasp_locator.ros.encodings import mask_to_mono8_fields, rgb_to_image_fields

if TYPE_CHECKING:
    from vlm_grasp_locator.core.grasp_geometry import GraspPose
    from vlm_grasp_locator.pipeline.detection import Detection
    from vlm_grasp_locator.pipeline.locator import LocateResult

# A ROS message instance. Its class comes from MsgTypes (the real one, or a test's
# stand-in), so this module can name no message class in its annotations.
RosMsg = Any


@dataclass(frozen=True)
class MsgTypes:
    """The message classes the conversions build."""

    image: type
    header: type
    detection_array: type
    detection: type
    hypothesis: type
    grasp_target: type
    grasp_target_array: Optional[type] = None  # None where only the 2D answer is built
    # Depth outputs (None where not loaded: only the 2D messages can be built then).
    pose_stamped: Optional[type] = None
    point_cloud: Optional[type] = None
    point_field: Optional[type] = None
    marker_array: Optional[type] = None
    marker: Optional[type] = None

    @classmethod
    def load(cls, depth: bool = False) -> "MsgTypes":
        """The real classes (needs vision_msgs and the built vlm_grasp_locator messages).

        ``depth``: also geometry_msgs/PoseStamped, sensor_msgs/PointCloud2 and
        visualization_msgs/MarkerArray.
        """
        from sensor_msgs.msg import Image
        from std_msgs.msg import Header
        from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

        from vlm_grasp_locator.msg import GraspTarget, GraspTargetArray

        extra: dict = {}
        if depth:
            from geometry_msgs.msg import PoseStamped
            from sensor_msgs.msg import PointCloud2, PointField
            from visualization_msgs.msg import Marker, MarkerArray

            extra = dict(pose_stamped=PoseStamped, point_cloud=PointCloud2,
                         point_field=PointField, marker_array=MarkerArray, marker=Marker)
        return cls(Image, Header, Detection2DArray, Detection2D, ObjectHypothesisWithPose,
                   GraspTarget, GraspTargetArray, **extra)


def copy_header(header: RosMsg, header_cls: Optional[type] = None) -> RosMsg:
    """A fresh header with the same stamp and frame_id (outputs never share one object)."""
    cls = header_cls or type(header)
    out = cls()
    out.stamp.sec = header.stamp.sec
    out.stamp.nanosec = header.stamp.nanosec
    out.frame_id = header.frame_id
    return out


def _uint8_array(data: Union[bytes, bytearray, "array.array[int]", np.ndarray]) -> array.array:
    """Image data as ``array.array('B')``: the fast path of the generated setter."""
    if isinstance(data, array.array) and data.typecode == "B":
        return data
    if isinstance(data, np.ndarray):
        return array.array("B", np.ascontiguousarray(data, dtype=np.uint8).tobytes())
    return array.array("B", bytes(data))


def image_from_fields(types: MsgTypes, header: RosMsg, fields: dict) -> RosMsg:
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


def rgb_image_msg(types: MsgTypes, header: RosMsg, rgb: np.ndarray) -> RosMsg:
    """An rgb8 Image of an HxWx3 uint8 array."""
    return image_from_fields(types, header, rgb_to_image_fields(rgb))


def mask_image_msg(types: MsgTypes, header: RosMsg, mask: np.ndarray) -> RosMsg:
    """A mono8 Image of a boolean mask (255 on the object)."""
    return image_from_fields(types, header, mask_to_mono8_fields(mask))


def empty_image_msg(types: MsgTypes, header: RosMsg) -> RosMsg:
    """A zero-size Image carrying only the header (the mask of a not-found answer)."""
    msg = types.image()
    msg.header = copy_header(header, types.header)
    return msg


def detection_msg(types: MsgTypes, header: RosMsg, detection: "Detection", rank: int) -> RosMsg:
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


def detection_array_msg(types: MsgTypes, header: RosMsg, detections: Sequence["Detection"],
                        ranked: bool = False) -> RosMsg:
    """A Detection2DArray, one Detection2D per detection, best (highest score) first;
    ``ranked``: keep the given order (several targets: each target's, in command order)."""
    if not ranked:
        detections = sorted(detections, key=lambda d: float(d.score), reverse=True)
    msg = types.detection_array()
    msg.header = copy_header(header, types.header)
    msg.detections = [detection_msg(types, header, d, rank)
                      for rank, d in enumerate(detections)]
    return msg


def grasp_target_msg(
    types: MsgTypes,
    header: RosMsg,
    *,
    command: str,
    target: Optional[str],
    found: bool,
    reason: str,
    detection: RosMsg = None,
    mask: RosMsg = None,
    explanation: str = "",
) -> RosMsg:
    """A GraspTarget; ``detection``/``mask`` are messages (defaults: empty, with the header)."""
    msg = types.grasp_target()
    msg.header = copy_header(header, types.header)
    msg.command = command
    msg.target = target or ""
    msg.found = bool(found)
    msg.reason = reason
    msg.explanation = explanation
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
    """Everything published for one answer; all but ``detections``/``grasp_target`` may be None."""

    detections: RosMsg
    grasp_target: RosMsg
    mask: RosMsg = None
    overlay: RosMsg = None
    pose: RosMsg = None  # PoseStamped (depth only)
    cloud: RosMsg = None  # PointCloud2 (depth only)
    markers: RosMsg = None  # MarkerArray (depth only)
    grasp_targets: RosMsg = None  # GraspTargetArray: every target in order (grasp_target first)


def best_detection(result: "LocateResult") -> Optional["Detection"]:
    """The detection the answer is about (highest score), or None when nothing was found."""
    if not result.found or not result.detections:
        return None
    return max(result.detections, key=lambda d: float(d.score))


def result_messages(
    types: MsgTypes,
    header: RosMsg,
    result: "LocateResult",
    command: str,
    *,
    overlay_rgb: Optional[np.ndarray] = None,
) -> Answer:
    """All messages for a ``LocateResult`` computed on the frame with ``header``.

    The mask topic gets the first target's best mask, or an all-zero mask of image size
    when nothing was found (so a consumer always gets one mask per located frame). A
    command naming several targets gets one GraspTarget each (``grasp_targets``), and
    ``detections`` holds each target's detections in the command's order.
    """
    w, h = (int(v) for v in result.image_size)
    explanation = str(getattr(result, "explanation", ""))
    answers = list(getattr(result, "targets", None) or [])
    several = len(answers) > 1
    if several:
        detections = [d for t in answers if t.found for d in t.detections]
        targets = [_target_msg(types, header, command, t.phrase, t.found, t.reason,
                               t.explanation, t.detections, (h, w)) for t in answers]
        target_msg = targets[0]
    else:  # one target: the result's own fields, as for every plain command
        detections = list(result.detections) if result.found else []
        target_msg = _target_msg(types, header, command, result.target, bool(detections),
                                 result.reason, explanation, detections, (h, w))
        targets = [target_msg]
    array_msg = detection_array_msg(types, header, detections, ranked=several)
    mask_msg = target_msg.mask if target_msg.found else mask_image_msg(
        types, header, np.zeros((h, w), dtype=bool))
    overlay_msg = rgb_image_msg(types, header, overlay_rgb) if overlay_rgb is not None else None
    return Answer(array_msg, target_msg, mask_msg, overlay_msg,
                  grasp_targets=grasp_target_array_msg(types, header, targets))


def _target_msg(types: MsgTypes, header: RosMsg, command: str, target: Optional[str],
                found: bool, reason: str, explanation: str, detections: Sequence["Detection"],
                size_hw: Tuple[int, int]) -> RosMsg:
    """One target's GraspTarget: its best detection and mask, or found=false."""
    if found and detections:
        best = max(detections, key=lambda d: float(d.score))
        return grasp_target_msg(
            types, header, command=command, target=target, found=True, reason="",
            detection=detection_msg(types, header, best, 0),
            mask=mask_image_msg(types, header, np.asarray(best.mask, dtype=bool)),
            explanation=explanation)
    return grasp_target_msg(types, header, command=command, target=target, found=False,
                            reason=reason or "no detection", explanation=explanation)


def grasp_target_array_msg(types: MsgTypes, header: RosMsg, targets: Sequence[RosMsg]) -> RosMsg:
    """A GraspTargetArray of ``targets`` (None where the type is not loaded)."""
    if types.grasp_target_array is None:
        return None
    msg = types.grasp_target_array()
    msg.header = copy_header(header, types.header)
    msg.targets = list(targets)
    return msg


def not_found_messages(
    types: MsgTypes, header: RosMsg, command: str, target: Optional[str], reason: str
) -> Answer:
    """An answer without inference: empty detections and found=false with the reason."""
    target_msg = grasp_target_msg(types, header, command=command, target=target,
                                  found=False, reason=reason)
    return Answer(detection_array_msg(types, header, []), target_msg,
                  grasp_targets=grasp_target_array_msg(types, header, [target_msg]))


# ---------------------------------------------------------------------- depth outputs
MARKER_NS = "grasp_locator"
ARROW_LENGTH_M = 0.1


def pose_stamped_msg(types: MsgTypes, header: RosMsg, grasp_pose: "GraspPose") -> RosMsg:
    """A PoseStamped of a ``GraspPose`` (position + orientation in ``header``'s frame)."""
    msg = types.pose_stamped()
    msg.header = copy_header(header, types.header)
    p, q = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z = (float(v) for v in grasp_pose.position)
    q.x, q.y, q.z, q.w = (float(v) for v in grasp_pose.orientation_xyzw)
    return msg


def set_pose(
    types: MsgTypes, target_msg: RosMsg, header: RosMsg, grasp_pose: "GraspPose"
) -> RosMsg:
    """Fill ``GraspTarget.pose`` from a ``GraspPose`` and set pose_valid; returns the pose."""
    pose = pose_stamped_msg(types, header, grasp_pose)
    target_msg.pose = pose
    target_msg.pose_valid = True
    return pose


def set_pose_invalid(target_msg: RosMsg, reason: str) -> None:
    """pose_valid=false; the reason goes into GraspTarget.reason (kept alongside any other)."""
    target_msg.pose_valid = False
    target_msg.reason = f"{target_msg.reason}; {reason}" if target_msg.reason else reason


def point_cloud_msg(types: MsgTypes, header: RosMsg, points: np.ndarray) -> RosMsg:
    """An unorganised PointCloud2 (x, y, z float32, point_step 12) of the finite ``points``."""
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    pts = np.ascontiguousarray(pts[np.isfinite(pts).all(axis=1)], dtype="<f4")
    msg = types.point_cloud()
    msg.header = copy_header(header, types.header)
    msg.height = 1
    msg.width = int(pts.shape[0])
    fields = []
    for i, name in enumerate("xyz"):
        f = types.point_field()
        f.name = name
        f.offset = 4 * i
        f.datatype = 7  # PointField.FLOAT32
        f.count = 1
        fields.append(f)
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = 12
    msg.row_step = 12 * msg.width
    msg.is_dense = True
    msg.data = _uint8_array(pts.tobytes())
    return msg


def _marker(types: MsgTypes, header: RosMsg, marker_id: int, kind: int,
            rgba: Sequence[float]) -> RosMsg:
    m = types.marker()
    m.header = copy_header(header, types.header)
    m.ns = MARKER_NS
    m.id = marker_id
    m.type = kind
    m.action = 0  # ADD
    m.pose.orientation.w = 1.0
    m.color.r, m.color.g, m.color.b, m.color.a = (float(v) for v in rgba)
    return m


def marker_array_msg(types: MsgTypes, header: RosMsg, grasp_pose: "GraspPose", label: str,
                     score: float) -> RosMsg:
    """SPHERE at the grasp point (id 0), ARROW along the closing axis (id 1), TEXT label (id 2).

    The closing axis is perpendicular to the object's long axis in the optical frame:
    direction (-sin yaw, cos yaw, 0).
    """
    M = types.marker
    x, y, z = (float(v) for v in grasp_pose.position)
    sphere = _marker(types, header, 0, M.SPHERE, (0.1, 0.9, 0.1, 0.9))
    sphere.pose.position.x, sphere.pose.position.y, sphere.pose.position.z = x, y, z
    sphere.scale.x = sphere.scale.y = sphere.scale.z = 0.02

    arrow = _marker(types, header, 1, M.ARROW, (0.9, 0.6, 0.1, 0.9))
    dx, dy = -np.sin(grasp_pose.yaw), np.cos(grasp_pose.yaw)
    start, end = types.marker().pose.position, types.marker().pose.position
    start.x, start.y, start.z = x, y, z
    end.x, end.y, end.z = x + ARROW_LENGTH_M * float(dx), y + ARROW_LENGTH_M * float(dy), z
    arrow.points = [start, end]
    arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.005, 0.01, 0.02  # shaft, head dia, head len

    text = _marker(types, header, 2, M.TEXT_VIEW_FACING, (1.0, 1.0, 1.0, 1.0))
    text.pose.position.x, text.pose.position.y, text.pose.position.z = x, y - 0.04, z
    text.scale.z = 0.03
    text.text = f"{label} {float(score):.2f}"

    msg = types.marker_array()
    msg.markers = [sphere, arrow, text]
    return msg


def clear_markers_msg(types: MsgTypes, header: RosMsg) -> RosMsg:
    """A MarkerArray deleting this node's markers (no valid pose for the latest answer)."""
    m = types.marker()
    m.header = copy_header(header, types.header)
    m.ns = MARKER_NS
    m.action = 3  # DELETEALL
    msg = types.marker_array()
    msg.markers = [m]
    return msg
