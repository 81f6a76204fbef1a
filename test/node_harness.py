"""Start the real grasp_locator node as a process and talk to it over DDS.

DDS hygiene for a shared machine: every node gets its own ROS_DOMAIN_ID (reserved with a
lock file), discovery stays on localhost, nodes are stopped with SIGINT (SIGKILL would
leave Fast DDS shared-memory files behind), and waits are driven by messages.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from vlm_grasp_locator.tools.node_client import (
    LocatorClient,
    NodeProcess,
    array_to_image_msg,
    bbox_xyxy,
    image_msg_array,
    reserve_domain_id,
)

if TYPE_CHECKING:
    from vlm_grasp_locator.service.locator_service import Reply

__all__ = [
    "SMALL_PARAMS", "RunningNode", "messages_unavailable", "next_stamp", "run_node_to_exit",
    "array_to_image_msg", "bbox_xyxy", "image_msg_array", "reserve_domain_id", "LocatorClient",
    "ScriptedLocator", "LocateCaller",
]

# Random weights and a tiny prompt grid: the pipeline runs end to end in a few seconds
# per frame on a CPU, and the zero thresholds let masks through untrained models.
SMALL_PARAMS: Dict[str, Any] = {
    "allow_random_weights": True,
    "device": "cpu",
    "clip_model": "TinyCLIP-ViT-8M-16-Text-3M",
    "points_per_side": 4,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "score_threshold": 0.0,
    "min_mask_region_area": 0,
    "num_threads": 1,
    "image_qos": "reliable",  # the tests publish single frames: no best-effort losses
    "max_image_age": 120.0,  # frames may wait behind slow CPU inferences
    "command_wait_timeout": 1.0,
}

_stamps = itertools.count(1000)


def next_stamp() -> Tuple[int, int]:
    """A stamp no other frame of this test run carries."""
    return next(_stamps), 123


def messages_unavailable() -> Optional[str]:
    """Why the node cannot run here (None when it can): the built messages are needed."""
    try:
        from vision_msgs.msg import Detection2DArray  # noqa: F401

        from vlm_grasp_locator.msg import GraspTarget  # noqa: F401
    except ImportError as e:
        return (f"message packages not importable ({e}); "
                "run `bash scripts/setup.sh` and `source scripts/env.sh`")
    return None


class RunningNode:
    """One node process on a private domain plus a client talking to it."""

    def __init__(self, log_dir: Path, params: Mapping[str, Any], *, ready_timeout_s: float = 180.0,
                 ros_args: Sequence[str] = (), node_args: Sequence[str] = (),
                 namespace: str = "", domain_id: Optional[int] = None,
                 wait_ready: bool = True) -> None:
        """``node_args``: before --ros-args (``--managed``); ``namespace``: the node's and
        the client's (``/left``); ``domain_id``: share a domain the caller reserved (with
        :func:`reserve_domain_id`); ``wait_ready=False``: do not wait for the subscriptions
        (an unconfigured managed node has none)."""
        if domain_id is None:
            self.domain_id, self._lock = reserve_domain_id()
        else:
            self.domain_id, self._lock = domain_id, None
        self.namespace = namespace
        tag = f"{self.domain_id}{namespace.replace('/', '_')}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"node_{tag}.out"
        self.stderr_path = log_dir / f"node_{tag}.err"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        if namespace:
            ros_args = [*ros_args, "-r", f"__ns:={namespace}"]
        self.process = NodeProcess(params, self.domain_id, ros_args=ros_args,
                                   stdout=self._out, stderr=self._err, node_args=node_args)
        self.client: Optional[LocatorClient] = None
        self._param_client: Any = None
        try:
            self.client = LocatorClient(self.domain_id, namespace=namespace,
                                        name=f"test_client_{os.getpid()}")
            if wait_ready and not self.client.wait_ready(ready_timeout_s, self.process.alive):
                raise RuntimeError(
                    f"node not ready after {ready_timeout_s} s "
                    f"(exit code {self.process.returncode}):\n" + self.logs()[-3000:])
        except BaseException:
            self.stop()
            raise

    @property
    def node_name(self) -> str:
        """The node's fully qualified name, e.g. ``/left/grasp_locator``."""
        return f"{self.namespace.rstrip('/')}/grasp_locator"

    def logs(self) -> str:
        for f in (self._out, self._err):
            if not f.closed:
                f.flush()
        return (self.stdout_path.read_text(errors="replace")
                + self.stderr_path.read_text(errors="replace"))

    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.alive()

    def publish(self, image: Any, encoding: str = "rgb8", *,
                frame_id: str = "camera_color_optical_frame") -> Any:
        """Publish one frame with a fresh unique stamp; return its header once delivered."""
        assert self.client is not None
        return self.client.publish_image(image, stamp=next_stamp(), frame_id=frame_id,
                                         encoding=encoding)

    def ask(self, command: str, timeout_s: float = 120.0) -> Any:
        """Send ``command``; the GraspTarget answering it (fails the test on timeout)."""
        assert self.client is not None
        start = len(self.client.received["grasp_target"])
        self.client.send_command(command)
        answer = self.client.wait_answer(command, timeout_s, start=start, alive=self.alive)
        assert answer is not None, (
            f"no answer to {command[:40]!r} within {timeout_s} s (node alive: {self.alive()})\n"
            + self.logs()[-3000:])
        return answer

    def try_set_parameters(self, values: Mapping[str, Any],
                           timeout_s: float = 10.0) -> List[Tuple[bool, str]]:
        """Set node parameters through its parameter service; (successful, reason) each.

        A plain rcl_interfaces/SetParameters client: rclpy.parameter_client is Iron+."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        assert self.client is not None
        if self._param_client is None:
            self._param_client = self.client.node.create_client(
                SetParameters, f"{self.node_name}/set_parameters")
        assert self._param_client.wait_for_service(timeout_sec=timeout_s)
        future = self._param_client.call_async(SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]))
        assert self.client.spin_until(future.done, timeout_s), "parameter service did not answer"
        return [(r.successful, r.reason) for r in future.result().results]

    def set_parameters(self, values: Mapping[str, Any]) -> None:
        """Set node parameters; fail the test unless all were accepted."""
        results = self.try_set_parameters(values)
        assert all(ok for ok, _ in results), results

    def stop(self, timeout_s: float = 10.0) -> Tuple[int, float]:
        """SIGINT the node; (exit code, seconds it took)."""
        if self.client is not None and self._param_client is not None:
            self.client.node.destroy_client(self._param_client)
        self._param_client = None
        if self.client is not None:
            self.client.close()
            self.client = None
        started = time.monotonic()
        code = self.process.stop(timeout_s)
        took = time.monotonic() - started
        for f in (self._out, self._err):
            if not f.closed:
                f.close()
        if self._lock is not None and not self._lock.closed:
            self._lock.close()
        return code, took


def run_node_to_exit(params: Mapping[str, Any], ros_args: Sequence[str] = (),
                     timeout_s: float = 120.0) -> Tuple[int, str]:
    """Run a node that is expected to exit by itself; (exit code, stderr + stdout)."""
    import subprocess

    domain_id, lock = reserve_domain_id()
    try:
        proc = NodeProcess(params, domain_id, ros_args=ros_args,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.stop()
            raise
        return proc.proc.returncode, err.decode(errors="replace") + out.decode(errors="replace")
    finally:
        lock.close()


class RecordingOutputs:
    """The service's Outputs for in-process tests: keeps every published reply."""

    def __init__(self) -> None:
        self.published: List["Reply"] = []
        self.lock = threading.Lock()

    def render(self, reply: "Reply") -> "Reply":
        return reply

    def publish(self, rendered: object) -> None:
        from vlm_grasp_locator.service.locator_service import Reply

        assert isinstance(rendered, Reply)
        with self.lock:
            self.published.append(rendered)

    def texts(self) -> List[str]:
        with self.lock:
            return [r.text for r in self.published]


class ScriptedLocator:
    """Stands in for the core: instant, blockable, and made to fail on request."""

    random_weights = True
    device = "cpu"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False
        self.calls: List[str] = []
        self.keys: List[Any] = []  # the frame_key of each call
        self.cleared = 0

    def clear_cache(self) -> None:
        self.cleared += 1

    def locate(self, image: np.ndarray, command: Any, on_stage: Any = None,
               frame_key: Any = None) -> Any:
        """``command``: the text or the service's ``ReferringCommand`` (its text is kept)."""
        from vlm_grasp_locator.core.command_parser import parse_command
        from vlm_grasp_locator.pipeline.locator import Detection, LocateResult

        command = command if isinstance(command, str) else command.command
        report = on_stage or (lambda stage, progress: None)
        self.calls.append(command)
        self.keys.append(frame_key)
        report("proposing", 0.0)
        assert self.gate.wait(60)
        report("scoring", 0.7)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        h, w = image.shape[:2]
        mask = np.zeros((h, w), bool)
        mask[10:30, 20:60] = True
        target = parse_command(command).target
        dets = [Detection(label=target, score=s, box_xyxy=(20.0, 10.0, 60.0, 30.0), mask=mask,
                          mask_area=int(mask.sum()), similarity=0.3) for s in (0.9, 0.5)]
        return LocateResult(command, target, True, "", (w, h), dets, {"total": 1.0})


class LocateCaller:
    """An ActionClient for the node's ``locate`` action on a LocatorClient's node."""

    def __init__(self, client: LocatorClient, action_name: str = "locate",
                 timeout_s: float = 30.0) -> None:
        from rclpy.action import ActionClient

        from vlm_grasp_locator.action import Locate

        self.client = client
        self.Locate = Locate
        self.action = ActionClient(client.node, Locate, action_name)
        assert client.spin_until(self.action.server_is_ready, timeout_s), "no locate server"
        # The feedback subscription must be matched before the first goal's feedback.
        name = client.node.resolve_topic_name(f"{action_name}/_action/feedback")
        assert client.spin_until(lambda: client.node.count_publishers(name) > 0, timeout_s)
        client.spin_until(lambda: False, 0.3)

    def send(self, command: str, timeout_s: float = 30.0,
             include_mask: bool = False) -> "GoalRun":
        """Send a goal; the run once the server answered (accepted or rejected)."""
        run = GoalRun(self, command)
        goal = self.Locate.Goal(command=command, include_mask=include_mask)
        future = self.action.send_goal_async(goal,
                                             feedback_callback=run.on_feedback)
        assert self.client.spin_until(future.done, timeout_s), "goal not answered"
        run.handle = future.result()
        if run.handle.accepted:
            run.result_future = run.handle.get_result_async()
        return run

    def close(self) -> None:
        self.action.destroy()


class GoalRun:
    """One goal: its feedback (stage, progress) in arrival order, and its result."""

    def __init__(self, caller: LocateCaller, command: str) -> None:
        self.caller = caller
        self.command = command
        self.feedback: List[Tuple[str, float]] = []
        self.handle: Any = None
        self.result_future: Any = None

    def on_feedback(self, msg: Any) -> None:
        self.feedback.append((msg.feedback.stage, msg.feedback.progress))

    @property
    def accepted(self) -> bool:
        return bool(self.handle is not None and self.handle.accepted)

    def stages(self) -> List[str]:
        """The feedback stages with repeats collapsed."""
        out: List[str] = []
        for stage, _ in self.feedback:
            if not out or out[-1] != stage:
                out.append(stage)
        return out

    def cancel(self, timeout_s: float = 10.0) -> Any:
        future = self.handle.cancel_goal_async()
        assert self.caller.client.spin_until(future.done, timeout_s), "cancel not answered"
        return future.result()

    def wait(self, timeout_s: float = 120.0) -> Tuple[int, Any]:
        """(GoalStatus status, GraspTarget); the feedback that came with it is collected too."""
        assert self.result_future is not None, "goal was not accepted"
        client = self.caller.client
        assert client.spin_until(self.result_future.done, timeout_s), \
            f"no result for {self.command!r} within {timeout_s} s"
        client.spin_until(lambda: False, 0.2)  # feedback published just before the result
        response = self.result_future.result()
        return response.status, response.result.target
