"""The launch files, started for real with ``ros2 launch`` as a user types it.

Each test runs ``ros2 launch vlm_grasp_locator <file> ...`` (the installed launch files,
launch_ros, the node executables CMake wrote) on a private ROS domain and talks to the
nodes over DDS. Skipped with the reason where the ROS 2 launch tools are not installed.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from ros2_tools import Ros2Launch, tools_unavailable, write_params_file

_why = tools_unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

READY_S = 180.0
ANSWER_S = 120.0
_stamps = itertools.count(5000)


def _scene() -> np.ndarray:
    from scenes import synthetic_scene

    return synthetic_scene(96, 128)


def _client(launch: Ros2Launch, namespace: str, image_topic: str = "image",
            command_topic: str = "command"):
    """A LocatorClient in ``namespace`` publishing on the (remapped) topics."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from vlm_grasp_locator.tools.node_client import LocatorClient

    client = LocatorClient(launch.domain_id, namespace=namespace)
    reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    if image_topic != "image":
        client.image_pub = client.node.create_publisher(Image, image_topic, reliable)
    if command_topic != "command":
        client.command_pub = client.node.create_publisher(
            String, command_topic, QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    return client


def _ask(client, command: str) -> object:
    start = len(client.received["grasp_target"])
    client.publish_image(_scene(), stamp=(next(_stamps), 0))
    client.send_command(command)
    return client.wait_answer(command, ANSWER_S, start=start)


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    return write_params_file(tmp_path / "params.yaml", device="cpu", use_depth=False)


@pytest.fixture
def launches(tmp_path: Path) -> Iterator[list]:
    started: list = []
    yield started
    for launch in started:
        launch.stop()


def _launch(launches: list, tmp_path: Path, *args: str) -> Ros2Launch:
    launch = Ros2Launch(args, tmp_path / f"launch{len(launches)}.log")
    launches.append(launch)
    return launch


def test_grasp_locator_launch_with_namespace_and_remaps_answers_a_command(
        tmp_path: Path, params_file: Path, launches: list) -> None:
    launch = _launch(launches, tmp_path, "vlm_grasp_locator", "grasp_locator.launch.py",
                     "namespace:=wrist", "image_topic:=/camera/color/image_raw",
                     "command_topic:=say", f"params_file:={params_file}")
    client = _client(launch, "/wrist", image_topic="/camera/color/image_raw",
                     command_topic="say")
    try:
        assert client.wait_ready(READY_S, launch.alive), launch.output()[-3000:]
        names = {f"{ns.rstrip('/')}/{n}" for n, ns in client.node.get_node_names_and_namespaces()}
        assert "/wrist/grasp_locator" in names
        answer = _ask(client, "take the red block")
        assert answer is not None, launch.output()[-3000:]
        assert answer.target == "red block" and answer.found, answer.reason
        # device comes from the params file: the launch argument was not given
        got = launch.run("ros2 param get /wrist/grasp_locator device")
        assert got.returncode == 0 and "cpu" in got.stdout, got.stdout + got.stderr
    finally:
        client.close()
    assert launch.stop() == 0, launch.output()[-3000:]


def test_managed_launch_with_autostart_false_stays_unconfigured(
        tmp_path: Path, launches: list) -> None:
    params = write_params_file(tmp_path / "p.yaml", use_depth=True)
    launch = _launch(launches, tmp_path, "vlm_grasp_locator", "grasp_locator.launch.py",
                     "namespace:=arm", "managed:=true", "autostart:=false",
                     f"params_file:={params}")
    state = launch.run("ros2 lifecycle get /arm/grasp_locator", retries=10)
    assert state.returncode == 0, state.stdout + state.stderr + launch.output()[-2000:]
    assert state.stdout.startswith("unconfigured"), state.stdout
    # use_depth was not given at launch: the params file's true stands
    got = launch.run("ros2 param get /arm/grasp_locator use_depth")
    assert "True" in got.stdout, got.stdout + got.stderr
    assert "autostart is false" in launch.output()


def test_use_rviz_without_rviz2_stops_before_any_node_starts(
        tmp_path: Path, params_file: Path, launches: list) -> None:
    import shutil

    if shutil.which("rviz2"):
        pytest.skip("rviz2 is installed here: the failure path cannot be shown")
    launch = _launch(launches, tmp_path, "vlm_grasp_locator", "grasp_locator.launch.py",
                     "use_rviz:=true", f"params_file:={params_file}")
    assert launch.wait_exit(60) != 0
    output = launch.output()
    assert "rviz2" in output and "not installed" in output, output
    assert "process started" not in output, output


@pytest.mark.parametrize("arguments, message", [
    (["autostart:=false"], "managed:=true"),
    (["device:=gpu"], "device"),
    (["use_depth:=maybe"], "use_depth"),
])
def test_bad_launch_arguments_stop_the_launch_with_a_reason(
        tmp_path: Path, params_file: Path, launches: list, arguments: list,
        message: str) -> None:
    launch = _launch(launches, tmp_path, "vlm_grasp_locator", "grasp_locator.launch.py",
                     *arguments, f"params_file:={params_file}")
    assert launch.wait_exit(60) != 0
    output = launch.output()
    assert message in output and "process started" not in output, output


def test_multi_camera_launch_runs_one_node_per_namespace(
        tmp_path: Path, params_file: Path, launches: list) -> None:
    launch = _launch(launches, tmp_path, "vlm_grasp_locator", "multi_camera.launch.py",
                     "cameras:=left,right", f"params_file:={params_file}", "device:=cpu")
    left, right = _client(launch, "/left"), _client(launch, "/right")
    try:
        for client in (left, right):
            assert client.wait_ready(READY_S, launch.alive), launch.output()[-3000:]
        answer = _ask(right, "take the blue block")
        assert answer is not None and answer.found, launch.output()[-3000:]
        assert not left.received["grasp_target"]  # each node stays in its namespace
    finally:
        left.close()
        right.close()
