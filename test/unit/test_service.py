"""LocatorService in this process, without ROS: queue, frame slot, worker, cancel, stop.

The core is a ScriptedLocator (instant, blockable, made to fail on request);
test/models/test_real_parts.py answers through the service with the real locator.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterator, List, Tuple

import numpy as np
import pytest

from node_harness import RecordingOutputs, ScriptedLocator
# The scripted core builds real LocateResults: import them (and torch) here, not inside
# the first inference, which the tests time out on under load.
from vlm_grasp_locator.pipeline import locator as _result_types  # noqa: F401
from vlm_grasp_locator.service.jobs import Frame, Job, JobKind, Outcome, Stage
from vlm_grasp_locator.service.locator_service import (
    LocatorService,
    Reply,
    ServiceSettings,
    ServiceState,
)

LOG = logging.getLogger("test_service")
RGB = np.zeros((40, 80, 3), np.uint8)


class Rig:
    def __init__(self, settings: ServiceSettings, queue_size: int = 8) -> None:
        self.fake = ScriptedLocator()
        self.out = RecordingOutputs()
        self.service = LocatorService(lambda: self.fake, self.out, LOG, settings=settings,
                                      queue_size=queue_size)
        self.decoded: List[int] = []
        self.frames = 0

    def frame(self) -> Frame:
        self.frames += 1
        n = self.frames

        def decode() -> np.ndarray:
            self.decoded.append(n)
            return RGB

        return self.service.put_frame(f"header {n}", decode)

    def job(self, text: str, kind: JobKind = JobKind.COMMAND) -> "Recorded":
        recorded = Recorded(text, kind)
        self.service.submit(recorded.job)
        return recorded

    def reply_for(self, job: Job) -> Reply:
        matches = [r for r in self.out.published if r.job is job]
        assert len(matches) == 1, matches
        return matches[0]


class Recorded:
    """A job with its feedback, hooks and how often it finished."""

    def __init__(self, text: str, kind: JobKind) -> None:
        self.feedback: List[Tuple[Stage, float]] = []
        self.started = threading.Event()
        self.finished = 0
        self.job = Job(text, kind, feedback=lambda s, p: self.feedback.append((s, p)),
                       on_start=lambda j: self.started.set(), on_finish=self._finish)

    def _finish(self, job: Job) -> None:
        self.finished += 1

    def wait(self, timeout_s: float = 10.0) -> Outcome:
        assert self.job.wait(timeout_s), f"{self.job.text!r} did not end"
        assert self.job.outcome is not None
        return self.job.outcome


def _until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def rig() -> Iterator[Rig]:
    made = Rig(ServiceSettings(max_image_age=0.0, command_wait_timeout=1.0))
    made.service.load()
    made.service.activate()
    yield made
    made.fake.gate.set()
    assert made.service.stop(10.0)
    made.service.unload()


def _block_on(rig: Rig, text: str = "take the cup",
              kind: JobKind = JobKind.COMMAND) -> Recorded:
    """Start ``text`` and leave the worker blocked inside its inference."""
    rig.fake.gate.clear()
    first = rig.job(text, kind)
    assert _until(lambda: rig.fake.calls[-1:] == [text])
    return first


def test_jobs_are_answered_once_in_order_and_a_backlog_on_the_frame_it_waited_for(
        rig: Rig) -> None:
    first_frame = rig.frame()
    first = _block_on(rig)
    rig.frame()  # newer, arrives during the inference
    waiting = [rig.job("take the pen"), rig.job("grab the box", JobKind.GOAL),
               rig.job("take the mug")]
    rig.fake.gate.set()
    assert all(r.wait() is Outcome.SUCCEEDED for r in [first] + waiting)
    assert rig.out.texts() == ["take the cup", "take the pen", "grab the box", "take the mug"]
    assert all(r.finished == 1 for r in [first] + waiting)
    # the core's cache key is the frame's number (the frame's identity in the service)
    assert rig.fake.keys == [1, 1, 1, 1]
    # waited while the first inference ran: answered on its frame, from the core's cache
    assert [rig.reply_for(r.job).frame for r in [first] + waiting] == [first_frame] * 4
    later = rig.job("take the spoon")
    assert later.wait() is Outcome.SUCCEEDED
    reply = rig.reply_for(later.job)
    assert reply.frame is not None and reply.frame.seq == 2
    assert reply.result is not None and reply.result.found and reply.target == "spoon"
    assert rig.fake.keys[-1] == 2
    assert rig.service.stats.commands_answered == 5


def test_goal_feedback_runs_through_the_stages_in_order(rig: Rig) -> None:
    rig.frame()
    goal = rig.job("take the cup", JobKind.GOAL)
    assert goal.wait() is Outcome.SUCCEEDED
    assert goal.started.is_set()
    assert [s for s, _ in goal.feedback] == [Stage.WAITING, Stage.PROPOSING, Stage.SCORING,
                                             Stage.DONE]
    assert [s.value for s, _ in goal.feedback] == ["waiting_for_image", "proposing", "scoring",
                                                   "done"]
    progress = [p for _, p in goal.feedback]
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_full_queue_drops_the_oldest_command_and_refuses_goals(rig: Rig) -> None:
    rig.frame()
    first = _block_on(rig)
    size = rig.service.queue_size
    queued = [rig.job(f"take the thing number {i}") for i in range(size + 2)]
    # the two oldest are pushed out at once and answered not-found
    assert [r.job.outcome for r in queued[:2]] == [Outcome.DROPPED] * 2
    assert all("dropped: command queue full" in r.job.reason for r in queued[:2])
    dropped = [r for r in rig.out.published if r.job is None]
    assert [r.text for r in dropped] == [r.job.text for r in queued[:2]]
    assert all(r.result is None and "superseded" in r.reason for r in dropped)
    assert rig.service.queue_length == size
    assert rig.service.admit_goal() == f"queue full ({size} commands and goals waiting)"
    rig.fake.gate.set()
    assert all(r.wait() is Outcome.SUCCEEDED for r in [first] + queued[2:])
    assert rig.out.texts()[2:] == [r.job.text for r in [first] + queued[2:]]
    assert all(r.finished == 1 for r in [first] + queued)
    assert rig.service.admit_goal() is None


def test_a_command_meeting_a_queue_of_goals_is_itself_dropped(rig: Rig) -> None:
    rig.frame()
    first = _block_on(rig)
    goals = [rig.job(f"take the thing number {i}", JobKind.GOAL)
             for i in range(rig.service.queue_size)]
    late = rig.job("take the cup")
    assert late.job.outcome is Outcome.DROPPED
    assert "the queue holds only action goals" in late.job.reason
    rig.fake.gate.set()
    assert all(r.wait() is Outcome.SUCCEEDED for r in [first] + goals)


def test_frame_age_and_waiting_for_a_fresh_frame() -> None:
    rig = Rig(ServiceSettings(max_image_age=0.2, command_wait_timeout=0.1))
    rig.service.load()
    rig.service.activate("camera/image")
    try:
        none = rig.job("take the cup")
        assert none.wait() is Outcome.SUCCEEDED
        reason = rig.reply_for(none.job).reason
        assert reason == ("no image received on 'camera/image' "
                          "(waited command_wait_timeout=0.1 s)")
        rig.frame()
        time.sleep(0.3)
        stale = rig.job("take the cup")
        stale.wait()
        reply = rig.reply_for(stale.job)
        assert reply.result is None and "old" in reply.reason and "max_image_age" in reply.reason
        assert reply.target == "cup" and reply.frame is not None  # stamped like the old frame
        rig.service.update_settings(ServiceSettings(max_image_age=0.2,
                                                    command_wait_timeout=10.0))
        fresh = rig.job("take the cup")
        assert _until(lambda: fresh.feedback[-1:] == [(Stage.WAITING, 0.0)])
        time.sleep(0.1)
        assert not fresh.job.done.is_set()  # still waiting for a frame
        new = rig.frame()
        assert fresh.wait() is Outcome.SUCCEEDED
        assert rig.reply_for(fresh.job).frame is new
    finally:
        assert rig.service.stop(5.0)


def test_cancel_while_queued_ends_at_once_and_publishes_nothing(rig: Rig) -> None:
    rig.frame()
    first = _block_on(rig)
    victim = rig.job("take the pen", JobKind.GOAL)
    after = rig.job("take the box", JobKind.GOAL)
    rig.service.cancel(victim.job)
    assert victim.wait(1.0) is Outcome.CANCELED and victim.job.reason == "canceled"
    assert not victim.started.is_set() and not first.job.done.is_set()
    rig.fake.gate.set()
    assert first.wait() is Outcome.SUCCEEDED and after.wait() is Outcome.SUCCEEDED
    assert rig.out.texts() == ["take the cup", "take the box"]
    assert rig.fake.calls == ["take the cup", "take the box"]
    rig.service.cancel(after.job)  # after the end: ignored
    assert after.job.outcome is Outcome.SUCCEEDED and after.finished == 1


def test_cancel_between_stages_ends_canceled_at_the_next_stage(rig: Rig) -> None:
    rig.frame()
    goal = _block_on(rig, kind=JobKind.GOAL)  # blocked inside "proposing"
    rig.service.cancel(goal.job)
    assert not goal.job.done.is_set()  # a started stage finishes first
    rig.fake.gate.set()
    assert goal.wait() is Outcome.CANCELED
    assert Stage.DONE not in [s for s, _ in goal.feedback]
    assert rig.out.published == []
    again = rig.job("take the cup", JobKind.GOAL)
    assert again.wait() is Outcome.SUCCEEDED


def test_cancel_while_waiting_for_a_frame_ends_promptly() -> None:
    rig = Rig(ServiceSettings(max_image_age=0.0, command_wait_timeout=60.0))
    rig.service.load()
    rig.service.activate()
    try:
        goal = rig.job("take the cup", JobKind.GOAL)
        assert _until(lambda: goal.feedback[-1:] == [(Stage.WAITING, 0.0)])
        started = time.monotonic()
        rig.service.cancel(goal.job)
        assert goal.wait(2.0) is Outcome.CANCELED
        assert time.monotonic() - started < 1.0  # woken, not polled
        assert rig.out.published == []
    finally:
        assert rig.service.stop(5.0)


def test_continuous_mode_follows_the_newest_frame_until_stop(rig: Rig) -> None:
    rig.frame()
    # tracking off: a full query on every frame (the scripted core has no box prompts)
    rig.service.update_settings(ServiceSettings(continuous=True, max_image_age=0.0,
                                                command_wait_timeout=1.0, tracking=False))
    assert rig.job("take the cup").wait() is Outcome.SUCCEEDED
    rig.fake.gate.clear()
    rig.frame()  # following starts on frame 2 and blocks
    assert _until(lambda: len(rig.fake.calls) == 2)
    for _ in range(3):  # arrive while busy: only the newest is kept
        rig.frame()
    rig.fake.gate.set()
    assert _until(lambda: any(r.frame is not None and r.frame.seq == 5
                              for r in rig.out.published))
    time.sleep(0.2)
    followed = [r.frame.seq for r in rig.out.published if r.job is None and r.frame]
    assert followed == [2, 5]
    assert rig.service.stats.frames_replaced_unused == 2  # frames 3 and 4
    assert rig.job("stop").wait() is Outcome.SUCCEEDED
    rig.frame()
    time.sleep(0.2)
    assert len(rig.fake.calls) == 3


def test_frames_are_decoded_only_when_a_query_uses_them(rig: Rig) -> None:
    for _ in range(3):
        rig.frame()
    assert rig.decoded == []
    assert rig.job("take the cup").wait() is Outcome.SUCCEEDED
    assert rig.job("take the pen").wait() is Outcome.SUCCEEDED  # same frame: decoded once
    assert rig.decoded == [3]
    assert rig.service.stats.frames_replaced_unused == 2


def test_failed_inference_is_answered_and_the_worker_keeps_serving(rig: Rig) -> None:
    rig.frame()
    rig.fake.fail_next = True
    failed = rig.job("take the cup", JobKind.GOAL)
    assert failed.wait() is Outcome.SUCCEEDED
    reply = rig.reply_for(failed.job)
    assert reply.result is None and reply.reason == "inference failed: RuntimeError: boom"
    assert rig.service.stats.last_error.endswith("inference failed: RuntimeError: boom")
    ok = rig.job("take the cup")
    assert ok.wait() is Outcome.SUCCEEDED
    assert rig.reply_for(ok.job).result is not None


def test_command_without_an_object_is_answered_with_the_parsers_reason(rig: Rig) -> None:
    odd = rig.job("take the")
    assert odd.wait() is Outcome.SUCCEEDED
    reply = rig.reply_for(odd.job)
    assert reply.result is None and reply.target is None and reply.reason
    assert rig.fake.calls == []


def test_stop_aborts_queued_jobs_and_the_running_one_at_its_next_stage(rig: Rig) -> None:
    rig.frame()
    running = _block_on(rig, kind=JobKind.GOAL)
    queued = rig.job("take the pen", JobKind.GOAL)
    assert rig.service.stop(0.2) is False  # the inference still runs
    assert queued.job.outcome is Outcome.ABORTED and queued.job.reason == "node shutting down"
    rig.fake.gate.set()
    assert running.wait() is Outcome.ABORTED
    assert rig.service.stop(5.0) is True
    assert rig.service.state is ServiceState.STOPPED
    assert rig.out.published == []
    late = rig.job("take the box", JobKind.GOAL)
    assert late.job.outcome is Outcome.ABORTED
    assert all(r.finished == 1 for r in (running, queued, late))


def test_deactivate_ends_queued_jobs_refuses_new_ones_and_activate_serves_again(
        rig: Rig) -> None:
    rig.frame()
    running = _block_on(rig)
    queued = rig.job("take the pen", JobKind.GOAL)
    rig.service.deactivate()
    assert queued.job.outcome is Outcome.ABORTED and queued.job.reason == "node deactivated"
    assert rig.service.admit_goal() == "the locator is inactive"
    rig.fake.gate.set()
    assert running.wait() is Outcome.ABORTED  # nothing goes out once deactivated
    assert rig.out.published == []
    rig.service.activate()
    assert rig.job("take the cup").wait() is Outcome.SUCCEEDED


def test_unload_frees_the_locator_and_the_frame(rig: Rig) -> None:
    rig.frame()
    assert rig.job("take the cup").wait() is Outcome.SUCCEEDED
    assert rig.service.stop(5.0)
    rig.service.unload()
    assert rig.service.locator is None and rig.service.newest_frame is None
    assert rig.fake.cleared == 1
    rig.service.load()  # configure again
    rig.service.activate()
    again = rig.job("take the cup")
    again.wait()
    assert "no image received" in rig.reply_for(again.job).reason
