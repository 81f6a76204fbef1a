"""The real grasp_locator node, as a process, over DDS (random weights, tiny config).

One node serves most cases (module fixture); start-up faults use short-lived processes.
Every wait is for a message, with generous timeouts for slow CPUs.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from node_harness import (
    SMALL_PARAMS,
    RunningNode,
    ScriptedLocator,
    bbox_xyxy,
    image_msg_array,
    messages_unavailable,
    run_node_to_exit,
)

_why = messages_unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

INFER_TIMEOUT_S = 120.0
W, H = 120, 80


def _frame() -> np.ndarray:
    import cv2

    from vlm_grasp_locator.tools.node_client import SAMPLE_IMAGE, load_rgb

    return cv2.resize(load_rgb(SAMPLE_IMAGE), (W, H), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return _frame()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """One node for the module; the very first command is sent before any image."""
    running = RunningNode(tmp_path_factory.mktemp("node_logs"), SMALL_PARAMS)
    running.first_answer = running.ask("take the cup")  # type: ignore[attr-defined]
    yield running
    running.stop()


def _same_stamp(a: Any, b: Any) -> bool:
    return a.stamp.sec == b.stamp.sec and a.stamp.nanosec == b.stamp.nanosec


def _assert_header(msg: Any, header: Any) -> None:
    assert _same_stamp(msg.header, header)
    assert msg.header.frame_id == header.frame_id


def _outputs(node: RunningNode, header: Any,
             topics: Any = ("detections", "mask", "overlay")) -> dict:
    assert node.client is not None
    assert node.client.wait_outputs(header, topics, 30.0), f"missing outputs for {header}"
    return {t: node.client.outputs_for(t, header)[-1] for t in topics}


def test_command_before_any_image_is_answered_not_found(node: RunningNode) -> None:
    answer = node.first_answer  # type: ignore[attr-defined]
    assert answer.found is False
    assert answer.target == "cup"
    assert "no image" in answer.reason
    assert answer.pose_valid is False


def test_rgb8_frame_and_command_give_all_outputs(node: RunningNode, rgb: np.ndarray) -> None:
    header = node.publish(rgb, "rgb8")
    answer = node.ask("take the cup", INFER_TIMEOUT_S)
    _assert_header(answer, header)
    assert (answer.command, answer.target) == ("take the cup", "cup")
    assert answer.found, answer.reason
    assert answer.reason == ""
    assert answer.pose_valid is False
    out = _outputs(node, header)

    dets = out["detections"]
    _assert_header(dets, header)
    assert 1 <= len(dets.detections) <= 5
    scores = [d.results[0].hypothesis.score for d in dets.detections]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    for rank, det in enumerate(dets.detections):
        _assert_header(det, header)
        assert det.id == str(rank)
        assert det.results[0].hypothesis.class_id == "cup"
        x0, y0, x1, y1 = bbox_xyxy(det)
        assert -0.5 <= x0 <= x1 <= W + 0.5 and -0.5 <= y0 <= y1 <= H + 0.5
        assert det.bbox.size_x > 0 and det.bbox.size_y > 0
    best = dets.detections[0]
    assert answer.detection.results[0].hypothesis.score == pytest.approx(scores[0])
    assert bbox_xyxy(answer.detection) == pytest.approx(bbox_xyxy(best))

    for mask in (out["mask"], answer.mask):
        _assert_header(mask, header)
        assert (mask.encoding, mask.width, mask.height, mask.step) == ("mono8", W, H, W)
        pixels = image_msg_array(mask)
        assert set(np.unique(pixels)) <= {0, 255}
        assert (pixels == 255).any()
    overlay = out["overlay"]
    _assert_header(overlay, header)
    assert (overlay.encoding, overlay.width, overlay.height, overlay.step) == ("rgb8", W, H, 3 * W)
    assert image_msg_array(overlay).shape == (H, W, 3)


def test_second_command_on_the_same_frame(node: RunningNode, rgb: np.ndarray) -> None:
    header = node.publish(rgb)
    first = node.ask("take the cup", INFER_TIMEOUT_S)
    second = node.ask("grab the spoon", INFER_TIMEOUT_S)
    for answer in (first, second):
        _assert_header(answer, header)
    assert second.target == "spoon"
    client = node.client
    assert client is not None  # one detections message per answer, no more
    assert client.spin_until(lambda: len(client.outputs_for("detections", header)) >= 2, 30.0)
    client.spin_until(lambda: False, 0.2)
    assert len(client.outputs_for("detections", header)) == 2


def test_commands_queue_in_order_and_each_gets_one_answer(node: RunningNode,
                                                          rgb: np.ndarray) -> None:
    node.publish(rgb)
    client = node.client
    assert client is not None
    start = len(client.received["grasp_target"])
    commands = ["take the cup", "grab the saucer", "pick up the spoon"]
    for text in commands:
        client.send_command(text)
    assert client.spin_until(lambda: len(client.received["grasp_target"]) >= start + 3,
                             INFER_TIMEOUT_S)
    client.spin_until(lambda: False, 0.3)  # a duplicate would arrive right behind
    assert [m.command for m in client.received["grasp_target"][start:]] == commands


@pytest.mark.parametrize("encoding", ["bgr8", "mono8", "rgba8", "bgra8", "mono16"])
def test_other_encodings(node: RunningNode, rgb: np.ndarray, encoding: str) -> None:
    gray = (rgb.astype(np.uint32).sum(axis=2) // 3).astype(np.uint8)
    image = {
        "bgr8": rgb[:, :, ::-1],
        "mono8": gray,
        "rgba8": np.dstack([rgb, np.full((H, W), 255, np.uint8)]),
        "bgra8": np.dstack([rgb[:, :, ::-1], np.full((H, W), 255, np.uint8)]),
        "mono16": gray.astype(np.uint16) * 257,
    }[encoding]
    header = node.publish(image, encoding)
    answer = node.ask("take the cup", INFER_TIMEOUT_S)
    _assert_header(answer, header)
    out = _outputs(node, header)
    assert (out["overlay"].encoding, out["overlay"].width, out["overlay"].height) == ("rgb8", W, H)
    assert (out["mask"].encoding, out["mask"].width, out["mask"].height) == ("mono8", W, H)


def test_bad_images_are_skipped(node: RunningNode, rgb: np.ndarray) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from node_harness import array_to_image_msg

    client = node.client
    assert client is not None
    diagnostics: list = []
    sub = client.node.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append,
                                          10)

    def frames_bad() -> int:
        """The node's "frames bad" count, from its newest diagnostics (-1 before any)."""
        counts = [int(kv.value) for m in diagnostics for s in m.status
                  if s.name == node.node_name for kv in s.values if kv.key == "frames bad"]
        return counts[-1] if counts else -1

    try:
        good = node.publish(rgb)
        _assert_header(node.ask("take the cup", INFER_TIMEOUT_S), good)  # the node has it
        unknown = array_to_image_msg(Image, rgb, "rgb8")
        unknown.encoding = "yuv_weird"
        short = array_to_image_msg(Image, rgb, "rgb8")
        short.data = short.data[: len(short.data) // 2]
        empty = Image(encoding="rgb8")  # zero size
        liar = array_to_image_msg(Image, rgb, "rgb8")
        liar.height = H * 10  # data shorter than step * height
        assert client.spin_until(lambda: frames_bad() >= 0, 10.0), "no diagnostics"
        for bad in (unknown, short, empty, liar):
            # One at a time, each seen skipped before the next: the image subscription
            # keeps one frame, so a burst could overwrite frames before the node takes them.
            before = frames_bad()
            node.publish(bad)
            assert client.spin_until(lambda: frames_bad() == before + 1, 10.0), bad.encoding
        answer = node.ask("take the cup", INFER_TIMEOUT_S)
        _assert_header(answer, good)  # the last good frame, not a bad one
        assert node.alive()
        assert "skipping image" in node.stderr()
    finally:
        client.node.destroy_subscription(sub)


# (no NUL: ROS strings are C strings, "\x00..." arrives as "")
ODD_COMMANDS = ["", "   ", "\x01\x02\x7f\x1b\t", "a" * 10_000, "\U0001F642\U0001F642", "take it"]


def test_odd_commands_each_answered_once_then_a_good_one_works(node: RunningNode,
                                                               rgb: np.ndarray) -> None:
    from vlm_grasp_locator.core.command_parser import parse_command

    client = node.client
    assert client is not None
    header = node.publish(rgb)
    start = len(client.received["grasp_target"])
    for command in ODD_COMMANDS:  # a burst: they queue and are answered in order
        client.send_command(command)
    answer = node.ask("take the cup", INFER_TIMEOUT_S)
    _assert_header(answer, header)
    answers = client.received["grasp_target"][start:]
    assert [m.command for m in answers] == ODD_COMMANDS + ["take the cup"]

    # each odd answer came with an empty detections array (stamped like the last frame)
    def arrays() -> list:
        return client.outputs_for("detections", header)

    assert client.spin_until(lambda: len(arrays()) >= len(answers), 30.0)
    assert sum(not m.detections for m in arrays()) == len(ODD_COMMANDS)
    for command, odd in zip(ODD_COMMANDS, answers):
        assert odd.found is False
        assert odd.target == ""
        assert odd.reason == parse_command(command).reason != ""
    assert node.alive()


def test_stale_image_and_waiting_for_a_fresh_one(node: RunningNode, rgb: np.ndarray) -> None:
    node.set_parameters({"max_image_age": 0.3, "command_wait_timeout": 0.5})
    try:
        node.publish(rgb)
        node.client.spin_until(lambda: False, 0.6)  # type: ignore[union-attr]  # let it age
        stale = node.ask("take the cup", 30.0)
        assert stale.found is False
        assert "old" in stale.reason and "max_image_age" in stale.reason

        node.set_parameters({"command_wait_timeout": 30.0})
        client = node.client
        assert client is not None
        start = len(client.received["grasp_target"])
        client.send_command("grab the cup")
        client.spin_until(lambda: False, 0.2)  # the command is now waiting for a frame
        header = node.publish(rgb)
        answer = client.wait_answer("grab the cup", INFER_TIMEOUT_S, start=start)
        assert answer is not None
        _assert_header(answer, header)
    finally:
        node.set_parameters({"max_image_age": SMALL_PARAMS["max_image_age"],
                             "command_wait_timeout": SMALL_PARAMS["command_wait_timeout"]})


def test_invalid_runtime_parameter_is_rejected(node: RunningNode) -> None:
    [(ok, reason)] = node.try_set_parameters({"max_image_age": -1.0})
    assert not ok and "max_image_age" in reason
    [(ok, reason)] = node.try_set_parameters({"points_per_side": 8})  # read-only after start-up
    assert not ok and "read-only" in reason


def test_late_subscriber_gets_the_last_answer(node: RunningNode) -> None:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    client = node.client
    assert client is not None
    last = node.ask("take it", 30.0)
    got = []
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    sub = client.node.create_subscription(client.types.grasp_target, "grasp_target", got.append,
                                          qos)
    try:
        assert client.spin_until(lambda: bool(got), 10.0)
        assert got[0].command == last.command
    finally:
        client.node.destroy_subscription(sub)


def test_continuous_mode_follows_target_until_stop(node: RunningNode, rgb: np.ndarray) -> None:
    client = node.client
    assert client is not None
    # Random weights score crops at random: no loss limits, so every frame is tracked.
    node.set_parameters({"continuous": True, "track_min_score": 0.0, "track_min_iou": 0.0,
                         "track_max_area_ratio": 1000.0})
    try:
        first = node.publish(rgb)
        start = len(client.received["grasp_target"])
        answer = node.ask("take the saucer", INFER_TIMEOUT_S)
        _assert_header(answer, first)
        for _ in range(2):
            header = node.publish(rgb)
            assert client.spin_until(
                lambda: any(m.command == "take the saucer" and _same_stamp(m.header, header)
                            for m in client.received["grasp_target"][start:]), INFER_TIMEOUT_S)
            assert client.wait_outputs(header, ["detections", "mask"], 30.0)
            tracked = next(m for m in client.received["grasp_target"][start:]
                           if _same_stamp(m.header, header))
            # followed by its box prompt: the same track id on every frame
            assert tracked.found and tracked.track_id == "1", tracked.reason
            assert tracked.detection.id == "1"
            detections = client.outputs_for("detections", header)[-1].detections
            assert detections[0].id == "1"
        stop = node.ask("stop", 30.0)
        assert stop.found is False
        after = node.publish(rgb)
        client.spin_until(lambda: False, 5.0)  # long enough for a (wrong) tracking inference
        assert not [m for m in client.received["grasp_target"] if _same_stamp(m.header, after)]
    finally:
        node.set_parameters({"continuous": False, "track_min_score": 0.2,
                             "track_min_iou": 0.3, "track_max_area_ratio": 2.0})


def test_sigint_mid_inference_exits_cleanly(node: RunningNode, rgb: np.ndarray) -> None:
    """Last in the module: stops the shared node."""
    client = node.client
    assert client is not None
    node.publish(_frame()[::-1].copy())  # a new array: no cached proposals
    client.send_command("take the cup")
    time.sleep(0.5)
    code, took = node.stop(timeout_s=15.0)
    assert code == 0, node.stderr()[-2000:]
    assert took < 5.0
    assert "Traceback" not in node.stderr()


# ---------------------------------------------------------------------------- start-up faults
def test_missing_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "mobile_sam.pt"
    params = {**SMALL_PARAMS, "allow_random_weights": False, "mobile_sam_checkpoint": str(missing)}
    code, output = run_node_to_exit(params)
    assert code != 0
    lines = [line for line in output.splitlines() if str(missing) in line]
    assert len(lines) == 1, output[-2000:]
    assert "download-models" in lines[0]
    assert "Traceback" not in output


@pytest.mark.parametrize("override, name", [
    ("points_per_side:=0", "points_per_side"),
    ("score_threshold:=0", "score_threshold"),  # an integer where a double is expected
    ("image_qos:=fast", "image_qos"),
])
def test_bad_parameter_exits_naming_it(override: str, name: str) -> None:
    params_file = Path(__file__).resolve().parents[2] / "config" / "params.yaml"
    code, output = run_node_to_exit(
        {}, ros_args=["--params-file", str(params_file), "-p", override], timeout_s=60)
    assert code != 0
    errors = [line for line in output.splitlines() if name in line and "ERROR" in line]
    assert len(errors) == 1, output[-2000:]
    assert "Traceback" not in output


# ------------------------------------------------------------ in-process, scripted core
@pytest.fixture
def scripted() -> Iterator[Any]:
    """The real node class in this process, its core replaced by a ScriptedLocator."""
    import threading
    from types import SimpleNamespace

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from node_harness import LocatorClient, reserve_domain_id
    from vlm_grasp_locator.ros.node import GraspLocatorNode

    fake = ScriptedLocator()
    domain_id, lock = reserve_domain_id()
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id,
               signal_handler_options=SignalHandlerOptions.NO)
    overrides = [Parameter("image_qos", value="reliable"),
                 Parameter("command_wait_timeout", value=1.0),
                 Parameter("max_image_age", value=0.0)]
    node = GraspLocatorNode(locator_factory=lambda config: fake, context=context,
                            parameter_overrides=overrides)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    client = LocatorClient(domain_id, name="scripted_client")
    try:
        assert client.wait_ready(30.0)
        yield SimpleNamespace(node=node, fake=fake, client=client)
    finally:
        fake.gate.set()
        client.close()
        node.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        spinner.join(5.0)
        lock.close()


def _ask(client: Any, command: str, timeout_s: float = 30.0) -> Any:
    start = len(client.received["grasp_target"])
    client.send_command(command)
    answer = client.wait_answer(command, timeout_s, start=start)
    assert answer is not None, f"no answer to {command!r}"
    return answer


def test_failed_inference_is_answered_and_the_node_keeps_serving(scripted: Any) -> None:
    client, fake = scripted.client, scripted.fake
    header = client.publish_image(_frame(), stamp=(7, 0))
    fake.fail_next = True
    failed = _ask(client, "take the cup")
    assert failed.found is False
    assert failed.reason == "inference failed: RuntimeError: boom"
    _assert_header(failed, header)
    assert client.wait_outputs(header, ["detections"], 10.0)
    assert client.outputs_for("detections", header)[-1].detections == []

    ok = _ask(client, "take the cup")
    assert ok.found and ok.reason == ""
    assert client.wait_outputs(header, ["mask", "overlay"], 10.0)
    assert client.spin_until(
        lambda: any(m.detections for m in client.outputs_for("detections", header)), 10.0)
    dets = [m for m in client.outputs_for("detections", header) if m.detections][-1]
    assert [d.results[0].hypothesis.score for d in dets.detections] == [0.9, 0.5]
    best = dets.detections[0]
    assert (best.bbox.center.position.x, best.bbox.center.position.y) == (40.0, 20.0)
    assert (best.bbox.size_x, best.bbox.size_y) == (40.0, 20.0)
    mask = image_msg_array(ok.mask)
    assert mask.shape == (H, W) and mask[10:30, 20:60].min() == 255 and mask.sum() == 255 * 800


def test_queue_overflow_drops_the_oldest_but_answers_every_command(scripted: Any) -> None:
    from vlm_grasp_locator.ros.node import COMMAND_QUEUE_SIZE

    client, fake = scripted.client, scripted.fake
    client.publish_image(_frame(), stamp=(8, 0))
    fake.gate.clear()  # the worker blocks inside the first inference
    start = len(client.received["grasp_target"])
    client.send_command("take the cup")
    assert client.spin_until(lambda: fake.calls[-1:] == ["take the cup"], 10.0)
    queued = [f"take the thing number {i}" for i in range(COMMAND_QUEUE_SIZE + 2)]
    for text in queued:
        client.send_command(text)
    assert client.spin_until(lambda: len(client.received["grasp_target"]) >= start + 2, 10.0)
    fake.gate.set()
    assert client.spin_until(
        lambda: len(client.received["grasp_target"]) >= start + len(queued) + 1, 30.0)
    client.spin_until(lambda: False, 0.3)  # nothing more may come
    answers = client.received["grasp_target"][start:]
    # one answer each
    assert sorted(m.command for m in answers) == sorted(["take the cup"] + queued)
    dropped = [m.command for m in answers if "dropped" in m.reason]
    assert dropped == queued[:2]
    served = [m.command for m in answers if m.found]
    assert served == ["take the cup"] + queued[2:]


def test_commands_that_waited_are_answered_on_the_frame_they_waited_for(scripted: Any) -> None:
    """A backlog drains on the frame of the inference it waited for (cached in the core)."""
    client, fake = scripted.client, scripted.fake
    rgb = _frame()
    client.publish_image(rgb, stamp=(20, 0))
    fake.gate.clear()
    start = len(client.received["grasp_target"])
    client.send_command("take the cup")
    assert client.spin_until(lambda: fake.calls[-1:] == ["take the cup"], 10.0)
    client.publish_image(rgb, stamp=(21, 0))  # a newer frame arrives during the inference
    waited = ["take the pen", "take the box"]
    for text in waited:
        client.send_command(text)
    client.spin_until(lambda: False, 0.5)  # let the node receive them
    fake.gate.set()
    assert client.spin_until(lambda: len(client.received["grasp_target"]) >= start + 3, 30.0)
    answers = client.received["grasp_target"][start:]
    assert [m.command for m in answers] == ["take the cup"] + waited
    assert [m.header.stamp.sec for m in answers] == [20, 20, 20]
    later = _ask(client, "take the mug")  # arrived after: the newest frame
    assert later.header.stamp.sec == 21


def test_continuous_mode_skips_frames_while_busy(scripted: Any) -> None:
    client, fake = scripted.client, scripted.fake
    rgb = _frame()
    client.publish_image(rgb, stamp=(9, 0))
    assert _ask(client, "take the cup").found  # continuous is off: no following
    client.publish_image(rgb, stamp=(10, 0))
    client.spin_until(lambda: False, 0.3)
    assert fake.calls == ["take the cup"]

    from rclpy.parameter import Parameter

    # the full query on every frame (the scripted core cannot follow by box prompts)
    scripted.node.set_parameters([Parameter("continuous", value=True),
                                  Parameter("tracking", value=False)])
    _ask(client, "take the cup")
    fake.gate.clear()
    client.publish_image(rgb, stamp=(11, 0))  # tracking starts on this one and blocks
    assert client.spin_until(lambda: len(fake.calls) == 3, 10.0)
    for sec in (12, 13, 14):  # arrive while busy: only the newest is kept
        client.publish_image(rgb, stamp=(sec, 0))
    fake.gate.set()
    assert client.spin_until(
        lambda: any(m.header.stamp.sec == 14 for m in client.received["grasp_target"]), 10.0)
    tracked = [m.header.stamp.sec for m in client.received["grasp_target"]
               if m.header.stamp.sec >= 11]
    assert tracked == [11, 14]
    assert _ask(client, "stop").found is False
    client.publish_image(rgb, stamp=(15, 0))
    client.spin_until(lambda: False, 0.5)
    assert len(fake.calls) == 4
