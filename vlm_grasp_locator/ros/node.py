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

One class, a lifecycle node, behind both executables: ``grasp_locator_node`` configures
and activates it at start (autostart forced on: it answers at once), and
``grasp_locator_lifecycle_node`` (or ``--managed``) honours the ``autostart`` parameter
(default true; false waits in 'unconfigured' for ``ros2 lifecycle set``). configure:
models, (lifecycle) publishers, action server, worker. activate: ``image``/``command``
(and depth) subscriptions; goals accepted. deactivate: no input, no output; queued goals
end ABORTED, new ones are rejected. cleanup: models and the frame cache freed. shutdown:
the same from any state. Parameters are declared (and checked) in the constructor;
diagnostics are published in every state.

The node is a thin layer: it converts messages, declares parameters and drives the
ROS-free :class:`~vlm_grasp_locator.service.locator_service.LocatorService` (frame slot,
job queue, worker) that it owns.
"""
from __future__ import annotations

import dataclasses
import enum
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Union

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from vlm_grasp_locator.ros import params as node_params
from vlm_grasp_locator.ros.action_server import LocateActionServer
from vlm_grasp_locator.ros.diagnostics import (
    DIAGNOSTICS_TOPIC,
    PERIOD_S,
    NodeHealth,
    diagnostic_array,
)
from vlm_grasp_locator.ros.encodings import check_color_image, image_msg_to_rgb
from vlm_grasp_locator.ros.messages import MsgTypes
from vlm_grasp_locator.ros.outputs import AnswerOutputs, Publishers, reliable
from vlm_grasp_locator.ros.pose import DepthInput
from vlm_grasp_locator.runtime.memory import MALLOC_ARENAS, limit_malloc_arenas
from vlm_grasp_locator.service.jobs import Job, NodeStats
from vlm_grasp_locator.service.locator_service import (
    QUEUE_SIZE,
    LocatorLike,
    LocatorService,
    ServiceSettings,
)

if TYPE_CHECKING:  # the pipeline imports torch: loaded only once the parameters are fine
    from rclpy.context import Context
    from rclpy.subscription import Subscription

    from vlm_grasp_locator.pipeline.locator import LocatorConfig

NODE_NAME = "grasp_locator"
COMMAND_QUEUE_SIZE = QUEUE_SIZE  # queued topic commands and action goals together
THROTTLE_S = 5.0
# Executor threads: the node's callbacks (one mutually exclusive group), the execute
# callback of the one goal being answered (queued goals hold none), goal/cancel/result
# requests. Independent of the queue size.
EXECUTOR_THREADS = 4

# The validated model parameters -> a locator.
LocatorBuilder = Callable[["LocatorConfig"], LocatorLike]


class NodeState(enum.Enum):
    """The lifecycle state, as the diagnostics name it."""

    UNCONFIGURED = "unconfigured"
    INACTIVE = "inactive"
    ACTIVE = "active"
    FINALIZED = "finalized"


class StartupError(RuntimeError):
    """Autostart failed; the reason was logged already."""


def default_locator(config: "LocatorConfig") -> LocatorLike:
    """The configured backend's locator, on whatever decoder threads the entry point made
    (torch is imported only once the parameters are fine)."""
    from vlm_grasp_locator.backends.factory import build_locator

    return build_locator(config)


def _service_settings(settings: node_params.NodeSettings) -> ServiceSettings:
    return ServiceSettings(continuous=settings.continuous,
                           max_image_age=settings.max_image_age,
                           command_wait_timeout=settings.command_wait_timeout,
                           tracking=settings.tracking,
                           track_min_score=settings.track_min_score,
                           track_max_area_ratio=settings.track_max_area_ratio,
                           track_min_iou=settings.track_min_iou,
                           track_reacquire_window=settings.track_reacquire_window)


class GraspLocatorNode(LifecycleNode):
    """Answers every command exactly once on ``grasp_target`` (+ detections, mask, overlay)
    and every ``locate`` goal with one result, while active."""

    def __init__(self, *, locator_factory: Optional[LocatorBuilder] = None,
                 autostart: Optional[bool] = None, **kwargs: Any) -> None:
        """``locator_factory(config)`` builds the core (default :func:`default_locator`);
        ``autostart``: configure and activate now (None: the ``autostart`` parameter).

        Raises ParameterError / ImportError (bad parameters, messages not built) and
        :class:`StartupError` (autostart failed; logged).
        """
        super().__init__(NODE_NAME, **kwargs)
        values = node_params.declare_all(self)
        for name in node_params.unknown_overrides(self):
            self.get_logger().warning(f"ignoring unknown parameter '{name}'")
        self._settings = node_params.node_settings(values)
        self._config = node_params.locator_config(values)
        self._types = MsgTypes.load(depth=self._settings.use_depth)
        self._build_locator = locator_factory or default_locator
        self._state = NodeState.UNCONFIGURED
        self._stats = NodeStats()
        self._outputs = AnswerOutputs(self._types, self.get_logger(),
                                      lambda: self.get_clock().now().to_msg(), self._error)
        self._outputs.publish_overlay = self._settings.publish_overlay
        self._service = LocatorService(self._load_locator, self._outputs, self.get_logger(),
                                       settings=_service_settings(self._settings),
                                       stats=self._stats, queue_size=COMMAND_QUEUE_SIZE)
        self._action: Optional[LocateActionServer] = None
        self._depth: Optional[DepthInput] = None
        self._subscriptions_live: List["Subscription"] = []

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

        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, reliable(10))
        self._diag_timer = self.create_timer(PERIOD_S, self._publish_diagnostics)

        if autostart is None:
            autostart = bool(self.get_parameter("autostart").value)
        if autostart:
            try:
                self.start()
            except StartupError:
                self.stop()
                self.destroy_node()
                raise
        else:
            self.get_logger().info(
                "autostart is false: waiting in 'unconfigured' for `ros2 lifecycle set "
                f"{self.get_fully_qualified_name()} configure`, then `activate`")

    # ------------------------------------------------------------------ public
    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def settings(self) -> node_params.NodeSettings:
        return self._settings

    @property
    def service(self) -> LocatorService:
        return self._service

    def start(self) -> None:
        """configure -> activate (autostart); StartupError when a transition failed."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            raise StartupError("configure failed")
        if self.trigger_activate() != TransitionCallbackReturn.SUCCESS:
            raise StartupError("activate failed")

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Stop the worker; False when an inference is still running after ``timeout_s``.

        The action server goes too: ``destroy_node`` leaves it, and it keeps the DDS
        participant (and its shared-memory files) alive until interpreter exit, which
        the mid-inference ``os._exit`` path skips.
        """
        idle = self._service.stop(timeout_s)
        if self._action is not None:
            self._action.destroy()
            self._action = None
        return idle

    def destroy_node(self) -> None:
        super().destroy_node()
        # rclpy's LifecycleNode leaves its state machine, which holds the node's handle and
        # so the DDS participant (and its shared-memory files), to the garbage collector,
        # which the mid-inference ``os._exit`` path of main() never runs.
        machine = getattr(self, "_state_machine", None)
        destroy = getattr(machine, "destroy_when_not_in_use", None)
        if destroy is not None:
            destroy()

    # ------------------------------------------------------------------ lifecycle
    def _enter(self, state: NodeState) -> TransitionCallbackReturn:
        self._state = state
        self.get_logger().info(f"lifecycle: {state.value}")
        return TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        from vlm_grasp_locator.models.checkpoints import CheckpointError

        try:
            self._configure()
        except CheckpointError as e:
            self.get_logger().error(
                f"{e} (node: allow_random_weights:=true)".replace("\n", " "))
            return self._configure_failed()
        except (node_params.ParameterError, ValueError, ImportError, RuntimeError) as e:
            self.get_logger().error(f"configure failed: {e}".replace("\n", " "))
            return self._configure_failed()
        return self._enter(NodeState.INACTIVE)

    def _configure_failed(self) -> TransitionCallbackReturn:
        self._cleanup(timeout_s=1.0)
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publishers
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self._activate()
        return self._enter(NodeState.ACTIVE)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        result = super().on_deactivate(state)
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        return self._enter(NodeState.INACTIVE)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        if not self._cleanup():
            self.get_logger().error("cleanup: an inference is still running; try again")
            return TransitionCallbackReturn.FAILURE
        super().on_cleanup(state)
        return self._enter(NodeState.UNCONFIGURED)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._state is NodeState.ACTIVE:
            self._deactivate()
        if self._state in (NodeState.ACTIVE, NodeState.INACTIVE):
            self._cleanup(timeout_s=5.0)
        return self._enter(NodeState.FINALIZED)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"lifecycle: error while leaving {state.label}; cleaning up")
        if self._state is NodeState.ACTIVE:
            self._deactivate()
        if self._cleanup(timeout_s=5.0):
            self._state = NodeState.UNCONFIGURED
            return TransitionCallbackReturn.SUCCESS
        return TransitionCallbackReturn.FAILURE

    # ------------------------------------------------------------------ transition steps
    def _load_locator(self) -> LocatorLike:
        config = self._config
        self.get_logger().info(
            f"loading models (device={config.device}, clip_model={config.clip_model})")
        locator = self._build_locator(config)
        if locator.random_weights:
            self.get_logger().warning(
                "RANDOM WEIGHTS (allow_random_weights=true and a checkpoint is missing): "
                "every score, box and mask is meaningless")
        return locator

    def _configure(self) -> None:
        """Load the models, create the publishers and the action server, start the worker."""
        self._service.load()
        self._outputs.publishers = Publishers.create(
            self.create_lifecycle_publisher, self._types, self._settings.use_depth)
        if self._settings.use_depth:
            self._depth = DepthInput(self._settings.depth_max_dt)
        self._outputs.depth = self._depth
        self._action = LocateActionServer(self, self._service, admit=self._admit_goal,
                                          not_found=self._outputs.not_found_target)

    def _activate(self) -> None:
        """Answers go out; subscriptions go live (last: a matched subscriber means ready)."""
        self._service.activate(source=self.resolve_topic_name("image"))
        image_qos = qos_profile_sensor_data
        if self._settings.image_qos == "reliable":
            image_qos = reliable(1)
        subs = []
        depth = self._depth
        if depth is not None:  # before `image`: subscribed image = fully ready
            # Same QoS as the image (sensor_data by default: best effort matches any publisher).
            depth_sub = self.create_subscription(Image, "depth", self._on_depth, image_qos)
            info_sub = self.create_subscription(
                CameraInfo, "camera_info", self._on_camera_info, image_qos)
            depth.depth_topic, depth.info_topic = depth_sub.topic_name, info_sub.topic_name
            subs += [depth_sub, info_sub]
            self.get_logger().info(
                f"3D pose from depth '{depth.depth_topic}' + '{depth.info_topic}' "
                f"(depth_max_dt={self._settings.depth_max_dt:g} s)")
        image_sub = self.create_subscription(Image, "image", self._on_image, image_qos)
        command_sub = self.create_subscription(
            String, "command", self._on_command, reliable(10))
        self._subscriptions_live = subs + [image_sub, command_sub]
        locator = self._service.locator
        device = locator.device if locator is not None else "?"
        self.get_logger().info(
            f"ready on {device}: image '{image_sub.topic_name}' "
            f"({self._settings.image_qos}), command '{command_sub.topic_name}', "
            f"action '{self.get_fully_qualified_name().rstrip('/').rsplit('/', 1)[0]}/locate'")

    def _deactivate(self) -> None:
        """No more input or output; queued jobs end (goals ABORTED), a running one stops
        at its next stage."""
        for sub in self._subscriptions_live:
            self.destroy_subscription(sub)
        self._subscriptions_live = []
        self._service.deactivate()

    def _cleanup(self, timeout_s: float = 30.0) -> bool:
        """Stop the worker, drop publishers, action server, models and frame cache.

        False when an inference is still running after ``timeout_s`` (nothing freed then).
        """
        if not self._service.stop(timeout_s):
            return False
        if self._action is not None:
            self._action.destroy()
            self._action = None
        publishers, self._outputs.publishers = self._outputs.publishers, None
        for pub in publishers.all() if publishers is not None else []:
            self.destroy_lifecycle_publisher(pub)
        self._depth = self._outputs.depth = None
        self._service.unload()
        return True

    # ------------------------------------------------------------------ callbacks
    def _on_image(self, msg: Image) -> None:
        """Keep the frame in the slot; it is converted only if a query uses it."""
        received = time.monotonic()
        self._stats.add("frames_received")
        try:
            check_color_image(msg)
        except ValueError as e:
            self._stats.add("frames_bad")
            self.get_logger().warning(
                f"skipping image {msg.width}x{msg.height} encoding={msg.encoding!r} "
                f"frame_id={msg.header.frame_id!r}: {e}", throttle_duration_sec=THROTTLE_S)
            return
        depth = self._depth
        # Paired now, while the depth frame taken with it is still buffered or yet to come.
        pairing = depth.pair(msg.header.stamp) if depth is not None else None
        self._service.put_frame(msg.header, lambda: image_msg_to_rgb(msg), context=pairing,
                                received=received)

    def _on_depth(self, msg: Image) -> None:
        """Buffer the depth frame (converted in the worker, only when used)."""
        self._pair(msg, "depth frame")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        """Pair the camera_info with the depth frame of the same stamp (see frame_pairing)."""
        self._pair(msg, "camera_info")

    def _pair(self, msg: Union[Image, CameraInfo], what: str) -> None:
        depth = self._depth
        if depth is None:
            return
        try:
            if isinstance(msg, CameraInfo):
                depth.add_camera_info(msg)
            else:
                depth.add_depth(msg)
        except ValueError as e:
            self.get_logger().warning(f"skipping {what}: {e}", throttle_duration_sec=THROTTLE_S)

    def _on_command(self, msg: String) -> None:
        """Queue a topic command (see LocatorService.submit for a full queue)."""
        self._service.submit(Job(msg.data))

    def _admit_goal(self) -> Optional[str]:
        """Why a new goal is rejected now, or None to accept it."""
        if self._state is not NodeState.ACTIVE:
            why: Optional[str] = f"node is {self._state.value}, not active"
        else:
            why = self._service.admit_goal()
        if why is not None:
            self._stats.add("goals_rejected")
        return why

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
        self._settings = dataclasses.replace(self._settings, **changes)
        self._outputs.publish_overlay = self._settings.publish_overlay
        self._service.update_settings(_service_settings(self._settings))
        self.get_logger().info(f"parameters updated: {changes}")

    # ------------------------------------------------------------------ health
    def _error(self, text: str) -> None:
        self._stats.error(text)
        self.get_logger().error(text, throttle_duration_sec=THROTTLE_S)

    def _health(self) -> NodeHealth:
        locator, config = self._service.locator, self._config
        return NodeHealth(
            name=self.get_fully_qualified_name(),
            device=str(locator.device) if locator is not None else "",
            mode=config.mode, backend=config.backend,
            models=f"mobile_sam (vit_t) + {config.clip_model}",
            lifecycle_state=self._state.value,
            random_weights=bool(locator is not None and locator.random_weights),
            queue_length=self._service.queue_length)

    def _publish_diagnostics(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        msg = diagnostic_array(DiagnosticArray, DiagnosticStatus, KeyValue,
                               self.get_clock().now().to_msg(), self._health(), self._stats)
        self._diag_pub.publish(msg)


def make_executor(context: Optional["Context"] = None) -> MultiThreadedExecutor:
    """An executor on which waiting action goals never block image reception."""
    return MultiThreadedExecutor(num_threads=EXECUTOR_THREADS, context=context)


# ---------------------------------------------------------------------- entry points
@dataclasses.dataclass(frozen=True)
class ProcessOptions:
    """Process-wide settings the entry point applies (the node itself changes none).

    ``malloc_arena_max``: cap glibc's malloc arenas before rclpy's and DDS's threads
    exist (see ``runtime.memory``); None leaves malloc alone. ``torch_threads``: apply
    the ``num_threads`` parameter to torch (process-wide) before the models load.
    """

    malloc_arena_max: Optional[int] = MALLOC_ARENAS
    torch_threads: bool = True


def process_locator(options: ProcessOptions) -> LocatorBuilder:
    """The entry point's locator factory: process-wide settings first, then the models."""
    def build(config: "LocatorConfig") -> LocatorLike:
        if options.torch_threads:
            from vlm_grasp_locator.runtime.process import configure_process

            # torch threads and the decoder's worker threads; arenas were capped in main()
            configure_process(num_threads=config.num_threads, malloc_arena_max=None)
        return default_locator(config)

    return build


def _wants_managed(args: Optional[List[str]]) -> bool:
    from rclpy.utilities import remove_ros_args

    return "--managed" in remove_ros_args(args if args is not None else sys.argv)[1:]


def main(args: Optional[List[str]] = None, managed: bool = False,
         options: ProcessOptions = ProcessOptions()) -> int:
    """Run the node until SIGINT/SIGTERM; non-zero exit on a configuration error.

    Plain (``grasp_locator_node``): configured and activated at start, whatever
    ``autostart`` says. ``--managed`` (before ``--ros-args``) or ``managed=True``
    (``grasp_locator_lifecycle_node``): the ``autostart`` parameter decides.
    """
    managed = managed or _wants_managed(args)
    if options.malloc_arena_max:
        limit_malloc_arenas(options.malloc_arena_max)  # before any other thread exists
    rclpy.init(args=args)
    logger = get_logger(NODE_NAME)
    node: Optional[GraspLocatorNode] = None
    try:
        try:
            node = GraspLocatorNode(locator_factory=process_locator(options),
                                    autostart=None if managed else True)
        except StartupError:
            return 1  # the transition logged why
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
