"""One node per camera namespace, from one params file, on one ROS domain.

What launch/multi_camera.launch.py starts, with the two processes started directly with
the same params file and `__ns` remaps (test_launch.py runs the launch file itself): each
node answers its own commands on its own images, and its outputs stay in its namespace.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator

import numpy as np
import pytest

from node_harness import (
    SMALL_PARAMS,
    LocateCaller,
    RunningNode,
    messages_unavailable,
    reserve_domain_id,
)
from vlm_grasp_locator.tools.node_client import param_args

_why = messages_unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

INFER_TIMEOUT_S = 120.0
PARAMS_FILE = Path(__file__).resolve().parents[2] / "config" / "params.yaml"
CAMERAS = ("left", "right")


def _frame(camera: str) -> np.ndarray:
    import cv2

    from vlm_grasp_locator.tools.node_client import SAMPLE_IMAGE, load_rgb

    rgb = cv2.resize(load_rgb(SAMPLE_IMAGE), (120, 80), interpolation=cv2.INTER_AREA)
    return rgb if camera == "left" else np.ascontiguousarray(rgb[:, ::-1])


@pytest.fixture(scope="module")
def cameras(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, RunningNode]]:
    domain_id, lock = reserve_domain_id()
    log_dir = tmp_path_factory.mktemp("multi_camera_logs")
    # the one params file, then the test's small settings on top (as a launch file would)
    ros_args = ["--params-file", str(PARAMS_FILE), *param_args(SMALL_PARAMS)]
    nodes: Dict[str, RunningNode] = {}
    try:
        for camera in CAMERAS:  # started together, then waited for
            nodes[camera] = RunningNode(log_dir, {}, ros_args=ros_args, namespace=f"/{camera}",
                                        domain_id=domain_id, wait_ready=False)
        for camera, node in nodes.items():
            assert node.client is not None
            assert node.client.wait_ready(180.0, node.alive), node.logs()[-2000:]
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()
        lock.close()


def test_each_node_answers_its_own_commands_on_its_own_images(
        cameras: Dict[str, RunningNode]) -> None:
    headers = {camera: node.publish(_frame(camera), frame_id=f"{camera}_camera_optical_frame")
               for camera, node in cameras.items()}
    commands = {"left": "take the cup", "right": "grab the spoon"}
    for camera, node in cameras.items():
        node.client.send_command(commands[camera])  # type: ignore[union-attr]
    for camera, node in cameras.items():
        client = node.client
        assert client is not None
        answer = client.wait_answer(commands[camera], INFER_TIMEOUT_S, alive=node.alive)
        assert answer is not None, node.logs()[-2000:]
        assert answer.header.frame_id == f"{camera}_camera_optical_frame"
        assert answer.header.stamp.sec == headers[camera].stamp.sec
        # nothing from the other camera's node arrived in this namespace
        assert {m.header.frame_id for m in client.received["grasp_target"]} == {
            f"{camera}_camera_optical_frame"}
        assert [m.command for m in client.received["grasp_target"]] == [commands[camera]]
        assert client.node.count_publishers(f"/{camera}/grasp_target") == 1


def test_each_namespace_has_its_own_action_and_diagnostics_name(
        cameras: Dict[str, RunningNode]) -> None:
    from diagnostic_msgs.msg import DiagnosticArray

    left = cameras["left"].client
    assert left is not None
    caller = LocateCaller(left)  # resolves to /left/locate
    try:
        status, target = caller.send("take the saucer").wait(INFER_TIMEOUT_S)
        assert target.header.frame_id == "left_camera_optical_frame"
    finally:
        caller.close()
    got: list = []
    sub = left.node.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
    names = lambda: {s.name for m in got for s in m.status}  # noqa: E731
    assert left.spin_until(lambda: {"/left/grasp_locator", "/right/grasp_locator"} <= names(),
                           10.0), names()
    left.node.destroy_subscription(sub)
