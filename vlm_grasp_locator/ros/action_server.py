"""The ``locate`` action (vlm_grasp_locator/action/Locate) on top of the service's job queue.

A goal becomes a :class:`Job` in the same FIFO as topic commands (one worker, one frame
cache). A goal arriving while the queue is full is rejected at once. Every accepted goal
gets exactly one result: SUCCEEDED (found or not, with the reason), CANCELED (cancel
accepted while queued, while waiting for an image or between stages) or ABORTED (the
node was deactivated or is shutting down).

Waiting goals hold no thread (as ros2/examples' ``server_queue_goals.py``): an accepted
goal is only queued; ``goal_handle.execute()`` is called when the worker starts its job
(or when it ended while still queued), and the execute callback then waits for that one
job. At most one execute callback waits at a time, whatever the queue holds.
"""
from __future__ import annotations

import copy
import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from vlm_grasp_locator.ros.messages import Answer, RosMsg
from vlm_grasp_locator.service.jobs import Job, JobKind, Outcome, Stage
from vlm_grasp_locator.service.locator_service import LocatorService, Reply

# A cancel accepted by our callback reaches the goal's state right after the callback
# returns; a result ready before then waits at most this long for it.
CANCEL_STATE_WAIT_S = 1.0

if TYPE_CHECKING:
    from rclpy.action import CancelResponse, GoalResponse
    from rclpy.action.server import ServerGoalHandle
    from rclpy.node import Node


class _Goal:
    """One accepted goal: its handle, its job, and whether execute() was called."""

    def __init__(self, handle: "ServerGoalHandle", job_factory: Callable[["_Goal"], Job]) -> None:
        self.handle = handle
        self._executed = False
        self._lock = threading.Lock()
        self.job = job_factory(self)

    def claim_execute(self) -> bool:
        """True the first time only."""
        with self._lock:
            first, self._executed = not self._executed, True
            return first


class LocateActionServer:
    """Glue between rclpy's ActionServer and the :class:`LocatorService`.

    ``admit()`` says why a new goal must be rejected (None = accept);
    ``not_found(reply)`` builds the GraspTarget of a goal that ended unanswered.
    """

    def __init__(self, node: "Node", service: LocatorService, *,
                 admit: Callable[[], Optional[str]], not_found: Callable[[Reply], RosMsg],
                 name: str = "locate") -> None:
        from rclpy.action import ActionServer
        from rclpy.callback_groups import ReentrantCallbackGroup

        from vlm_grasp_locator.action import Locate

        self._node = node
        self._service = service
        self._admit = admit
        self._not_found = not_found
        self._Locate = Locate
        self._server = ActionServer(
            node, Locate, name,
            execute_callback=self._unexpected_execute,
            goal_callback=self._on_goal,
            handle_accepted_callback=self._on_accepted,
            cancel_callback=self._on_cancel,
            callback_group=ReentrantCallbackGroup(),
        )
        self._goals: Dict[bytes, _Goal] = {}  # by goal id, until the result is out
        self._goals_lock = threading.Lock()

    def destroy(self) -> None:
        self._server.destroy()

    # ------------------------------------------------------------------ rclpy callbacks
    def _on_goal(self, goal: RosMsg) -> "GoalResponse":
        from rclpy.action import GoalResponse

        why = self._admit()
        if why is None:
            return GoalResponse.ACCEPT
        self._node.get_logger().warning(
            f"rejecting locate goal {goal.command[:60]!r}: {why}")
        return GoalResponse.REJECT

    def _on_accepted(self, goal_handle: "ServerGoalHandle") -> None:
        """Queue the goal's job; no execute yet (no thread waits for a queued goal)."""
        goal = _Goal(goal_handle, self._make_job)
        with self._goals_lock:
            self._goals[bytes(goal_handle.goal_id.uuid)] = goal
        self._service.submit(goal.job)

    def _make_job(self, goal: _Goal) -> Job:
        return Job(goal.handle.request.command, JobKind.GOAL, received=time.monotonic(),
                   feedback=lambda stage, progress: self._feedback(goal, stage, progress),
                   on_start=lambda job: self._execute(goal),
                   on_finish=lambda job: self._execute(goal))

    def _on_cancel(self, goal_handle: "ServerGoalHandle") -> "CancelResponse":
        from rclpy.action import CancelResponse

        with self._goals_lock:
            goal = self._goals.get(bytes(goal_handle.goal_id.uuid))
        if goal is not None:
            self._service.cancel(goal.job)
        return CancelResponse.ACCEPT

    def _unexpected_execute(self, goal_handle: "ServerGoalHandle") -> RosMsg:
        """Never called: goals are executed through ``goal.handle.execute`` (see above)."""
        goal_handle.abort()
        return self._Locate.Result()

    # ------------------------------------------------------------------ goal life
    def _execute(self, goal: _Goal) -> None:
        """Start the goal's execute callback once: its job started, or ended while queued."""
        if not goal.claim_execute():
            return
        if self._node.executor is None:  # the node left its executor: nobody to answer
            return
        goal.handle.execute(lambda handle: self._result(goal))

    def _feedback(self, goal: _Goal, stage: Stage, progress: float) -> None:
        handle = goal.handle
        if handle.is_active:
            handle.publish_feedback(self._Locate.Feedback(stage=stage.value,
                                                          progress=float(progress)))

    def _result(self, goal: _Goal) -> RosMsg:
        """Execute callback: wait for the job's end (it has started or ended), report it."""
        handle, job = goal.handle, goal.job
        job.wait()
        try:
            if job.outcome is Outcome.CANCELED:
                deadline = time.monotonic() + CANCEL_STATE_WAIT_S
                while not handle.is_cancel_requested and time.monotonic() < deadline:
                    time.sleep(0.005)
            target, targets = self._result_targets(goal)
            result = self._Locate.Result(target=target, targets=targets)
            if job.outcome is Outcome.SUCCEEDED:
                handle.succeed()
            elif job.outcome is Outcome.CANCELED and handle.is_cancel_requested:
                handle.canceled()
            else:
                handle.abort()
            return result
        finally:
            with self._goals_lock:
                self._goals.pop(bytes(handle.goal_id.uuid), None)

    def _result_targets(self, goal: _Goal) -> Tuple[RosMsg, List[RosMsg]]:
        """The answer and every target's, masks left out unless the goal asked for them."""
        job = goal.job
        if job.outcome is Outcome.SUCCEEDED and isinstance(job.answer, Answer):
            target = job.answer.grasp_target
            array = job.answer.grasp_targets
            targets = list(array.targets) if array is not None else [target]
        else:
            target = self._not_found(Reply(job.text, None, self._service.newest_frame,
                                           reason=job.reason))
            targets = [target]
        if goal.handle.request.include_mask:
            return target, targets
        return _without_mask(target), [_without_mask(t) for t in targets]


def _without_mask(target: RosMsg) -> RosMsg:
    """A copy of a GraspTarget whose mask keeps only its header."""
    from sensor_msgs.msg import Image

    target = copy.copy(target)
    target.mask = Image(header=target.mask.header)
    return target
