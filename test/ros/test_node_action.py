"""The ``locate`` action and ``/diagnostics`` of the real node, over DDS.

A node process (random weights, tiny config) serves the ActionClient cases and the
diagnostics check; the queue and cancel-mid-query cases run the real node class in this
process with a scripted core that can be held inside a stage (deterministic timing).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytest

from node_harness import (
    SMALL_PARAMS,
    LocateCaller,
    RunningNode,
    ScriptedLocator,
    messages_unavailable,
)

_why = messages_unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

INFER_TIMEOUT_S = 120.0
W, H = 120, 80
ORDER = ["waiting_for_image", "proposing", "scoring", "done"]


def _frame(flip: bool = False) -> np.ndarray:
    import cv2

    from vlm_grasp_locator.tools.node_client import SAMPLE_IMAGE, load_rgb

    rgb = cv2.resize(load_rgb(SAMPLE_IMAGE), (W, H), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb[::-1]) if flip else rgb


def _status() -> Any:
    from action_msgs.msg import GoalStatus

    return GoalStatus


def _assert_header(msg: Any, header: Any) -> None:
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (header.stamp.sec,
                                                                header.stamp.nanosec)
    assert msg.header.frame_id == header.frame_id


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    running = RunningNode(tmp_path_factory.mktemp("action_logs"), SMALL_PARAMS)
    assert running.client is not None
    running.caller = LocateCaller(running.client)  # type: ignore[attr-defined]
    yield running
    running.caller.close()  # type: ignore[attr-defined]
    running.stop()


def test_goal_reports_stages_in_order_and_answers_with_the_image_header(
        node: RunningNode) -> None:
    header = node.publish(_frame(flip=True))  # a frame no other test used: not cached
    start = len(node.client.received["grasp_target"])  # type: ignore[union-attr]
    run = node.caller.send("take the cup")  # type: ignore[attr-defined]
    assert run.accepted
    status, target = run.wait(INFER_TIMEOUT_S)
    assert status == _status().STATUS_SUCCEEDED
    assert run.stages() == ORDER
    progress = [p for _, p in run.feedback]
    assert progress == sorted(progress) and progress[0] == 0.0 and progress[-1] == 1.0
    _assert_header(target, header)
    assert (target.command, target.target) == ("take the cup", "cup")
    assert target.found, target.reason  # random weights, threshold 0: some mask passes
    assert len(target.mask.data) == 0  # the mask only when the goal asks for it
    _assert_header(target.mask, header)
    # the same answer also went out on the topics (RViz sees action answers too)
    client = node.client
    assert client is not None
    assert client.spin_until(lambda: len(client.received["grasp_target"]) > start, 10.0)
    published = client.received["grasp_target"][-1]
    _assert_header(published, header)
    assert published.command == "take the cup"
    assert client.wait_outputs(header, ["detections", "mask", "overlay"], 10.0)


def test_goal_after_a_topic_command_on_the_same_frame_is_answered_from_cache(
        node: RunningNode) -> None:
    header = node.publish(_frame())
    first = node.ask("take the cup", INFER_TIMEOUT_S)  # the topic command computes the frame
    _assert_header(first, header)
    run = node.caller.send("grab the spoon")  # type: ignore[attr-defined]
    status, target = run.wait(INFER_TIMEOUT_S)
    assert status == _status().STATUS_SUCCEEDED
    assert run.stages() == ["waiting_for_image", "scoring", "done"]  # no "proposing"
    _assert_header(target, header)
    assert target.target == "spoon"


def test_goal_with_include_mask_gets_the_image_sized_mask(node: RunningNode) -> None:
    header = node.publish(_frame())
    run = node.caller.send("take the cup", include_mask=True)  # type: ignore[attr-defined]
    status, target = run.wait(INFER_TIMEOUT_S)
    assert status == _status().STATUS_SUCCEEDED and target.found, target.reason
    _assert_header(target, header)
    assert (target.mask.width, target.mask.height, target.mask.encoding) == (W, H, "mono8")
    mask = np.frombuffer(bytes(target.mask.data), np.uint8)
    assert mask.size == W * H and set(np.unique(mask)) <= {0, 255} and mask.any()


def test_several_targets_are_answered_in_order_on_the_action_and_the_topics(
        node: RunningNode) -> None:
    header = node.publish(_frame())
    client = node.client
    assert client is not None
    start = len(client.received["grasp_targets"])
    run = node.caller.send("take the cup and then the spoon")  # type: ignore[attr-defined]
    status, target = run.wait(INFER_TIMEOUT_S)
    assert status == _status().STATUS_SUCCEEDED
    result = run.result_future.result().result
    assert [t.target for t in result.targets] == ["cup", "spoon"]
    assert result.target.target == "cup" and result.targets[0].found == target.found
    assert all(len(t.mask.data) == 0 for t in result.targets)  # no masks unless asked
    for t in result.targets:
        _assert_header(t, header)
    # the topic: every target, in order, with its mask
    assert client.spin_until(lambda: len(client.received["grasp_targets"]) > start, 10.0)
    published = client.received["grasp_targets"][-1]
    _assert_header(published, header)
    assert [t.target for t in published.targets] == ["cup", "spoon"]
    found = [t for t in published.targets if t.found]
    assert all(len(t.mask.data) == W * H for t in found)
    detections = client.outputs_for("detections", header)
    assert detections, "no detections for the frame"
    labels = [d.results[0].hypothesis.class_id for d in detections[-1].detections]
    assert labels == sorted(labels, key=["cup", "spoon"].index)  # each target's, in order


@pytest.mark.parametrize("command", ["", "   ", "\x01\x02\x7f", "take it"])
def test_empty_or_junk_command_succeeds_not_found_with_a_reason(node: RunningNode,
                                                                command: str) -> None:
    from vlm_grasp_locator.core.command_parser import parse_command

    run = node.caller.send(command)  # type: ignore[attr-defined]
    assert run.accepted
    status, target = run.wait(30.0)
    assert status == _status().STATUS_SUCCEEDED
    assert target.found is False
    assert target.reason == parse_command(command).reason != ""
    assert "Traceback" not in node.stderr()


def test_cancel_while_waiting_for_an_image_then_the_node_keeps_serving(
        node: RunningNode) -> None:
    client = node.client
    assert client is not None
    node.set_parameters({"max_image_age": 0.2, "command_wait_timeout": 60.0})
    try:
        node.publish(_frame())
        client.spin_until(lambda: False, 0.4)  # the frame is now too old
        run = node.caller.send("take the saucer")  # type: ignore[attr-defined]
        assert client.spin_until(lambda: run.stages() == ["waiting_for_image"], 10.0)
        response = run.cancel()
        assert len(response.goals_canceling) == 1
        status, target = run.wait(30.0)
        assert status == _status().STATUS_CANCELED
        assert target.found is False and target.reason == "canceled"
    finally:
        node.set_parameters({"max_image_age": SMALL_PARAMS["max_image_age"],
                             "command_wait_timeout": SMALL_PARAMS["command_wait_timeout"]})
    header = node.publish(_frame())
    status, target = node.caller.send("take the saucer").wait(INFER_TIMEOUT_S)  # type: ignore
    assert status == _status().STATUS_SUCCEEDED
    _assert_header(target, header)
    assert node.alive()


def test_diagnostics_flag_random_weights_and_count(node: RunningNode) -> None:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    client = node.client
    assert client is not None
    node.publish(_frame())
    node.ask("take the cup", INFER_TIMEOUT_S)
    got: list = []
    sub = client.node.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
    try:
        def ours() -> list:
            return [s for m in got for s in m.status if s.name == "/grasp_locator"]

        assert client.spin_until(lambda: len(ours()) >= 1, 10.0), "no /diagnostics"
        status = ours()[-1]
        assert status.level == DiagnosticStatus.ERROR
        assert "RANDOM WEIGHTS" in status.message
        assert status.hardware_id == "cpu"
        values = {kv.key: kv.value for kv in status.values}
        assert values["device"] == "cpu"
        assert values["mode"] == "exact" and values["backend"] == "torch"
        assert "TinyCLIP-ViT-8M-16-Text-3M" in values["models"]
        assert "mobile_sam" in values["models"]
        assert values["lifecycle state"] == "active"
        assert int(values["frames received"]) >= 1
        assert int(values["commands answered"]) >= 1
        assert int(values["frames dropped"]) >= 0
        assert values["queue length"] == "0"
        assert "last error" in values
        assert float(values["last query total ms"]) > 0.0
    finally:
        client.node.destroy_subscription(sub)


# ------------------------------------------------------------ in-process, scripted core
@pytest.fixture
def scripted() -> Iterator[Any]:
    """The real node class in this process (its core a ScriptedLocator), spun by the
    node's own multi-threaded executor, and a client with an ActionClient."""
    import threading
    from types import SimpleNamespace

    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.signals import SignalHandlerOptions

    from node_harness import LocatorClient, reserve_domain_id
    from vlm_grasp_locator.ros.node import GraspLocatorNode, make_executor

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
    executor = make_executor(context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    client = LocatorClient(domain_id, name="scripted_action_client")
    caller = None
    try:
        assert client.wait_ready(30.0)
        caller = LocateCaller(client)
        yield SimpleNamespace(node=node, fake=fake, client=client, caller=caller)
    finally:
        fake.gate.set()
        if caller is not None:
            caller.close()
        client.close()
        node.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        spinner.join(5.0)
        lock.close()


def test_cancel_during_a_slow_query_ends_canceled_and_publishes_nothing(scripted: Any) -> None:
    client, fake, caller = scripted.client, scripted.fake, scripted.caller
    header = client.publish_image(_frame(), stamp=(21, 0))
    fake.gate.clear()  # the query stops inside "proposing"
    run = caller.send("take the cup")
    assert client.spin_until(lambda: "proposing" in run.stages(), 10.0)
    assert len(run.cancel().goals_canceling) == 1
    fake.gate.set()  # the next stage boundary sees the cancel
    status, target = run.wait(30.0)
    assert status == _status().STATUS_CANCELED
    assert (target.found, target.reason) == (False, "canceled")
    assert "done" not in run.stages()
    client.spin_until(lambda: False, 0.3)
    assert not client.outputs_for("grasp_target", header)  # a canceled goal has no answer

    again = caller.send("take the cup")
    status, target = again.wait(30.0)
    assert status == _status().STATUS_SUCCEEDED and target.found
    _assert_header(target, header)


def test_second_goal_queues_full_queue_rejects_and_a_queued_goal_cancels(scripted: Any) -> None:
    from vlm_grasp_locator.ros.node import COMMAND_QUEUE_SIZE

    client, fake, caller = scripted.client, scripted.fake, scripted.caller
    header = client.publish_image(_frame(), stamp=(22, 0))
    fake.gate.clear()
    first = caller.send("take the cup")
    assert client.spin_until(lambda: "proposing" in first.stages(), 10.0)
    queued = [caller.send(f"take the thing number {i}") for i in range(COMMAND_QUEUE_SIZE)]
    assert all(run.accepted for run in queued)
    assert not caller.send("take one too many").accepted  # queue full: rejected at once

    victim = queued[1]
    assert len(victim.cancel().goals_canceling) == 1
    status, target = victim.wait(10.0)  # ends while the first query still blocks
    assert status == _status().STATUS_CANCELED and target.reason == "canceled"
    assert not first.result_future.done()

    fake.gate.set()
    results = [run.wait(30.0) for run in [first] + queued]
    assert [s for s, _ in results] == (
        [_status().STATUS_SUCCEEDED] * 2 + [_status().STATUS_CANCELED]
        + [_status().STATUS_SUCCEEDED] * (COMMAND_QUEUE_SIZE - 2))
    for (status, target), run in zip(results, [first] + queued):
        assert target.command == run.command
        if status == _status().STATUS_SUCCEEDED:
            _assert_header(target, header)
    # FIFO: the core saw the goals in the order they were sent, without the canceled one
    sent = [r.command for r in [first] + queued if r is not victim]
    assert fake.calls[-len(sent):] == sent


def test_inference_failure_is_a_succeeded_goal_with_the_reason(scripted: Any) -> None:
    client, fake, caller = scripted.client, scripted.fake, scripted.caller
    client.publish_image(_frame(), stamp=(23, 0))
    fake.fail_next = True
    status, target = caller.send("take the cup").wait(30.0)
    assert status == _status().STATUS_SUCCEEDED
    assert (target.found, target.reason) == (False, "inference failed: RuntimeError: boom")
