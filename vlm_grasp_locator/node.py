"""ROS 2 node ``grasp_locator``: a command ("take the cup") + camera frames -> where the object is.

Subscribes ``image`` (sensor_msgs/Image) and ``command`` (std_msgs/String); publishes
``detections`` (vision_msgs/Detection2DArray), ``grasp_target`` (GraspTarget, transient
local), ``mask`` (mono8) and ``overlay`` (rgb8). All outputs carry the source frame's header.

With ``use_depth``: also subscribes ``depth`` (sensor_msgs/Image registered to the colour
image, 16UC1 mm or 32FC1 m) and ``camera_info`` (of the depth image), and publishes
``target_pose`` (geometry_msgs/PoseStamped, also in GraspTarget.pose), ``object_cloud``
(sensor_msgs/PointCloud2) and ``markers`` (visualization_msgs/MarkerArray), all with the
paired depth frame's header (its optical frame). Without a usable depth frame the 2D
outputs still go out, with pose_valid=false and the reason in GraspTarget.reason.

The node is a thin layer: it converts messages, declares parameters and schedules work.
Inference runs on one worker thread so the executor keeps receiving frames; only the
newest frame is kept (one slot, overwritten).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Deque, List, Optional, Tuple

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String

from . import node_params
from .command_parser import is_stop_command, parse_command
from .frame_pairing import FramePairer, stamp_to_seconds
from .grasp_geometry import CameraModel, PoseError, depth_to_metres, grasp_pose_from_mask
from .image_conversion import image_msg_to_array, image_msg_to_rgb
from .overlay import draw_overlay
from .ros_messages import (
    Answer,
    MsgTypes,
    best_detection,
    clear_markers_msg,
    marker_array_msg,
    not_found_messages,
    point_cloud_msg,
    result_messages,
    set_pose,
    set_pose_invalid,
)

NODE_NAME = "grasp_locator"
COMMAND_QUEUE_SIZE = 8
THROTTLE_S = 5.0


@dataclass
class Frame:
    """The newest usable camera frame."""

    seq: int
    header: Header
    rgb: np.ndarray
    received: float  # time.monotonic() at arrival


@dataclass
class Command:
    text: str
    received: float


def _reliable(depth: int) -> QoSProfile:
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE)


def _short(text: str, limit: int = 60) -> str:
    """A log-safe rendering of untrusted text."""
    return repr(text[:limit]) + (f"... ({len(text)} chars)" if len(text) > limit else "")


class GraspLocatorNode(Node):
    """Answers every command exactly once on ``grasp_target`` (+ detections, mask, overlay)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        # Raises ParameterError / CheckpointError / ImportError: main() reports them.
        values = node_params.declare_all(self)
        for name in node_params.unknown_overrides(self):
            self.get_logger().warning(f"ignoring unknown parameter '{name}'")
        self._settings = node_params.node_settings(values)
        self._types = MsgTypes.load(depth=self._settings.use_depth)

        config = node_params.locator_config(values)
        self.get_logger().info(
            f"loading models (device={config.device}, clip_model={config.clip_model})")
        self._locator = self._load_locator(config)

        self._cond = threading.Condition()
        self._frame: Optional[Frame] = None
        self._seq = 0
        self._commands: Deque[Command] = collections.deque()
        self._track: Optional[str] = None  # continuous mode: command being followed
        self._track_seq = 0  # last frame seq located for the tracked command
        self._stopping = False
        self._publish_lock = threading.Lock()

        reliable = _reliable(5)
        latched = _reliable(1)  # a late planner still gets the last answer
        latched.durability = DurabilityPolicy.TRANSIENT_LOCAL
        t = self._types
        self._detections_pub = self.create_publisher(t.detection_array, "detections", reliable)
        self._target_pub = self.create_publisher(t.grasp_target, "grasp_target", latched)
        self._mask_pub = self.create_publisher(t.image, "mask", reliable)
        self._overlay_pub = self.create_publisher(t.image, "overlay", reliable)
        self._pairer: Optional[FramePairer] = None
        if self._settings.use_depth:
            self._pairer = FramePairer(self._settings.depth_max_dt)
            self._pose_pub = self.create_publisher(t.pose_stamped, "target_pose", reliable)
            self._cloud_pub = self.create_publisher(t.point_cloud, "object_cloud", reliable)
            self._markers_pub = self.create_publisher(t.marker_array, "markers", reliable)

        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        # A daemon: SIGINT must not wait for an inference to finish.
        self._worker = threading.Thread(target=self._work, name="locator_worker", daemon=True)
        self._worker.start()

        # Subscriptions last: a matched subscriber means the node is ready to answer.
        image_qos = qos_profile_sensor_data
        if self._settings.image_qos == "reliable":
            image_qos = _reliable(1)
        if self._pairer is not None:  # before `image`: subscribed image = fully ready
            # Same QoS as the image (sensor_data by default: best effort matches any publisher).
            self._depth_sub = self.create_subscription(Image, "depth", self._on_depth, image_qos)
            self._info_sub = self.create_subscription(
                CameraInfo, "camera_info", self._on_camera_info, image_qos)
        self._image_sub = self.create_subscription(Image, "image", self._on_image, image_qos)
        self._command_sub = self.create_subscription(
            String, "command", self._on_command, _reliable(10))
        if self._pairer is not None:
            self.get_logger().info(
                f"3D pose from depth '{self._depth_sub.topic_name}' + "
                f"'{self._info_sub.topic_name}' (depth_max_dt={self._settings.depth_max_dt:g} s)")
        self.get_logger().info(
            f"ready on {self._locator.device}: image '{self._image_sub.topic_name}' "
            f"({self._settings.image_qos}), command '{self._command_sub.topic_name}'")

    def _load_locator(self, config: Any) -> Any:
        from .locator import Locator  # torch: imported only once the parameters are fine

        locator = Locator.from_config(config)
        if locator.random_weights:
            self.get_logger().warning(
                "RANDOM WEIGHTS (allow_random_weights=true and a checkpoint is missing): "
                "every score, box and mask is meaningless")
        return locator

    # ------------------------------------------------------------------ callbacks
    def _on_image(self, msg: Image) -> None:
        received = time.monotonic()
        try:
            rgb = image_msg_to_rgb(msg)
        except (ValueError, TypeError) as e:
            self.get_logger().warning(
                f"skipping image {msg.width}x{msg.height} encoding={msg.encoding!r} "
                f"frame_id={msg.header.frame_id!r}: {e}", throttle_duration_sec=THROTTLE_S)
            return
        with self._cond:
            self._seq += 1
            self._frame = Frame(self._seq, msg.header, rgb, received)
            self._cond.notify_all()

    def _on_depth(self, msg: Image) -> None:
        """Buffer the depth frame (converted in the worker, only when used)."""
        assert self._pairer is not None
        try:
            self._pairer.add_depth(stamp_to_seconds(msg.header.stamp), msg)
        except ValueError as e:
            self.get_logger().warning(f"skipping depth frame: {e}",
                                      throttle_duration_sec=THROTTLE_S)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        assert self._pairer is not None
        self._pairer.set_camera_info(msg)

    def _on_command(self, msg: String) -> None:
        dropped: Optional[Command] = None
        with self._cond:
            if len(self._commands) >= COMMAND_QUEUE_SIZE:
                dropped = self._commands.popleft()
            self._commands.append(Command(msg.data, time.monotonic()))
            self._cond.notify_all()
        if dropped is not None:
            self.get_logger().warning(f"command queue full: dropping {_short(dropped.text)}",
                                      throttle_duration_sec=THROTTLE_S)
            self._publish(not_found_messages(
                self._types, self._fallback_header(), dropped.text, None,
                "dropped: command queue full, superseded by newer commands"))

    def _check_parameters(self, params: List[Parameter]) -> SetParametersResult:
        for p in params:
            spec = node_params.SPECS_BY_NAME.get(p.name)
            problem = spec.problem(p.value) if spec else None
            if problem:
                return SetParametersResult(successful=False, reason=f"{p.name}: {problem}")
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: List[Parameter]) -> None:
        fields = {f.name for f in dataclasses.fields(node_params.NodeSettings)}
        changes = {p.name: p.value for p in params if p.name in fields}
        if not changes:
            return
        with self._cond:
            self._settings = dataclasses.replace(self._settings, **changes)
            if not self._settings.continuous:
                self._track = None
            self._cond.notify_all()
        self.get_logger().info(f"parameters updated: {changes}")

    # ------------------------------------------------------------------ worker
    def _tracking_due(self) -> bool:
        return (self._track is not None and self._frame is not None
                and self._frame.seq > self._track_seq)

    def _work(self) -> None:
        """Answer queued commands in order; in continuous mode follow the target on new frames."""
        while True:
            with self._cond:
                while not (self._stopping or self._commands or self._tracking_due()):
                    self._cond.wait()
                if self._stopping:
                    return
                command = self._commands.popleft() if self._commands else None
                frame, track = None, None
                if command is None:
                    frame, track = self._frame, self._track
                    self._track_seq = frame.seq
            try:
                if command is not None:
                    self._answer(command)
                else:
                    self._locate(frame, track)
            except Exception as e:  # noqa: BLE001 - one bad job must not stop the worker
                if self._stopping:
                    return
                self.get_logger().error(f"worker: {type(e).__name__}: {e}",
                                        throttle_duration_sec=THROTTLE_S)

    def _answer(self, command: Command) -> None:
        text = command.text
        if not text.strip() or is_stop_command(text):
            with self._cond:
                if self._track is not None:
                    self.get_logger().info(f"stopped following {_short(self._track)}")
                self._track = None
        parsed = parse_command(text)
        if parsed.target is None:
            reason = parsed.reason or "no target in command"
            self.get_logger().warning(f"command {_short(text)} not actionable: {reason}",
                                      throttle_duration_sec=THROTTLE_S)
            self._publish(
                not_found_messages(self._types, self._fallback_header(), text, None, reason))
            return
        self.get_logger().info(f"command {_short(text)} -> target {parsed.target!r}")
        frame, why = self._wait_for_frame()
        if frame is None:
            self.get_logger().warning(f"command {_short(text)}: {why}",
                                      throttle_duration_sec=THROTTLE_S)
            self._publish(not_found_messages(
                self._types, self._fallback_header(), text, parsed.target, why))
            return
        self._locate(frame, text, target=parsed.target, log_result=True)
        with self._cond:
            if self._settings.continuous:
                self._track = text
                self._track_seq = frame.seq

    def _wait_for_frame(self) -> Tuple[Optional[Frame], str]:
        """The newest frame within max_image_age, waiting up to command_wait_timeout."""
        settings = self._settings
        deadline = time.monotonic() + settings.command_wait_timeout
        with self._cond:
            while True:
                frame, now = self._frame, time.monotonic()
                max_age = self._settings.max_image_age
                if frame is not None and (max_age <= 0 or now - frame.received <= max_age):
                    return frame, ""
                if self._stopping or now >= deadline:
                    break
                self._cond.wait(deadline - now)
        topic = self._image_sub.topic_name
        if frame is None:
            return None, (f"no image received on '{topic}' "
                          f"(waited command_wait_timeout={settings.command_wait_timeout:g} s)")
        return None, (f"latest image on '{topic}' is {now - frame.received:.1f} s old "
                      f"(max_image_age={max_age:g} s) and no newer one arrived within "
                      f"command_wait_timeout={settings.command_wait_timeout:g} s")

    def _locate(self, frame: Frame, text: str, target: Optional[str] = None,
                log_result: bool = False) -> None:
        """Run the core on ``frame`` and publish the answer (not-found if the core raises)."""
        try:
            result = self._locator.locate(frame.rgb, text)
        except Exception as e:  # noqa: BLE001 - answered not-found; the node keeps serving
            reason = f"inference failed: {type(e).__name__}: {e}"
            self.get_logger().error(f"command {_short(text)}: {reason}",
                                    throttle_duration_sec=THROTTLE_S)
            self._publish(not_found_messages(self._types, frame.header, text, target, reason))
            return
        overlay = None
        if self._settings.publish_overlay:
            try:
                overlay = draw_overlay(frame.rgb, result)
            except Exception as e:  # noqa: BLE001 - an overlay is optional
                self.get_logger().error(f"overlay failed: {type(e).__name__}: {e}",
                                        throttle_duration_sec=THROTTLE_S)
        answer = result_messages(self._types, frame.header, result, text, overlay_rgb=overlay)
        if self._pairer is not None:
            self._add_pose(answer, frame, result)
        self._publish(answer)
        total = (result.timings_ms or {}).get("total", float("nan"))
        if result.found and result.detections:
            best = result.detections[0]
            box = ", ".join(f"{v:.0f}" for v in best.box_xyxy)
            line = (f"{result.target!r}: score {best.score:.2f} box [{box}] "
                    f"({len(result.detections)} detections, {total:.0f} ms)")
        else:
            line = f"{result.target!r} not found: {result.reason} ({total:.0f} ms)"
        # Continuous mode answers every frame: keep those at debug level.
        (self.get_logger().info if log_result else self.get_logger().debug)(line)

    def _add_pose(self, answer: Answer, frame: Frame, result: Any) -> None:
        """Fill the 3D outputs of ``answer`` from the depth frame paired with ``frame``."""
        best = best_detection(result)
        if best is None:
            answer.markers = clear_markers_msg(self._types, frame.header)
            return
        try:
            depth_header, grasp = self._grasp_pose(frame, np.asarray(best.mask, dtype=bool))
        except (PoseError, ValueError, TypeError) as e:
            reason = str(e) if str(e).startswith("pose: ") else f"pose: {e}"
            set_pose_invalid(answer.grasp_target, reason)
            answer.markers = clear_markers_msg(self._types, frame.header)
            self.get_logger().warning(reason, throttle_duration_sec=THROTTLE_S)
            return
        t = self._types
        answer.pose = set_pose(t, answer.grasp_target, depth_header, grasp)
        answer.cloud = point_cloud_msg(t, depth_header, grasp.points)
        answer.markers = marker_array_msg(t, depth_header, grasp, str(result.target or ""),
                                          float(best.score))

    def _grasp_pose(self, frame: Frame, mask: np.ndarray) -> Tuple[Header, Any]:
        """(depth header, GraspPose); raises PoseError/ValueError with the reason."""
        pairer = self._pairer
        assert pairer is not None
        info = pairer.camera_info
        if info is None:
            raise PoseError(f"pose: no camera_info received on '{self._info_sub.topic_name}'")
        paired = pairer.match(stamp_to_seconds(frame.header.stamp))
        if paired is None:
            raise PoseError(f"pose: no depth frame within {pairer.max_dt:g} s of the image "
                            f"stamp ({len(pairer)} buffered on '{self._depth_sub.topic_name}')")
        depth_msg = paired.payload
        try:
            camera = CameraModel.from_camera_info(info)
        except ValueError as e:
            raise PoseError(f"pose: bad camera_info: {e}") from e
        depth_m = depth_to_metres(image_msg_to_array(depth_msg), depth_msg.encoding)
        return depth_msg.header, grasp_pose_from_mask(mask, depth_m, camera)

    # ------------------------------------------------------------------ output
    def _fallback_header(self) -> Header:
        """The last frame's header, or one stamped now when no frame arrived yet."""
        frame = self._frame
        if frame is not None:
            return frame.header
        return Header(stamp=self.get_clock().now().to_msg(), frame_id="")

    def _publish(self, answer: Answer) -> None:
        """Publish one answer; grasp_target goes last, after the data it refers to."""
        with self._publish_lock:
            if self._stopping:
                return
            self._detections_pub.publish(answer.detections)
            if answer.mask is not None:
                self._mask_pub.publish(answer.mask)
            if answer.overlay is not None:
                self._overlay_pub.publish(answer.overlay)
            if answer.pose is not None:
                self._pose_pub.publish(answer.pose)
            if answer.cloud is not None:
                self._cloud_pub.publish(answer.cloud)
            if answer.markers is not None:
                self._markers_pub.publish(answer.markers)
            self._target_pub.publish(answer.grasp_target)

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Stop the worker; False when an inference is still running after ``timeout_s``."""
        with self._publish_lock, self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._worker.join(timeout_s)
        return not self._worker.is_alive()


def main(args: Optional[List[str]] = None) -> int:
    """Run the node until SIGINT/SIGTERM; non-zero exit on a configuration error."""
    from .checkpoints import CheckpointError

    rclpy.init(args=args)
    logger = get_logger(NODE_NAME)
    node: Optional[GraspLocatorNode] = None
    try:
        try:
            node = GraspLocatorNode()
        except CheckpointError as e:
            logger.error(f"{e} (node: allow_random_weights:=true)".replace("\n", " "))
            return 1
        except (node_params.ParameterError, ValueError) as e:
            logger.error(str(e).replace("\n", " "))
            return 1
        except ImportError as e:
            logger.error(f"{e}: build the messages (bash scripts/setup.sh), "
                         "then `source scripts/env.sh`")
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        idle = True
        if node is not None:
            idle = node.stop()
            node.destroy_node()
        rclpy.try_shutdown()
        if not idle:
            # An inference is still running in native code: letting the interpreter
            # finalise under it aborts the process ("terminate called without an active
            # exception"). Nothing is left to clean up, so leave at once.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
