"""The ``locate`` action (vlm_grasp_locator/action/Locate) on top of the node's job queue.

A goal becomes a :class:`Job` in the same FIFO as topic commands (one worker, one frame
cache). A goal arriving while the queue is full is rejected at once. Every accepted goal
gets exactly one result: SUCCEEDED (found or not, with the reason), CANCELED (cancel
accepted between stages, while waiting for an image or while queued) or ABORTED (the
node was deactivated or is shutting down). The execute callback only waits for the
job; it runs in a reentrant callback group of a multi-threaded executor, so waiting
goals never hold up image reception.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Optional

from vlm_grasp_locator.service.jobs import ABORTED, CANCELED, Job

POLL_S = 0.1  # how often a waiting goal looks for a cancel request


class LocateActionServer:
    """Glue between rclpy's ActionServer and the node's queue.

    ``admit()`` says why a new goal must be rejected (None = accept); ``submit(job)``
    queues a job; ``withdraw(job)`` takes a still-queued job out (True when it was queued).
    """

    def __init__(self, node: Any, *, admit: Callable[[], Optional[str]],
                 submit: Callable[[Job], None], withdraw: Callable[[Job], bool],
                 name: str = "locate") -> None:
        from rclpy.action import ActionServer
        from rclpy.callback_groups import ReentrantCallbackGroup

        from vlm_grasp_locator.action import Locate

        self._node = node
        self._admit, self._submit, self._withdraw = admit, submit, withdraw
        self._Locate = Locate
        self._server = ActionServer(
            node, Locate, name,
            execute_callback=self._unexpected_execute,
            goal_callback=self._on_goal,
            handle_accepted_callback=self._on_accepted,
            cancel_callback=self._on_cancel,
            callback_group=ReentrantCallbackGroup(),
        )

    def destroy(self) -> None:
        self._server.destroy()

    # ------------------------------------------------------------------ rclpy callbacks
    def _on_goal(self, goal: Any) -> Any:
        from rclpy.action import GoalResponse

        why = self._admit()
        if why is None:
            return GoalResponse.ACCEPT
        self._node.get_logger().warning(
            f"rejecting locate goal {goal.command[:60]!r}: {why}")
        return GoalResponse.REJECT

    def _on_cancel(self, goal_handle: Any) -> Any:
        from rclpy.action import CancelResponse

        return CancelResponse.ACCEPT

    def _on_accepted(self, goal_handle: Any) -> None:
        job = Job(goal_handle.request.command, time.monotonic(), is_goal=True,
                  cancel_requested=lambda: goal_handle.is_cancel_requested,
                  feedback=lambda stage, progress: self._feedback(goal_handle, stage, progress))
        goal_handle.execute(lambda handle: self._wait(handle, job))
        self._submit(job)

    def _unexpected_execute(self, goal_handle: Any) -> Any:  # pragma: no cover - never used
        goal_handle.abort()
        return self._Locate.Result()

    # ------------------------------------------------------------------ goal life
    @staticmethod
    def _result_target(goal_handle: Any, job: Job) -> Any:
        """The answer, its mask left out unless the goal asked for it."""
        target = job.target_msg
        if target is None or goal_handle.request.include_mask:
            return target
        from sensor_msgs.msg import Image

        target = copy.copy(target)
        target.mask = Image(header=target.mask.header)
        return target

    def _feedback(self, goal_handle: Any, stage: str, progress: float) -> None:
        if goal_handle.is_active:
            goal_handle.publish_feedback(self._Locate.Feedback(stage=stage,
                                                               progress=float(progress)))

    def _wait(self, goal_handle: Any, job: Job) -> Any:
        """Execute callback: wait for the worker's answer; a queued goal is canceled here."""
        while not job.done.wait(POLL_S):
            if goal_handle.is_cancel_requested and self._withdraw(job):
                self._node.finish_canceled(job, "canceled")
        result = self._Locate.Result(target=self._result_target(goal_handle, job))
        if job.outcome == CANCELED and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif job.outcome in (CANCELED, ABORTED):
            goal_handle.abort()
        else:
            goal_handle.succeed()
        return result
