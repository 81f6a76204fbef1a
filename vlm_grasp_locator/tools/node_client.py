"""A client for a running grasp_locator node, and the node as a child process.

Used by the demo, the soak run and the node tests: :func:`reserve_domain_id` and
:func:`ros_env` put a node on a private ROS domain with localhost-only discovery,
:class:`NodeProcess` starts ``python -m vlm_grasp_locator.ros.node`` and stops it with
SIGINT, :class:`LocatorClient` publishes images and commands and collects every output.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # vlm_grasp_locator/
SAMPLE_IMAGE = PACKAGE_ROOT / "data" / "coffee.png"
FRAME_ID = "camera_color_optical_frame"


# ---------------------------------------------------------------------------- process side
def reserve_domain_id(first: Optional[int] = None) -> Tuple[int, IO[str]]:
    """A ROS_DOMAIN_ID in 1..100 no other cooperating process holds; keep the file open."""
    start = first if first is not None else os.getpid() % 100
    for i in range(100):
        domain = 1 + (start + i) % 100
        handle = open(Path(tempfile.gettempdir()) / f"vlm_grasp_locator_domain_{domain}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return domain, handle
    raise RuntimeError("no free ROS_DOMAIN_ID in 1..100")


def ros_env(domain_id: int, base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Environment for a node on a private domain with localhost-only discovery."""
    env = dict(os.environ if base is None else base)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"
    env["RCUTILS_COLORIZED_OUTPUT"] = "0"
    # The node imports this very package, wherever the caller found it.
    source_root = str(PACKAGE_ROOT.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([source_root] + [p for p in paths if p != source_root])
    return env


def param_args(params: Mapping[str, Any]) -> List[str]:
    """``--ros-args -p name:=value`` pairs; values rendered so YAML reads back their type."""
    args: List[str] = []
    for name, value in params.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        elif isinstance(value, int):
            text = str(value)
        else:
            text = json.dumps(str(value))  # a double-quoted YAML string
        args += ["-p", f"{name}:={text}"]
    return args


class NodeProcess:
    """``python -m vlm_grasp_locator.ros.node`` as a child process, stopped with SIGINT."""

    def __init__(
        self,
        params: Mapping[str, Any],
        domain_id: int,
        *,
        ros_args: Sequence[str] = (),
        stdout: Optional[IO[Any]] = None,
        stderr: Optional[IO[Any]] = None,
        node_args: Sequence[str] = (),
    ) -> None:
        # node_args go before --ros-args (e.g. "--managed": the lifecycle node)
        self.command = [sys.executable, "-m", "vlm_grasp_locator.ros.node", *node_args,
                        "--ros-args", *param_args(params), *ros_args]
        self.proc = subprocess.Popen(self.command, env=ros_env(domain_id),
                                     stdout=stdout, stderr=stderr)

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGINT (lets Fast DDS clean its shared memory), then SIGKILL as a last resort."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


# ---------------------------------------------------------------------------- ROS side
def spin_until(executor: Any, predicate: Callable[[], bool], timeout_s: float,
               alive: Optional[Callable[[], bool]] = None) -> bool:
    """Spin ``executor`` until ``predicate()``; False on timeout or when ``alive()`` turns
    False."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline or (alive is not None and not alive()):
            return predicate()
        executor.spin_once(timeout_sec=0.05)
    return True


class LocatorClient:
    """Talks to a grasp_locator node: publishes image/command, collects every output."""

    OUTPUTS = ("grasp_target", "detections", "mask", "overlay", "grasp_targets")

    def __init__(self, domain_id: int, *, namespace: str = "",
                 name: str = "grasp_locator_client") -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from vlm_grasp_locator.ros.messages import MsgTypes

        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        self.types = MsgTypes.load()
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id,
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name, namespace=namespace, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(
            Image, "image", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self.command_pub = self.node.create_publisher(String, "command", reliable)
        self.received: Dict[str, List[Any]] = {k: [] for k in self.OUTPUTS}
        latched = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        kinds = {"grasp_target": (self.types.grasp_target, latched),
                 "detections": (self.types.detection_array, reliable),
                 "mask": (self.types.image, reliable),
                 "overlay": (self.types.image, reliable),
                 "grasp_targets": (self.types.grasp_target_array, latched)}
        for topic, (msg_type, qos) in kinds.items():
            self.node.create_subscription(msg_type, topic, self._collector(topic), qos)
        self._String = String

    def _collector(self, topic: str) -> Callable[[Any], None]:
        return lambda msg: self.received[topic].append(msg)

    def spin_until(self, predicate: Callable[[], bool], timeout_s: float,
                   alive: Optional[Callable[[], bool]] = None) -> bool:
        return spin_until(self.executor, predicate, timeout_s, alive)

    def wait_ready(self, timeout_s: float, alive: Optional[Callable[[], bool]] = None) -> bool:
        """The node subscribes last, after loading its models: matched = ready."""
        return self.spin_until(
            lambda: self.image_pub.get_subscription_count() > 0
            and self.command_pub.get_subscription_count() > 0
            and self.node.count_publishers("grasp_target") > 0, timeout_s, alive)

    def publish_image(self, image: Any, *, stamp: Optional[Tuple[int, int]] = None,
                      frame_id: str = FRAME_ID, encoding: str = "rgb8",
                      wait_ack_s: float = 5.0) -> Any:
        """Publish an HxWx3/HxW array (or a ready Image message); returns the header used."""
        from rclpy.duration import Duration

        if isinstance(image, np.ndarray):
            msg = array_to_image_msg(self.types.image, image, encoding)
        else:
            msg = image
        if stamp is None:
            msg.header.stamp = self.node.get_clock().now().to_msg()
        else:
            msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        msg.header.frame_id = frame_id
        self.image_pub.publish(msg)
        if wait_ack_s > 0:
            self.image_pub.wait_for_all_acked(Duration(seconds=wait_ack_s))
        return msg.header

    def send_command(self, text: str) -> None:
        self.command_pub.publish(self._String(data=text))

    def wait_answer(self, command: str, timeout_s: float, *, start: int = 0,
                    alive: Optional[Callable[[], bool]] = None) -> Optional[Any]:
        """The first grasp_target (from index ``start``) answering ``command``."""
        def match() -> Optional[Any]:
            answers = self.received["grasp_target"][start:]
            return next((m for m in answers if m.command == command), None)

        self.spin_until(lambda: match() is not None, timeout_s, alive)
        return match()

    def outputs_for(self, topic: str, header: Any) -> List[Any]:
        """Messages on ``topic`` stamped like ``header``."""
        stamp = (header.stamp.sec, header.stamp.nanosec)
        return [m for m in self.received[topic]
                if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp]

    def wait_outputs(self, header: Any, topics: Sequence[str], timeout_s: float) -> bool:
        return self.spin_until(lambda: all(self.outputs_for(t, header) for t in topics), timeout_s)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def array_to_image_msg(image_cls: type, array: np.ndarray, encoding: str) -> Any:
    """A sensor_msgs/Image of a uint8/uint16 array in ``encoding`` (the pixels are taken as is)."""
    import array as pyarray

    a = np.ascontiguousarray(array)
    msg = image_cls()
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(a.strides[0]) if a.size else 0
    msg.data = pyarray.array("B", a.tobytes())
    return msg


def bbox_xyxy(det: Any) -> Tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a Detection2D's box."""
    c = det.bbox.center
    c = getattr(c, "position", c)
    hw, hh = det.bbox.size_x / 2.0, det.bbox.size_y / 2.0
    return (c.x - hw, c.y - hh, c.x + hw, c.y + hh)


def load_rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_msg_array(msg: Any) -> np.ndarray:
    """An rgb8 or mono8 Image message as an array."""
    channels = 3 if msg.encoding == "rgb8" else 1
    a = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)
    a = a[:, : msg.width * channels]
    return a.reshape(msg.height, msg.width, channels) if channels == 3 else a
