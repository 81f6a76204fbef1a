"""The node with debug logging on: continuous-mode answers log at debug, commands at info.

rclpy ties one severity to each logging call site and raises
``ValueError('Logger severity cannot be changed between calls.')`` when the same line
logs at another one; with the node's logger at debug, an answer to a command (info)
followed by a tracked frame's answer (debug) from one call site hit that.
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import pytest

from node_harness import SMALL_PARAMS, RunningNode, messages_unavailable

_why = messages_unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

INFER_TIMEOUT_S = 120.0
COMMAND = "take the cup"
SEVERITY_ERROR = "Logger severity cannot be changed between calls"


def _frame() -> np.ndarray:
    import cv2

    from vlm_grasp_locator.tools.node_client import SAMPLE_IMAGE, load_rgb

    return cv2.resize(load_rgb(SAMPLE_IMAGE), (120, 80), interpolation=cv2.INTER_AREA)


@pytest.fixture
def debug_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    # The node's own logger at debug (a bare `--log-level debug` does the same for it, and
    # floods the log with rcl's and the middleware's debug lines besides).
    running = RunningNode(tmp_path_factory.mktemp("debug_logs"),
                          {**SMALL_PARAMS, "continuous": True},
                          ros_args=["--log-level", "grasp_locator:=debug"])
    yield running
    running.stop()


def _same_stamp(a: object, b: object) -> bool:
    return (a.stamp.sec, a.stamp.nanosec) == (b.stamp.sec, b.stamp.nanosec)  # type: ignore


def test_answers_log_at_info_and_tracked_frames_at_debug(debug_node: RunningNode) -> None:
    client = debug_node.client
    assert client is not None
    rgb = _frame()
    first = debug_node.publish(rgb)
    answer = debug_node.ask(COMMAND, INFER_TIMEOUT_S)
    assert _same_stamp(answer.header, first)
    # Continuous mode: each new frame is answered again, logged at debug.
    for _ in range(2):
        header = debug_node.publish(rgb)
        assert client.spin_until(
            lambda: any(m.command == COMMAND and _same_stamp(m.header, header)
                        for m in client.received["grasp_target"]), INFER_TIMEOUT_S), (
            "no continuous-mode answer for a new frame\n" + debug_node.logs()[-3000:])
    client.spin_until(lambda: False, 0.5)  # the log line follows the published answer

    logs = debug_node.logs()
    assert SEVERITY_ERROR not in logs, logs[-4000:]
    assert "Traceback" not in logs, logs[-4000:]
    assert debug_node.alive()
    # "[INFO] [<time>] [grasp_locator]: 'cup': score ..." or "'cup' not found: ..."
    answer_line = re.compile(r"\[(INFO|DEBUG)\] \[[^\]]*\] \[grasp_locator\]: 'cup'[ :]")
    levels = [m.group(1) for m in answer_line.finditer(logs)]
    assert levels[:1] == ["INFO"], logs[-4000:]
    assert levels.count("DEBUG") >= 2, logs[-4000:]
