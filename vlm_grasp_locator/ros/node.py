"""ROS 2 node ``grasp_locator``: a command ("take the cup") + camera frames -> where the object is.

Subscribes ``image`` (sensor_msgs/Image) and ``command`` (std_msgs/String), serves the
``locate`` action (vlm_grasp_locator/action/Locate); publishes ``detections``
(vision_msgs/Detection2DArray), ``grasp_target`` (GraspTarget, transient local), ``mask``
(mono8) and ``overlay`` (rgb8), all with the source frame's header, and its health on
``/diagnostics`` (about 1 Hz).

With ``use_depth``: also subscribes ``depth`` (sensor_msgs/Image registered to the colour
image, 16UC1 mm or 32FC1 m) and ``camera_info`` (of the depth image), and publishes
``target_pose`` (geometry_msgs/PoseStamped, also in GraspTarget.pose), ``object_cloud``
(sensor_msgs/PointCloud2) and ``markers`` (visualization_msgs/MarkerArray), all with the
paired depth frame's header (its optical frame). Without a usable depth frame the 2D
outputs still go out, with pose_valid=false and the reason in GraspTarget.reason.

The node is a thin layer: it converts messages, declares parameters and schedules work.
Topic commands and action goals are jobs in one FIFO answered by one worker thread (so
they share the core's per-frame cache); the executor keeps receiving frames and only the
newest frame is kept (one slot, overwritten). :class:`GraspLocatorBase` holds the
set-up/tear-down steps that the plain node runs at once and the managed node
(``lifecycle_node.py``) runs in its lifecycle transitions.
"""
from __future__ import annotations

import collections
import dataclasses
import gc
import os
import sys
import threading
import time
from typing import Any, Deque, List, Optional, Tuple

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
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

from vlm_grasp_locator.ros import params as node_params
from vlm_grasp_locator.core.command_parser import is_stop_command, parse_command
from vlm_grasp_locator.core.frame_pairing import DEPTH_WAIT_S, FramePairer, PairingsByFrame, stamp_to_seconds
from vlm_grasp_locator.core.grasp_geometry import CameraModel, PoseError, depth_to_metres, grasp_pose_from_mask
from vlm_grasp_locator.ros.encodings import image_msg_to_array, image_msg_to_rgb
from vlm_grasp_locator.ros.diagnostics import DIAGNOSTICS_TOPIC, PERIOD_S, NodeHealth, diagnostic_array
from vlm_grasp_locator.service.jobs import (
    ABORTED,
    CANCELED,
    PROGRESS_3D,
    STAGE_3D,
    STAGE_DONE,
    STAGE_WAITING,
    SUCCEEDED,
    Frame,
    Job,
    JobCanceled,
    NodeStats,
)
from vlm_grasp_locator.runtime.memory import limit_malloc_arenas, release_freed_memory
from vlm_grasp_locator.core.overlay import draw_overlay
from vlm_grasp_locator.ros.messages import (
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
COMMAND_QUEUE_SIZE = 8  # queued topic commands and action goals together
THROTTLE_S = 5.0
POLL_S = 0.1  # a goal waiting for a frame looks for a cancel request this often
# Executor threads: every accepted goal waits in its own execute callback (at most the
# queue plus the running one), and frames, commands, services and timers need one more.
EXECUTOR_THREADS = COMMAND_QUEUE_SIZE + 4

# Kept for code that imported the old names from here.
Command = Job


def _reliable(depth: int) -> QoSProfile:
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE)


def _short(text: str, limit: int = 60) -> str:
    """A log-safe rendering of untrusted text."""
    return repr(text[:limit]) + (f"... ({len(text)} chars)" if len(text) > limit else "")


class GraspLocatorBase:
    """The node's body, mixed into rclpy's Node (plain) or LifecycleNode (managed).

    Steps: :meth:`_declare` (constructor: parameters, state, diagnostics),
    :meth:`_configure` (models, publishers, action server, worker), :meth:`_activate`
    (subscriptions; answers go out), :meth:`_deactivate`, :meth:`_cleanup`.
    """

    # ------------------------------------------------------------------ set-up steps
    def _declare(self: Any) -> None:
        """Parameters (validated: raises ParameterError), state and the diagnostics timer."""
        values = node_params.declare_all(self)
        for name in node_params.unknown_overrides(self):
            self.get_logger().warning(f"ignoring unknown parameter '{name}'")
        self._values = values
        self._settings = node_params.node_settings(values)
        self._config = node_params.locator_config(values)
        self._types = MsgTypes.load(depth=self._settings.use_depth)

        self._locator: Any = None
        self._cond = threading.Condition()
        self._frame: Optional[Frame] = None
        # With use_depth: each frame's depth pairing, made on arrival, alive as long as it.
        self._frame_pairings = PairingsByFrame()
        self._seq = 0
        self._jobs: Deque[Job] = collections.deque()
        self._track: Optional[str] = None  # continuous mode: command being followed
        self._track_seq = 0  # last frame seq located for the tracked command
        # (frame, when it was answered) of the last successful query: jobs that arrived
        # before then are answered on it, from the core's cache (see _wait_for_frame).
        self._last_query: Optional[Tuple[Frame, float]] = None
        self._trim_due = False  # an inference ran: give freed memory back when idle
        self._stopping = False
        self._active = False  # answers go out only while active
        self._worker: Optional[threading.Thread] = None
        self._publish_lock = threading.Lock()
        self._stats = NodeStats()
        self._lifecycle_state = "unconfigured"
        self._output_pubs: List[Any] = []
        self._subscriptions_live: List[Any] = []
        self._action: Any = None
        self._pairer: Optional[FramePairer] = None

        if hasattr(self, "add_post_set_parameters_callback"):  # Iron and later
            self.add_on_set_parameters_callback(self._check_parameters)
            self.add_post_set_parameters_callback(self._apply_parameters)
        else:  # Humble: no post-set callbacks; apply from the on-set one once checked
            def check_then_apply(params: List[Parameter]) -> SetParametersResult:
                result = self._check_parameters(params)
                if result.successful:
                    self._apply_parameters(params)
                return result

            self.add_on_set_parameters_callback(check_then_apply)

        from diagnostic_msgs.msg import DiagnosticArray

        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, _reliable(10))
        self._diag_timer = self.create_timer(PERIOD_S, self._publish_diagnostics)

    def _create_output_publisher(self: Any, msg_type: type, topic: str, qos: QoSProfile) -> Any:
        return self.create_publisher(msg_type, topic, qos)

    def _destroy_output_publisher(self: Any, publisher: Any) -> None:
        self.destroy_publisher(publisher)

    def _configure(self: Any) -> None:
        """Load the models, create the publishers and the action server, start the worker."""
        from vlm_grasp_locator.ros.action_server import LocateActionServer

        config = self._config
        self.get_logger().info(
            f"loading models (device={config.device}, clip_model={config.clip_model})")
        self._locator = self._load_locator(config)

        reliable = _reliable(5)
        latched = _reliable(1)  # a late planner still gets the last answer
        latched.durability = DurabilityPolicy.TRANSIENT_LOCAL
        t = self._types
        make = self._create_output_publisher
        self._detections_pub = make(t.detection_array, "detections", reliable)
        self._target_pub = make(t.grasp_target, "grasp_target", latched)
        self._mask_pub = make(t.image, "mask", reliable)
        self._overlay_pub = make(t.image, "overlay", reliable)
        self._output_pubs = [self._detections_pub, self._target_pub, self._mask_pub,
                            self._overlay_pub]
        if self._settings.use_depth:
            self._pairer = FramePairer(self._settings.depth_max_dt)
            self._pose_pub = make(t.pose_stamped, "target_pose", reliable)
            self._cloud_pub = make(t.point_cloud, "object_cloud", reliable)
            self._markers_pub = make(t.marker_array, "markers", reliable)
            self._output_pubs += [self._pose_pub, self._cloud_pub, self._markers_pub]
        self._action = LocateActionServer(self, admit=self._admit_goal, submit=self._submit,
                                          withdraw=self._withdraw)
        self._start_worker()

    def _activate(self: Any) -> None:
        """Subscriptions go live; answers are published."""
        with self._publish_lock, self._cond:
            self._active = True
        # Subscriptions last: a matched subscriber means the node is ready to answer.
        image_qos = qos_profile_sensor_data
        if self._settings.image_qos == "reliable":
            image_qos = _reliable(1)
        subs = []
        if self._pairer is not None:  # before `image`: subscribed image = fully ready
            # Same QoS as the image (sensor_data by default: best effort matches any publisher).
            self._depth_sub = self.create_subscription(Image, "depth", self._on_depth, image_qos)
            self._info_sub = self.create_subscription(
                CameraInfo, "camera_info", self._on_camera_info, image_qos)
            subs += [self._depth_sub, self._info_sub]
            self.get_logger().info(
                f"3D pose from depth '{self._depth_sub.topic_name}' + "
                f"'{self._info_sub.topic_name}' (depth_max_dt={self._settings.depth_max_dt:g} s)")
        self._image_sub = self.create_subscription(Image, "image", self._on_image, image_qos)
        self._command_sub = self.create_subscription(
            String, "command", self._on_command, _reliable(10))
        self._subscriptions_live = subs + [self._image_sub, self._command_sub]
        self.get_logger().info(
            f"ready on {self._locator.device}: image '{self._image_sub.topic_name}' "
            f"({self._settings.image_qos}), command '{self._command_sub.topic_name}', "
            f"action '{self.get_fully_qualified_name().rstrip('/').rsplit('/', 1)[0]}/locate'")

    def _deactivate(self: Any) -> None:
        """No more input or output; queued jobs end (goals ABORTED), a running one stops
        at its next stage."""
        for sub in self._subscriptions_live:
            self.destroy_subscription(sub)
        self._subscriptions_live = []
        with self._publish_lock, self._cond:
            self._active = False
            self._track = None
            pending = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
        for job in pending:
            self.finish_canceled(job, "node deactivated", ABORTED)

    def _cleanup(self: Any, timeout_s: float = 30.0) -> bool:
        """Stop the worker, drop publishers, action server, models and frame cache.

        False when an inference is still running after ``timeout_s`` (nothing freed then).
        """
        if not self._stop_worker(timeout_s):
            return False
        if self._action is not None:
            self._action.destroy()
            self._action = None
        for pub in self._output_pubs:
            self._destroy_output_publisher(pub)
        self._output_pubs = []
        with self._cond:
            self._frame = None
            self._last_query = None
            self._pairer = None
        locator, self._locator = self._locator, None
        if locator is not None and hasattr(locator, "clear_cache"):
            locator.clear_cache()
        del locator
        gc.collect()
        self._free_accelerator_memory()
        return True

    @staticmethod
    def _free_accelerator_memory() -> None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load_locator(self: Any, config: Any) -> Any:
        from vlm_grasp_locator.pipeline.locator import Locator  # torch: imported only once the parameters are fine

        locator = Locator.from_config(config)
        if locator.random_weights:
            self.get_logger().warning(
                "RANDOM WEIGHTS (allow_random_weights=true and a checkpoint is missing): "
                "every score, box and mask is meaningless")
        return locator

    # ------------------------------------------------------------------ callbacks
    def _on_image(self: Any, msg: Image) -> None:
        received = time.monotonic()
        self._stats.add("frames_received")
        try:
            rgb = image_msg_to_rgb(msg)
        except (ValueError, TypeError) as e:
            self._stats.add("frames_bad")
            self.get_logger().warning(
                f"skipping image {msg.width}x{msg.height} encoding={msg.encoding!r} "
                f"frame_id={msg.header.frame_id!r}: {e}", throttle_duration_sec=THROTTLE_S)
            return
        pairer = self._pairer
        # Paired now, while the depth frame taken with it is still buffered or yet to come.
        pairing = pairer.open(stamp_to_seconds(msg.header.stamp)) if pairer is not None else None
        with self._cond:
            if self._frame is not None and not self._frame.used:
                self._stats.add("frames_replaced_unused")
            self._seq += 1
            self._frame = Frame(self._seq, msg.header, rgb, received)
            if pairing is not None:
                self._frame_pairings.attach(self._frame, pairing)
            self._cond.notify_all()

    def _on_depth(self: Any, msg: Image) -> None:
        """Buffer the depth frame and pair it with colour frames (converted in the worker,
        only when used)."""
        pairer = self._pairer
        if pairer is None:
            return
        try:
            pairer.add_depth(stamp_to_seconds(msg.header.stamp), msg)
        except ValueError as e:
            self.get_logger().warning(f"skipping depth frame: {e}",
                                      throttle_duration_sec=THROTTLE_S)

    def _on_camera_info(self: Any, msg: CameraInfo) -> None:
        """Pair the camera_info with the depth frame of the same stamp (see frame_pairing)."""
        pairer = self._pairer
        if pairer is None:
            return
        try:
            pairer.add_camera_info(stamp_to_seconds(msg.header.stamp), msg)
        except ValueError as e:
            self.get_logger().warning(f"skipping camera_info: {e}",
                                      throttle_duration_sec=THROTTLE_S)

    def _on_command(self: Any, msg: String) -> None:
        """Queue a topic command; when full, the oldest queued topic command is dropped
        (answered not-found), or this one when the queue holds only action goals."""
        job = Job(msg.data, time.monotonic())
        with self._cond:
            dropped: Optional[Job] = None
            if len(self._jobs) >= COMMAND_QUEUE_SIZE:
                dropped = next((j for j in self._jobs if not j.is_goal), job)
                if dropped is not job:
                    self._jobs.remove(dropped)
            if dropped is not job:
                self._jobs.append(job)
            self._cond.notify_all()
        if dropped is not None:
            why = ("superseded by newer commands" if dropped is not job
                   else "the queue holds only action goals")
            self.get_logger().warning(f"command queue full: dropping {_short(dropped.text)}",
                                      throttle_duration_sec=THROTTLE_S)
            self._reply(dropped, not_found_messages(
                self._types, self._fallback_header(), dropped.text, None,
                f"dropped: command queue full, {why}"))

    def _check_parameters(self: Any, params: List[Parameter]) -> SetParametersResult:
        for p in params:
            spec = node_params.SPECS_BY_NAME.get(p.name)
            problem = spec.problem(p.value) if spec else None
            if problem:
                return SetParametersResult(successful=False, reason=f"{p.name}: {problem}")
        return SetParametersResult(successful=True)

    def _apply_parameters(self: Any, params: List[Parameter]) -> None:
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

    # ------------------------------------------------------------------ action goals
    def _admit_goal(self: Any) -> Optional[str]:
        """Why a new goal is rejected now, or None to accept it."""
        with self._cond:
            if not self._active or self._stopping:
                why: Optional[str] = f"node is {self._lifecycle_state}, not active"
            elif len(self._jobs) >= COMMAND_QUEUE_SIZE:
                why = f"queue full ({len(self._jobs)} commands and goals waiting)"
            else:
                return None
        self._stats.add("goals_rejected")
        return why

    def _submit(self: Any, job: Job) -> None:
        with self._cond:
            if self._active and not self._stopping:
                self._jobs.append(job)
                self._cond.notify_all()
                return
        self.finish_canceled(job, f"node is {self._lifecycle_state}", ABORTED)

    def _withdraw(self: Any, job: Job) -> bool:
        """Take ``job`` out of the queue; False when the worker already has it (or it ended)."""
        with self._cond:
            if job in self._jobs:
                self._jobs.remove(job)
                return True
        return False

    def finish_canceled(self: Any, job: Job, reason: str, outcome: str = CANCELED,
                        header: Any = None) -> None:
        """End ``job`` without an answer on the topics: found=false with ``reason``."""
        target = not_found_messages(self._types, header or self._fallback_header(), job.text,
                                    None, reason).grasp_target
        if job.is_goal:
            self.get_logger().info(f"goal {_short(job.text)} ended: {reason}")
        job.finish(outcome, target)

    # ------------------------------------------------------------------ worker
    def _start_worker(self: Any) -> None:
        with self._cond:
            self._stopping = False
        # A daemon: SIGINT must not wait for an inference to finish.
        self._worker = threading.Thread(target=self._work, name="locator_worker", daemon=True)
        self._worker.start()

    def _stop_worker(self: Any, timeout_s: float) -> bool:
        """Stop the worker; queued jobs end ABORTED. False when an inference still runs."""
        with self._publish_lock, self._cond:
            self._stopping = True
            pending = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
        for job in pending:
            self.finish_canceled(job, "node shutting down", ABORTED)
        worker = self._worker
        if worker is not None:
            worker.join(timeout_s)
            if worker.is_alive():
                return False
        self._worker = None
        return True

    def _tracking_due(self: Any) -> bool:
        return (self._track is not None and self._frame is not None
                and self._frame.seq > self._track_seq)

    def _work(self: Any) -> None:
        """Answer queued jobs in order; in continuous mode follow the target on new frames."""
        while True:
            with self._cond:
                idle = not (self._stopping or self._jobs or self._tracking_due())
            if idle and self._trim_due:
                self._trim_due = False
                release_freed_memory()
            with self._cond:
                while not (self._stopping or self._jobs or self._tracking_due()):
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._jobs.popleft() if self._jobs else None
                frame, track = None, None
                if job is None:
                    frame, track = self._frame, self._track
                    self._track_seq = frame.seq
            if job is not None:
                self._run_job(job)
                continue
            try:
                self._locate(frame, track)
            except JobCanceled:
                pass  # deactivated or stopping: tracking ends quietly
            except Exception as e:  # noqa: BLE001 - one bad job must not stop the worker
                if self._stopping:
                    return
                self._error(f"worker: {type(e).__name__}: {e}")

    def _run_job(self: Any, job: Job) -> None:
        """Answer ``job`` exactly once, whatever happens."""
        try:
            self._check_job(job)
            self._answer(job)
        except JobCanceled as e:
            self.finish_canceled(job, e.reason, e.outcome)
        except Exception as e:  # noqa: BLE001 - one bad job must not stop the worker
            reason = f"internal error: {type(e).__name__}: {e}"
            self._error(f"command {_short(job.text)}: {reason}")
            if not job.done.is_set():
                self._reply(job, not_found_messages(
                    self._types, self._fallback_header(), job.text, None, reason))
        finally:
            if not job.done.is_set():
                self.finish_canceled(job, "node shutting down", ABORTED)

    def _check_job(self: Any, job: Optional[Job]) -> None:
        """Raise JobCanceled when the job's client canceled or the node stops answering."""
        if self._stopping:
            raise JobCanceled("node shutting down", ABORTED)
        if not self._active:
            raise JobCanceled("node deactivated", ABORTED)
        if job is not None and job.cancel_requested():
            raise JobCanceled("canceled")

    def _answer(self: Any, job: Job) -> None:
        text = job.text
        job.report(STAGE_WAITING, 0.0)
        if not job.is_goal and (not text.strip() or is_stop_command(text)):
            with self._cond:
                if self._track is not None:
                    self.get_logger().info(f"stopped following {_short(self._track)}")
                self._track = None
        parsed = parse_command(text)
        if parsed.target is None:
            reason = parsed.reason or "no target in command"
            self.get_logger().warning(f"command {_short(text)} not actionable: {reason}",
                                      throttle_duration_sec=THROTTLE_S)
            self._reply(job, not_found_messages(
                self._types, self._fallback_header(), text, None, reason))
            return
        self.get_logger().info(
            f"{'goal' if job.is_goal else 'command'} {_short(text)} -> target {parsed.target!r}")
        frame, why = self._wait_for_frame(job)
        if frame is None:
            self.get_logger().warning(f"command {_short(text)}: {why}",
                                      throttle_duration_sec=THROTTLE_S)
            self._reply(job, not_found_messages(
                self._types, self._fallback_header(), text, parsed.target, why))
            return
        self._locate(frame, text, target=parsed.target, job=job)
        with self._cond:
            if self._settings.continuous and not job.is_goal:
                self._track = text
                self._track_seq = frame.seq

    def _wait_for_frame(self: Any, job: Job) -> Tuple[Optional[Frame], str]:
        """The newest frame within max_image_age, waiting up to command_wait_timeout.

        A job that arrived before the last query finished (it waited while that query
        ran) is answered on that query's frame instead, from the core's cache: a backlog
        then drains in milliseconds after one inference instead of one inference per
        job, and no answer uses a frame older than max_image_age plus one inference.
        """
        settings = self._settings
        deadline = time.monotonic() + settings.command_wait_timeout
        with self._cond:
            last = self._last_query
            if last is not None and job.received <= last[1]:
                return last[0], ""
            while True:
                frame, now = self._frame, time.monotonic()
                max_age = self._settings.max_image_age
                if frame is not None and (max_age <= 0 or now - frame.received <= max_age):
                    return frame, ""
                if self._stopping or now >= deadline:
                    break
                self._check_job(job)
                self._cond.wait(min(deadline - now, POLL_S) if job.is_goal else deadline - now)
        topic = self._image_topic()
        if frame is None:
            return None, (f"no image received on '{topic}' "
                          f"(waited command_wait_timeout={settings.command_wait_timeout:g} s)")
        return None, (f"latest image on '{topic}' is {now - frame.received:.1f} s old "
                      f"(max_image_age={max_age:g} s) and no newer one arrived within "
                      f"command_wait_timeout={settings.command_wait_timeout:g} s")

    def _image_topic(self: Any) -> str:
        sub = getattr(self, "_image_sub", None)
        return sub.topic_name if sub is not None else "image"

    def _locate(self: Any, frame: Frame, text: str, target: Optional[str] = None,
                job: Optional[Job] = None) -> None:
        """Run the core on ``frame`` and publish the answer (not-found if the core raises).

        ``job``: answer that job (with feedback and cancel between stages); None for a
        continuous-mode frame.
        """
        def on_stage(stage: str, progress: float) -> None:
            self._check_job(job)
            if job is not None:
                job.report(stage, progress)

        frame.used = True
        locator = self._locator
        self._trim_due = True
        try:
            result = locator.locate(frame.rgb, text, on_stage=on_stage)
        except JobCanceled:
            raise
        except Exception as e:  # noqa: BLE001 - answered not-found; the node keeps serving
            reason = f"inference failed: {type(e).__name__}: {e}"
            self._error(f"command {_short(text)}: {reason}")
            self._reply(job, not_found_messages(self._types, frame.header, text, target, reason))
            return
        with self._cond:
            self._last_query = (frame, time.monotonic())
        self._check_job(job)
        with self._stats.lock:
            self._stats.last_timings_ms = dict(result.timings_ms or {})
        overlay = None
        if self._settings.publish_overlay:
            try:
                overlay = draw_overlay(frame.rgb, result,
                                       random_weights=locator.random_weights)
            except Exception as e:  # noqa: BLE001 - an overlay is optional
                self._error(f"overlay failed: {type(e).__name__}: {e}")
        answer = result_messages(self._types, frame.header, result, text, overlay_rgb=overlay)
        if self._pairer is not None:
            if job is not None:
                job.report(STAGE_3D, PROGRESS_3D)
            self._add_pose(answer, frame, result)
        self._reply(job, answer)
        total = (result.timings_ms or {}).get("total", float("nan"))
        if result.found and result.detections:
            best = result.detections[0]
            box = ", ".join(f"{v:.0f}" for v in best.box_xyxy)
            line = (f"{result.target!r}: score {best.score:.2f} box [{box}] "
                    f"({len(result.detections)} detections, {total:.0f} ms)")
        else:
            line = f"{result.target!r} not found: {result.reason} ({total:.0f} ms)"
        # Continuous mode answers every frame: keep those at debug level.
        # rclpy ties one severity to each call site: two calls, not one chosen at run time.
        if job is not None:
            self.get_logger().info(line)
        else:
            self.get_logger().debug(line)

    def _add_pose(self: Any, answer: Answer, frame: Frame, result: Any) -> None:
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

    def _grasp_pose(self: Any, frame: Frame, mask: np.ndarray) -> Tuple[Header, Any]:
        """(depth header, GraspPose); raises PoseError/ValueError with the reason."""
        pairer = self._pairer
        assert pairer is not None
        pairing = self._frame_pairings.get(frame)
        if pairing is None:  # not paired on arrival (no pairer then): what is buffered now
            pairing = pairer.pair_buffered(stamp_to_seconds(frame.header.stamp))
        # A fast inference may end before the depth frame taken with the image arrives.
        paired = pairer.resolve(pairing, wait_until=frame.received + DEPTH_WAIT_S)
        if paired.camera_info is None:
            raise PoseError(f"pose: no camera_info received on '{self._info_sub.topic_name}'")
        if paired.depth is None:
            raise PoseError(f"pose: no depth frame within {pairer.max_dt:g} s of the image "
                            f"stamp ({len(pairer)} buffered on '{self._depth_sub.topic_name}')")
        depth_msg = paired.depth.payload
        try:
            camera = CameraModel.from_camera_info(paired.camera_info)
        except ValueError as e:
            raise PoseError(f"pose: bad camera_info: {e}") from e
        depth_m = depth_to_metres(image_msg_to_array(depth_msg), depth_msg.encoding)
        return depth_msg.header, grasp_pose_from_mask(mask, depth_m, camera)

    # ------------------------------------------------------------------ output
    def _error(self: Any, text: str) -> None:
        self._stats.error(text)
        self.get_logger().error(text, throttle_duration_sec=THROTTLE_S)

    def _fallback_header(self: Any) -> Header:
        """The last frame's header, or one stamped now when no frame arrived yet."""
        frame = self._frame
        if frame is not None:
            return frame.header
        return Header(stamp=self.get_clock().now().to_msg(), frame_id="")

    def _reply(self: Any, job: Optional[Job], answer: Answer) -> None:
        """Publish ``answer`` and hand it to ``job`` (SUCCEEDED)."""
        if job is not None:
            job.report(STAGE_DONE, 1.0)
        self._publish(answer)
        if job is not None:
            self._stats.add("commands_answered")
            job.finish(SUCCEEDED, answer.grasp_target)

    def _publish(self: Any, answer: Answer) -> None:
        """Publish one answer; grasp_target goes last, after the data it refers to."""
        with self._publish_lock:
            if self._stopping or not self._active:
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

    def _health(self: Any) -> NodeHealth:
        locator, config = self._locator, self._config
        with self._cond:
            queued = len(self._jobs)
        return NodeHealth(
            name=self.get_fully_qualified_name(),
            device=str(locator.device) if locator is not None else "",
            mode=config.mode, backend=config.backend,
            models=f"mobile_sam (vit_t) + {config.clip_model}",
            lifecycle_state=self._lifecycle_state,
            random_weights=bool(locator is not None and locator.random_weights),
            queue_length=queued)

    def _publish_diagnostics(self: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        msg = diagnostic_array(DiagnosticArray, DiagnosticStatus, KeyValue,
                               self.get_clock().now().to_msg(), self._health(), self._stats)
        self._diag_pub.publish(msg)

    def stop(self: Any, timeout_s: float = 1.0) -> bool:
        """Stop the worker; False when an inference is still running after ``timeout_s``.

        The action server goes too: ``destroy_node`` leaves it, and it keeps the DDS
        participant (and its shared-memory files) alive until interpreter exit, which
        the mid-inference ``os._exit`` path skips.
        """
        idle = self._stop_worker(timeout_s)
        if self._action is not None:
            self._action.destroy()
            self._action = None
        return idle


class GraspLocatorNode(GraspLocatorBase, Node):
    """Answers every command exactly once on ``grasp_target`` (+ detections, mask, overlay)
    and every ``locate`` goal with one result."""

    def __init__(self, **kwargs: Any) -> None:
        Node.__init__(self, NODE_NAME, **kwargs)
        # Raises ParameterError / CheckpointError / ImportError: main() reports them.
        self._declare()
        self._configure()
        self._lifecycle_state = "active"
        self._activate()


def make_executor(context: Any = None) -> MultiThreadedExecutor:
    """An executor on which waiting action goals never block image reception."""
    return MultiThreadedExecutor(num_threads=EXECUTOR_THREADS, context=context)


def _wants_managed(args: Optional[List[str]]) -> bool:
    from rclpy.utilities import remove_ros_args

    return "--managed" in remove_ros_args(args if args is not None else sys.argv)[1:]


def main(args: Optional[List[str]] = None, managed: bool = False) -> int:
    """Run the node until SIGINT/SIGTERM; non-zero exit on a configuration error.

    ``--managed`` (before ``--ros-args``) or ``managed=True``: the lifecycle variant.
    """
    from vlm_grasp_locator.models.checkpoints import CheckpointError

    managed = managed or _wants_managed(args)
    limit_malloc_arenas()  # before rclpy's and DDS's threads exist (see ``memory``)
    rclpy.init(args=args)
    logger = get_logger(NODE_NAME)
    node: Optional[GraspLocatorBase] = None
    try:
        try:
            if managed:
                from vlm_grasp_locator.ros.lifecycle_node import GraspLocatorLifecycleNode, autostart

                node = GraspLocatorLifecycleNode()
                if not autostart(node):
                    return 1
            else:
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
        executor = make_executor()
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
