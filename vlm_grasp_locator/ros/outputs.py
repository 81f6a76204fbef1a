"""The node's answers: a service :class:`Reply` -> ROS messages (with overlay and 3D pose) ->
the output topics.

``grasp_target`` (transient local: a late planner still gets the last answer),
``grasp_targets`` (every target of the command in order, transient local),
``detections``, ``mask``, ``overlay``; with depth also ``target_pose``, ``object_cloud``
and ``markers``. Every message carries the source frame's header (the 3D ones the paired
depth frame's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional

import numpy as np
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from vlm_grasp_locator.core.overlay import draw_overlay
from vlm_grasp_locator.ros.messages import (
    Answer,
    MsgTypes,
    RosMsg,
    best_detection,
    clear_markers_msg,
    marker_array_msg,
    not_found_messages,
    point_cloud_msg,
    result_messages,
    set_pose,
    set_pose_invalid,
)
from vlm_grasp_locator.ros.pose import DepthInput, PoseFailure
from vlm_grasp_locator.service.jobs import PROGRESS_POSE, Stage
from vlm_grasp_locator.service.locator_service import Reply

THROTTLE_S = 5.0

if TYPE_CHECKING:
    from builtin_interfaces.msg import Time
    from rclpy.impl.rcutils_logger import RcutilsLogger
    from rclpy.publisher import Publisher

# create_publisher / create_lifecycle_publisher of the node: (type, topic, qos) -> publisher
MakePublisher = Callable[[type, str, QoSProfile], "Publisher"]


def reliable(depth: int) -> QoSProfile:
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE)


@dataclass
class Publishers:
    """The output publishers (those of depth None without ``use_depth``)."""

    detections: "Publisher"
    grasp_target: "Publisher"
    mask: "Publisher"
    overlay: "Publisher"
    grasp_targets: Optional["Publisher"] = None
    pose: Optional["Publisher"] = None
    cloud: Optional["Publisher"] = None
    markers: Optional["Publisher"] = None

    @classmethod
    def create(cls, make: MakePublisher, types: MsgTypes, depth: bool) -> "Publishers":
        qos = reliable(5)
        latched = reliable(1)
        latched.durability = DurabilityPolicy.TRANSIENT_LOCAL
        pubs = cls(make(types.detection_array, "detections", qos),
                   make(types.grasp_target, "grasp_target", latched),
                   make(types.image, "mask", qos), make(types.image, "overlay", qos),
                   make(types.grasp_target_array, "grasp_targets", latched))
        if depth:
            pubs.pose = make(types.pose_stamped, "target_pose", qos)
            pubs.cloud = make(types.point_cloud, "object_cloud", qos)
            pubs.markers = make(types.marker_array, "markers", qos)
        return pubs

    def all(self) -> List["Publisher"]:
        return [p for p in (self.detections, self.grasp_target, self.mask, self.overlay,
                            self.grasp_targets, self.pose, self.cloud, self.markers)
                if p is not None]


class AnswerOutputs:
    """The service's :class:`~vlm_grasp_locator.service.locator_service.Outputs`."""

    def __init__(self, types: MsgTypes, logger: "RcutilsLogger", now: Callable[[], "Time"],
                 on_error: Callable[[str], None]) -> None:
        """``now()``: a builtin_interfaces/Time for answers given before any frame;
        ``on_error(text)``: record and log an error."""
        self._types = types
        self._logger = logger
        self._now = now
        self._on_error = on_error
        self.publish_overlay = True
        self.depth: Optional[DepthInput] = None  # set while configured with use_depth
        self.publishers: Optional[Publishers] = None  # set while configured

    def header_of(self, reply: Reply) -> Header:
        """The answered frame's header; for an answer before any frame one stamped now."""
        if reply.frame is not None:
            header = reply.frame.header
            assert isinstance(header, Header)
            return header
        return Header(stamp=self._now(), frame_id="")

    def not_found_target(self, reply: Reply) -> RosMsg:
        """The GraspTarget (found=false, ``reply.reason``) of a job ended unanswered."""
        return not_found_messages(self._types, self.header_of(reply), reply.text,
                                  reply.target, reply.reason).grasp_target

    def render(self, reply: Reply) -> Answer:
        header = self.header_of(reply)
        result, frame = reply.result, reply.frame
        if result is None or frame is None:
            return not_found_messages(self._types, header, reply.text, reply.target,
                                      reply.reason)
        overlay = None
        if self.publish_overlay:
            try:
                overlay = draw_overlay(frame.rgb, result, random_weights=reply.random_weights)
            except Exception as e:  # noqa: BLE001 - an overlay is optional
                self._on_error(f"overlay failed: {type(e).__name__}: {e}")
        answer = result_messages(self._types, header, result, reply.text, overlay_rgb=overlay)
        if reply.track is not None and reply.track.track_id:
            _mark_track(answer, reply.track.track_id)
        depth = self.depth
        if depth is not None:
            if reply.job is not None:
                reply.job.report(Stage.POSE, PROGRESS_POSE)
            self._add_pose(depth, answer, reply)
        return answer

    def _add_pose(self, depth: DepthInput, answer: Answer, reply: Reply) -> None:
        """Fill the 3D outputs of ``answer`` from the depth frame paired with its frame."""
        t, frame, result = self._types, reply.frame, reply.result
        assert frame is not None and result is not None
        best = best_detection(result)
        if best is None:
            answer.markers = clear_markers_msg(t, frame.header)
            return
        outcome = depth.pose(frame, np.asarray(best.mask, dtype=bool))
        if isinstance(outcome, PoseFailure):
            set_pose_invalid(answer.grasp_target, outcome.reason)
            answer.markers = clear_markers_msg(t, frame.header)
            self._logger.warning(outcome.reason, throttle_duration_sec=THROTTLE_S)
            return
        answer.pose = set_pose(t, answer.grasp_target, outcome.depth_header, outcome.grasp)
        answer.cloud = point_cloud_msg(t, outcome.depth_header, outcome.grasp.points)
        answer.markers = marker_array_msg(t, outcome.depth_header, outcome.grasp,
                                          str(result.target or ""), float(best.score))

    def publish(self, rendered: object) -> None:
        """Publish one answer; grasp_target goes last, after the data it refers to."""
        assert isinstance(rendered, Answer)
        pubs = self.publishers
        if pubs is None:
            return
        pubs.detections.publish(rendered.detections)
        for publisher, msg in ((pubs.mask, rendered.mask), (pubs.overlay, rendered.overlay),
                               (pubs.pose, rendered.pose), (pubs.cloud, rendered.cloud),
                               (pubs.markers, rendered.markers),
                               (pubs.grasp_targets, rendered.grasp_targets)):
            if msg is not None and publisher is not None:
                publisher.publish(msg)
        pubs.grasp_target.publish(rendered.grasp_target)


def _mark_track(answer: Answer, track_id: str) -> None:
    """The tracked object's id on its GraspTarget and detections (Detection2D.id)."""
    target = answer.grasp_target
    target.track_id = track_id
    if target.found:
        target.detection.id = track_id
        if answer.detections.detections:
            answer.detections.detections[0].id = track_id
