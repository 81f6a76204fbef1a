"""The managed (lifecycle) node, as a process over DDS, driven through its lifecycle services.

One node starts with autostart:=false and is walked configure -> activate -> deactivate
-> cleanup -> (configure again) -> shutdown; another starts with the default autostart
and answers without any manual transition.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pytest

from node_harness import SMALL_PARAMS, LocateCaller, RunningNode, messages_unavailable

_why = messages_unavailable()
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")

INFER_TIMEOUT_S = 120.0
QUIET_S = 1.5  # how long "no output" is watched for


def _frame() -> np.ndarray:
    import cv2

    from vlm_grasp_locator.tools.node_client import SAMPLE_IMAGE, load_rgb

    return cv2.resize(load_rgb(SAMPLE_IMAGE), (120, 80), interpolation=cv2.INTER_AREA)


class Lifecycle:
    """ChangeState / GetState clients for one node."""

    def __init__(self, running: RunningNode) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState

        client = running.client
        assert client is not None
        self.client = client
        self.ChangeState, self.GetState = ChangeState, GetState
        self.change = client.node.create_client(ChangeState, f"{running.node_name}/change_state")
        self.get = client.node.create_client(GetState, f"{running.node_name}/get_state")
        assert client.spin_until(lambda: self.change.service_is_ready()
                                 and self.get.service_is_ready(), 60.0, running.alive)

    def _call(self, service: Any, request: Any, timeout_s: float) -> Any:
        future = service.call_async(request)
        assert self.client.spin_until(future.done, timeout_s), "lifecycle service did not answer"
        return future.result()

    def state(self) -> str:
        return self._call(self.get, self.GetState.Request(), 10.0).current_state.label

    def transition(self, transition_id: int, timeout_s: float = 120.0) -> bool:
        request = self.ChangeState.Request()
        request.transition.id = transition_id
        return self._call(self.change, request, timeout_s).success


def _no_new_output(running: RunningNode) -> bool:
    """Publish a frame and a command; True when nothing comes out for QUIET_S."""
    client = running.client
    assert client is not None
    before = {topic: len(msgs) for topic, msgs in client.received.items()}
    client.publish_image(_frame(), wait_ack_s=0)
    client.send_command("take the cup")
    client.spin_until(lambda: False, QUIET_S)
    return all(len(client.received[t]) == n for t, n in before.items())


@pytest.fixture(scope="module")
def manual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    running = RunningNode(tmp_path_factory.mktemp("lifecycle_logs"),
                          {**SMALL_PARAMS, "autostart": False}, node_args=["--managed"],
                          wait_ready=False)
    yield running
    running.stop()


def test_manual_walk_through_every_transition(manual: RunningNode) -> None:
    from lifecycle_msgs.msg import Transition

    client = manual.client
    assert client is not None
    life = Lifecycle(manual)
    assert life.state() == "unconfigured"
    assert client.image_pub.get_subscription_count() == 0

    assert life.transition(Transition.TRANSITION_CONFIGURE)  # loads the models
    assert life.state() == "inactive"
    caller = LocateCaller(client)  # the action server exists once configured ...
    assert not caller.send("take the cup").accepted  # ... but rejects goals while inactive
    assert _no_new_output(manual)

    assert life.transition(Transition.TRANSITION_ACTIVATE)
    assert life.state() == "active"
    assert client.wait_ready(30.0)
    header = manual.publish(_frame())
    answer = manual.ask("take the cup", INFER_TIMEOUT_S)
    assert answer.header.stamp.sec == header.stamp.sec and answer.target == "cup"
    status, target = caller.send("grab the spoon").wait(INFER_TIMEOUT_S)
    assert target.target == "spoon" and target.header.stamp.sec == header.stamp.sec

    assert life.transition(Transition.TRANSITION_DEACTIVATE)
    assert life.state() == "inactive"
    assert client.spin_until(lambda: client.image_pub.get_subscription_count() == 0, 10.0)
    assert not caller.send("take the cup").accepted
    assert _no_new_output(manual)

    assert life.transition(Transition.TRANSITION_CLEANUP)  # models and frame cache freed
    assert life.state() == "unconfigured"
    assert client.spin_until(lambda: client.node.count_publishers("grasp_target") == 0, 10.0)

    assert life.transition(Transition.TRANSITION_CONFIGURE)  # and loaded again
    assert life.transition(Transition.TRANSITION_ACTIVATE)
    assert client.wait_ready(30.0)
    again = manual.ask("take the saucer", 30.0)  # cleanup dropped the last frame too
    assert again.target == "saucer" and "no image" in again.reason

    assert life.transition(Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert life.state() == "finalized"
    assert _no_new_output(manual)
    caller.close()
    assert manual.alive()
    code, _ = manual.stop()
    assert code == 0
    assert "Traceback" not in manual.stderr()


def test_autostart_answers_without_any_transition(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    from diagnostic_msgs.msg import DiagnosticArray

    running = RunningNode(tmp_path_factory.mktemp("autostart_logs"), SMALL_PARAMS,
                          node_args=["--managed"])  # ready = subscribed, no manual transition
    try:
        client = running.client
        assert client is not None
        assert Lifecycle(running).state() == "active"
        answer = running.ask("take the cup", 30.0)  # no image sent: answered not-found at once
        assert answer.target == "cup" and "no image" in answer.reason
        got: list = []
        client.node.create_subscription(DiagnosticArray, "/diagnostics", got.append, 10)
        assert client.spin_until(lambda: any(s.name == "/grasp_locator"
                                             for m in got for s in m.status), 10.0)
        status = [s for m in got for s in m.status if s.name == "/grasp_locator"][-1]
        assert {kv.key: kv.value for kv in status.values}["lifecycle state"] == "active"
    finally:
        code, _ = running.stop()
    assert code == 0
