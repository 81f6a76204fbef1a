"""The real grasp_locator node with use_depth:=true, over DDS (random weights, tiny config).

With random weights the node picks *some* mask, so the checks compare the published pose
with the analytic back-projection of the *published* mask on the depth that was sent.
One node process, four inferences.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pytest

from node_harness import (
    SMALL_PARAMS,
    RunningNode,
    array_to_image_msg,
    image_msg_array,
    messages_unavailable,
    next_stamp,
)

_why = messages_unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

INFER_TIMEOUT_S = 120.0
W, H = 120, 80
COLOR_FRAME = "camera_color_optical_frame"
DEPTH_FRAME = "camera_depth_optical_frame"
PLANE_M, BOX_M = 0.60, 0.45


class DepthNode:
    """A RunningNode plus depth/camera_info publishers and 3D output collectors."""

    def __init__(self, running: RunningNode) -> None:
        from geometry_msgs.msg import PoseStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from visualization_msgs.msg import MarkerArray

        self.running = running
        client = running.client
        assert client is not None
        self.client = client
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.image_cls, self.info_cls = Image, CameraInfo
        self.depth_pub = client.node.create_publisher(Image, "depth", qos)
        self.info_pub = client.node.create_publisher(CameraInfo, "camera_info", qos)
        self.received: Dict[str, List[Any]] = {"target_pose": [], "object_cloud": [],
                                               "markers": []}
        for topic, cls in (("target_pose", PoseStamped), ("object_cloud", PointCloud2),
                           ("markers", MarkerArray)):
            client.node.create_subscription(cls, topic, self.received[topic].append, qos)
        assert client.spin_until(lambda: self.depth_pub.get_subscription_count() > 0
                                 and self.info_pub.get_subscription_count() > 0
                                 and all(client.node.count_publishers(t) > 0
                                         for t in self.received), 30.0)

    def _ack(self, pub: Any) -> None:
        from rclpy.duration import Duration

        assert pub.wait_for_all_acked(Duration(seconds=5.0))

    def send_info(self, info: Any) -> None:
        self.info_pub.publish(info)
        self._ack(self.info_pub)

    def send_depth(self, depth: np.ndarray, encoding: str, stamp: Tuple[int, int]) -> None:
        msg = array_to_image_msg(self.image_cls, depth, encoding)
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        msg.header.frame_id = DEPTH_FRAME
        self.depth_pub.publish(msg)
        self._ack(self.depth_pub)

    def send_color(self, rgb: np.ndarray, stamp: Tuple[int, int]) -> Any:
        return self.client.publish_image(rgb, stamp=stamp, frame_id=COLOR_FRAME)

    def wait_3d(self, stamp: Tuple[int, int], topics: Tuple[str, ...]) -> Dict[str, Any]:
        def find(topic: str) -> List[Any]:
            out = []
            for m in self.received[topic]:
                header = m.markers[0].header if topic == "markers" else m.header
                if (header.stamp.sec, header.stamp.nanosec) == stamp:
                    out.append(m)
            return out

        assert self.client.spin_until(lambda: all(find(t) for t in topics), 30.0), topics
        return {t: find(t)[-1] for t in topics}


def _camera_info(cls: type, width: int, height: int, scale: float = 1.0) -> Any:
    """CameraInfo of a width x height depth image; P deliberately differs from K."""
    info = cls()
    info.header.frame_id = DEPTH_FRAME
    info.width, info.height = width, height
    fx, fy, cx, cy = 100.0 * scale, 95.0 * scale, 59.5 * scale, 39.5 * scale
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.p = [fx * 1.1, 0.0, cx + 1.5 * scale, 0.0,
              0.0, fy * 1.1, cy - 1.0 * scale, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def _depth_m(width: int, height: int) -> np.ndarray:
    """A plane at 0.60 m with a box face at 0.45 m in the middle."""
    d = np.full((height, width), PLANE_M, np.float32)
    d[height // 4: 3 * height // 4, width // 3: 2 * width // 3] = BOX_M
    return d


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    import cv2

    from vlm_grasp_locator.demo import SAMPLE_IMAGE, load_rgb

    return cv2.resize(load_rgb(SAMPLE_IMAGE), (W, H), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DepthNode]:
    params = dict(SMALL_PARAMS, use_depth=True, depth_max_dt=0.05)
    running = RunningNode(tmp_path_factory.mktemp("node_depth_logs"), params)
    try:
        yield DepthNode(running)
    finally:
        running.stop()


def _check_2d(node: DepthNode, answer: Any, header: Any) -> None:
    assert answer.found
    assert (answer.header.stamp.sec, answer.header.stamp.nanosec) == (
        header.stamp.sec, header.stamp.nanosec)
    assert answer.header.frame_id == COLOR_FRAME
    client = node.client
    assert client.wait_outputs(header, ("detections", "mask", "overlay"), 30.0)
    assert client.outputs_for("detections", header)[-1].detections
    mask = image_msg_array(answer.mask)
    assert mask.shape == (H, W) and (mask == 255).any()


def _check_pose(node: DepthNode, answer: Any, stamp: Tuple[int, int], depth_m: np.ndarray,
                info: Any) -> None:
    from vlm_grasp_locator.grasp_geometry import CameraModel, PoseError, grasp_pose_from_mask

    mask = image_msg_array(answer.mask) > 0
    try:
        expected = grasp_pose_from_mask(mask, depth_m, CameraModel.from_camera_info(info))
    except PoseError as e:  # the random mask may be too small: the node must say so
        assert answer.pose_valid is False
        assert answer.reason == f"pose: {e}"
        return
    assert answer.pose_valid, answer.reason
    assert answer.reason == ""
    pose = answer.pose
    assert pose.header.frame_id == DEPTH_FRAME
    assert (pose.header.stamp.sec, pose.header.stamp.nanosec) == stamp
    got = np.array([pose.pose.position.x, pose.pose.position.y, pose.pose.position.z])
    assert np.abs(got - np.array(expected.position)).max() < 0.01, (got, expected.position)
    q = pose.pose.orientation
    assert [q.x, q.y, q.z, q.w] == pytest.approx(list(expected.orientation_xyzw), abs=1e-6)

    out = node.wait_3d(stamp, ("target_pose", "object_cloud", "markers"))
    topic_pose = out["target_pose"]
    assert topic_pose.header.frame_id == DEPTH_FRAME
    assert topic_pose.pose.position.x == pytest.approx(got[0])
    cloud = out["object_cloud"]
    assert cloud.header.frame_id == DEPTH_FRAME
    assert cloud.width > 0 and cloud.height == 1
    assert cloud.point_step == 12 and cloud.row_step == 12 * cloud.width and cloud.is_dense
    assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [
        ("x", 0, 7), ("y", 4, 7), ("z", 8, 7)]
    points = np.frombuffer(bytes(cloud.data), dtype="<f4").reshape(-1, 3)
    assert points.shape[0] == expected.valid_points
    assert points.mean(axis=0) == pytest.approx(got, abs=0.01)
    markers = out["markers"].markers
    assert [m.id for m in markers] == [0, 1, 2]
    assert [m.type for m in markers] == [2, 0, 9]  # SPHERE, ARROW, TEXT_VIEW_FACING
    assert all(m.ns == "grasp_locator" and m.header.frame_id == DEPTH_FRAME for m in markers)
    assert markers[0].pose.position.z == pytest.approx(got[2])
    start, end = markers[1].points
    direction = np.array([end.x - start.x, end.y - start.y, end.z - start.z])
    direction /= np.linalg.norm(direction)
    assert direction == pytest.approx(
        [-np.sin(expected.yaw), np.cos(expected.yaw), 0.0], abs=1e-6)
    assert markers[2].text.startswith(answer.target + " ")


def test_no_camera_info_gives_2d_outputs_and_a_pose_reason(node: DepthNode,
                                                          rgb: np.ndarray) -> None:
    stamp = next_stamp()  # must run first: no camera_info has been sent yet
    node.send_depth((_depth_m(W, H) * 1000).astype(np.uint16), "16UC1", stamp)
    header = node.send_color(rgb, stamp)
    answer = node.running.ask("take the cup", INFER_TIMEOUT_S)
    _check_2d(node, answer, header)
    assert answer.pose_valid is False
    assert answer.reason.startswith("pose: no camera_info"), answer.reason


def test_16uc1_depth_gives_the_back_projected_pose(node: DepthNode, rgb: np.ndarray) -> None:
    info = _camera_info(node.info_cls, W, H)
    node.send_info(info)
    stamp = next_stamp()
    depth_mm = (_depth_m(W, H) * 1000).astype(np.uint16)
    node.send_depth(depth_mm, "16UC1", stamp)
    header = node.send_color(rgb, stamp)
    answer = node.running.ask("grab the cup", INFER_TIMEOUT_S)
    _check_2d(node, answer, header)
    _check_pose(node, answer, stamp, depth_mm.astype(np.float32) * np.float32(0.001), info)


def test_32fc1_depth_at_half_resolution(node: DepthNode, rgb: np.ndarray) -> None:
    info = _camera_info(node.info_cls, W // 2, H // 2, scale=0.5)
    node.send_info(info)
    stamp = next_stamp()
    depth = _depth_m(W // 2, H // 2)
    depth[0, 0] = np.nan  # no measurement
    node.send_depth(depth, "32FC1", stamp)
    header = node.send_color(rgb, stamp)
    answer = node.running.ask("pick up the cup", INFER_TIMEOUT_S)
    _check_2d(node, answer, header)
    _check_pose(node, answer, stamp, depth, info)


def test_stale_depth_gives_2d_outputs_and_a_pose_reason(node: DepthNode,
                                                        rgb: np.ndarray) -> None:
    node.send_info(_camera_info(node.info_cls, W, H))
    color_stamp = next_stamp()
    depth_stamp = (color_stamp[0] + 1, color_stamp[1])  # 1 s off, depth_max_dt = 0.05 s
    node.send_depth(_depth_m(W, H), "32FC1", depth_stamp)
    header = node.send_color(rgb, color_stamp)
    answer = node.running.ask("fetch the cup", INFER_TIMEOUT_S)
    _check_2d(node, answer, header)
    assert answer.pose_valid is False
    assert answer.reason.startswith("pose: no depth frame within 0.05 s"), answer.reason
    cleared = node.wait_3d(color_stamp, ("markers",))["markers"]
    assert [m.action for m in cleared.markers] == [3]  # DELETEALL
