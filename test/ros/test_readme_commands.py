"""The README's shell commands, run as written against a node started by ``ros2 launch``.

The README marks each tested ``bash`` block with ``<!-- commands: GROUP -->``. In each
group the first block holds the ``ros2 launch`` line and the blocks after it the commands
a user types in a second terminal. The launch line gets one addition, a ``params_file``
with random weights and a tiny pipeline (no checkpoints here); every other line runs
exactly as the README prints it. A camera stands in for the driver the README assumes,
publishing ``/camera/color/image_raw``.
"""
from __future__ import annotations

import re
import shlex
import threading
from pathlib import Path
from typing import Dict, List

import pytest

from ros2_tools import Ros2Launch, tools_unavailable, write_params_file

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
READY_S = 180.0

# What each kind of README line must print; every tested line must match one entry.
EXPECTED = [
    (r"^ros2 topic pub --once ", "publishing #1"),
    (r"^ros2 topic echo --once .*/grasp_target .*--field reason$", "---"),
    (r"^ros2 topic echo --once .*/grasp_target .*--field detection.bbox$", "size_x"),
    (r"^ros2 action send_goal ", "SUCCEEDED"),
    (r"^ros2 param describe ", "Type: double"),
    (r"^ros2 param set ", "Set parameter successful"),
    (r"^ros2 lifecycle get ", "unconfigured"),
    (r"^ros2 lifecycle set ", "Transitioning successful"),
]


def readme_groups(text: str) -> Dict[str, List[List[str]]]:
    """GROUP -> its bash blocks, each a list of command lines (continuations joined)."""
    groups: Dict[str, List[List[str]]] = {}
    pattern = re.compile(r"<!-- commands: (\w+) -->\s*\n```bash\n(.*?)```", re.S)
    for match in pattern.finditer(text):
        lines = match.group(2).replace("\\\n", " ").splitlines()
        groups.setdefault(match.group(1), []).append(
            [" ".join(line.split()) for line in lines if line.strip()])
    return groups


def expected_output(line: str) -> str:
    for pattern, text in EXPECTED:
        if re.search(pattern, line):
            return text
    raise AssertionError(f"README line has no expectation in {__file__}: {line}")


def test_readme_marks_both_command_groups() -> None:
    groups = readme_groups(README.read_text())
    assert set(groups) == {"node", "managed"}
    for blocks in groups.values():
        assert len(blocks[0]) == 1 and blocks[0][0].startswith("ros2 launch vlm_grasp_locator ")
        for line in (line for block in blocks[1:] for line in block):
            expected_output(line)  # every line has an expectation


class Camera:
    """Publishes a frame on an absolute topic twice a second until stopped."""

    def __init__(self, domain_id: int, namespace: str, topic: str) -> None:
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from scenes import synthetic_scene
        from vlm_grasp_locator.tools.node_client import LocatorClient

        self.client = LocatorClient(domain_id, namespace=namespace)
        self.client.image_pub = self.client.node.create_publisher(
            Image, topic, QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
        self._frame = synthetic_scene(96, 128)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.client.publish_image(self._frame, wait_ack_s=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


_why = tools_unavailable()


@pytest.mark.skipif(_why is not None, reason=_why or "")
@pytest.mark.parametrize("group", ["node", "managed"])
def test_readme_commands_work_against_a_running_node(group: str, tmp_path: Path) -> None:
    blocks = readme_groups(README.read_text())[group]
    launch_args = shlex.split(blocks[0][0])[2:]
    params = write_params_file(tmp_path / "params.yaml")
    namespace = next(a.split(":=", 1)[1] for a in launch_args if a.startswith("namespace:="))
    launch = Ros2Launch([*launch_args, f"params_file:={params}"], tmp_path / "launch.log")
    camera = None
    try:
        if group == "node":
            image_topic = next(a.split(":=", 1)[1] for a in launch_args
                               if a.startswith("image_topic:="))
            camera = Camera(launch.domain_id, "/" + namespace, image_topic)
            assert camera.client.wait_ready(READY_S, launch.alive), launch.output()[-3000:]
            camera.start()
        for line in (line for block in blocks[1:] for line in block):
            result = launch.run(line, timeout_s=180.0, retries=1 if "pub" in line else 5)
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"{line}\n{output}\n{launch.output()[-2000:]}"
            assert expected_output(line) in output, f"{line}\n{output}"
    finally:
        if camera is not None:
            camera.close()
        launch.stop()
