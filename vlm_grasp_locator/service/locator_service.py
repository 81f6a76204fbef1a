"""LocatorService: answers commands on camera frames with one worker thread, without ROS.

Frames go into a one-frame slot (the newest replaces the last; decoded only when a query
uses it). Jobs (topic commands and action goals) wait in one FIFO of ``queue_size``
entries: when it is full, the oldest queued topic command is dropped (answered
not-found), and new goals are refused through :meth:`LocatorService.admit_goal`. One
worker answers each job exactly once, in order, on the newest frame at most
``max_image_age`` old (waiting up to ``command_wait_timeout`` for one); jobs that arrived
while a query ran are answered on that query's frame, from the core's per-frame cache.
In continuous mode the last topic command is located again on every new frame (latest
wins, frames skipped while busy). A job can be canceled while queued, while it waits for
a frame and between stages.

The ROS layer supplies the locator (``locator_factory``), the outputs (:class:`Outputs`:
renders a :class:`Reply` into messages, then publishes them) and a logger; it drives the
states: :meth:`~LocatorService.load` -> :meth:`~LocatorService.activate` ->
:meth:`~LocatorService.deactivate` -> :meth:`~LocatorService.stop` ->
:meth:`~LocatorService.unload`.
"""
from __future__ import annotations

import collections
import enum
import gc
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Deque, Dict, Optional, Protocol, Tuple, Union

import numpy as np

from vlm_grasp_locator.core.command_parser import is_stop_command
from vlm_grasp_locator.core.referring import ReferringCommand, parse_referring
from vlm_grasp_locator.runtime.memory import release_freed_memory
from vlm_grasp_locator.service.jobs import (
    Frame,
    Job,
    JobCanceled,
    NodeStats,
    Outcome,
    Stage,
)

if TYPE_CHECKING:  # the pipeline imports torch: only its types are needed here
    from vlm_grasp_locator.pipeline.locator import LocateResult
    from vlm_grasp_locator.pipeline.tracking import Tracker, TrackResult

QUEUE_SIZE = 8  # queued topic commands and action goals together
# pipeline.tracking.TrackEvent values (that module imports torch; the service need not)
TRACKED, REACQUIRED = "tracked", "reacquired"
THROTTLE_S = 5.0  # repeated warnings of one kind are logged at most this often


class LocatorLike(Protocol):
    """What the service needs of the core (``pipeline.locator.Locator``).

    ``locate`` gets the frame's number as ``frame_key``, its cache key (no hashing of
    the pixels).
    """

    @property
    def random_weights(self) -> bool: ...

    @property
    def device(self) -> object: ...

    def locate(self, image: np.ndarray, command: Union[str, ReferringCommand], *,
               on_stage: Optional[Callable[[str, float], None]] = None,
               frame_key: Optional[int] = None) -> "LocateResult": ...

    def clear_cache(self) -> None: ...


LocatorFactory = Callable[[], LocatorLike]


class ServiceLog(Protocol):
    """A logger (rclpy's and Python's both fit)."""

    def debug(self, message: str) -> None: ...

    def info(self, message: str) -> None: ...

    def warning(self, message: str) -> None: ...

    def error(self, message: str) -> None: ...


@dataclass(frozen=True)
class ServiceSettings:
    """The settings that may change while the service runs."""

    continuous: bool = False
    max_image_age: float = 2.0  # seconds; 0 disables the check
    command_wait_timeout: float = 2.0  # seconds
    # Continuous mode follows the object by one box prompt a frame (``pipeline.tracking``;
    # its TrackSettings fields): on/off, the crop score and jump limits, re-acquisition.
    tracking: bool = True
    track_min_score: float = 0.2
    track_max_area_ratio: float = 2.0
    track_min_iou: float = 0.3
    track_reacquire_window: float = 2.0


class ServiceState(enum.Enum):
    UNLOADED = "unloaded"  # no locator, no worker
    INACTIVE = "inactive"  # loaded, worker running; jobs are refused, nothing published
    ACTIVE = "active"  # answering
    STOPPING = "stopping"  # the worker is told to end (an inference may still run)
    STOPPED = "stopped"  # the worker ended; the locator is still loaded


@dataclass(frozen=True)
class Reply:
    """One answer to publish: on ``frame`` (its header), found or not.

    ``job`` is None for a continuous-mode frame. ``frame`` is the frame answered on, or,
    when no query ran, the newest frame (None before the first). ``result`` is None for
    an answer without inference; ``reason`` then says why nothing was found.
    """

    text: str
    job: Optional[Job]
    frame: Optional[Frame]
    target: Optional[str] = None
    result: Optional["LocateResult"] = None
    reason: str = ""
    random_weights: bool = False
    track: Optional["TrackInfo"] = None  # continuous mode: the followed object's track


@dataclass(frozen=True)
class TrackInfo:
    """The track a continuous-mode answer belongs to (``pipeline.tracking``)."""

    track_id: str  # stable while the same object is followed; "" when there is none
    status: str  # tracking, lost or idle
    event: str  # started, tracked, reacquired, lost, searching, expired, not found


class Outputs(Protocol):
    """Where answers go (the ROS layer's publishers)."""

    def render(self, reply: Reply) -> object:
        """Build the messages of ``reply`` (may report :attr:`Stage.POSE` to its job)."""

    def publish(self, rendered: object) -> None:
        """Send what :meth:`render` built (called only while the service is active)."""


class Notice(enum.Enum):
    """Kinds of repeated warnings, each throttled on its own."""

    NOT_ACTIONABLE = enum.auto()
    NO_FRAME = enum.auto()
    QUEUE_FULL = enum.auto()
    ERROR = enum.auto()


@dataclass(frozen=True)
class _LastQuery:
    frame: Frame
    answered: float  # time.monotonic()


def short(text: str, limit: int = 60) -> str:
    """A log-safe rendering of untrusted text."""
    return repr(text[:limit]) + (f"... ({len(text)} chars)" if len(text) > limit else "")


def _free_accelerator_memory() -> None:
    torch = sys.modules.get("torch")  # only when the locator brought it in
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class LocatorService:
    """The job queue, the frame slot and the worker around one locator."""

    def __init__(self, locator_factory: LocatorFactory, outputs: Outputs, log: ServiceLog, *,
                 settings: ServiceSettings = ServiceSettings(),
                 stats: Optional[NodeStats] = None, queue_size: int = QUEUE_SIZE,
                 throttle_s: float = THROTTLE_S) -> None:
        self._factory = locator_factory
        self._outputs = outputs
        self._log = log
        self._settings = settings
        self.stats = stats if stats is not None else NodeStats()
        self.queue_size = queue_size
        self._throttle_s = throttle_s
        self._noticed: Dict[Notice, float] = {}

        self._cond = threading.Condition()
        # Held while answers go out and while the state changes: nothing is published
        # after deactivate() or stop() returned.
        self._output_lock = threading.Lock()
        self._state = ServiceState.UNLOADED
        self._locator: Optional[LocatorLike] = None
        self._worker: Optional[threading.Thread] = None
        self._source = "image"
        self._frame: Optional[Frame] = None
        self._seq = 0
        self._jobs: Deque[Job] = collections.deque()
        self._track: Optional[str] = None  # continuous mode: the command followed
        self._tracker: Optional["Tracker"] = None  # ... and the object it found
        self._track_seq = 0  # the last frame located for it
        self._last_query: Optional[_LastQuery] = None
        self._trim_due = False  # an inference ran: give freed memory back when idle

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> ServiceState:
        return self._state

    @property
    def settings(self) -> ServiceSettings:
        return self._settings

    @property
    def locator(self) -> Optional[LocatorLike]:
        return self._locator

    @property
    def queue_length(self) -> int:
        with self._cond:
            return len(self._jobs)

    @property
    def newest_frame(self) -> Optional[Frame]:
        return self._frame

    def load(self) -> None:
        """Create the locator (whatever the factory raises propagates) and start the worker."""
        if self._state is not ServiceState.UNLOADED:
            raise RuntimeError(f"load() while {self._state.value}")
        locator = self._factory()
        with self._cond:
            self._locator = locator
            self._state = ServiceState.INACTIVE
        # A daemon: SIGINT must not wait for an inference to finish.
        self._worker = threading.Thread(target=self._work, name="locator_worker", daemon=True)
        self._worker.start()

    def activate(self, source: str = "image") -> None:
        """Accept jobs and publish answers; ``source`` names the frames' origin in reasons."""
        with self._output_lock, self._cond:
            if self._state is not ServiceState.INACTIVE:
                raise RuntimeError(f"activate() while {self._state.value}")
            self._source = source
            self._state = ServiceState.ACTIVE
            self._cond.notify_all()

    def deactivate(self) -> None:
        """No more answers: queued jobs end ABORTED, a running one at its next stage."""
        with self._output_lock, self._cond:
            if self._state is ServiceState.ACTIVE:
                self._state = ServiceState.INACTIVE
            pending = self._take_queue()
        for job in pending:
            self._end(job, Outcome.ABORTED, "node deactivated")

    def stop(self, timeout_s: float = 1.0) -> bool:
        """Stop the worker (queued jobs end ABORTED); False when an inference still runs
        after ``timeout_s`` (it ends at its next stage; call again)."""
        with self._output_lock, self._cond:
            if self._state is not ServiceState.UNLOADED:
                self._state = ServiceState.STOPPING
            pending = self._take_queue()
        for job in pending:
            self._end(job, Outcome.ABORTED, "node shutting down")
        worker = self._worker
        if worker is not None:
            worker.join(timeout_s)
            if worker.is_alive():
                return False
        with self._cond:
            self._worker = None
            if self._state is ServiceState.STOPPING:
                self._state = ServiceState.STOPPED
        return True

    def unload(self) -> None:
        """After :meth:`stop`: drop the locator, its cache and the frames."""
        if self._worker is not None:
            raise RuntimeError("unload() while the worker runs: stop() first")
        with self._cond:
            locator, self._locator = self._locator, None
            self._frame = None
            self._last_query = None
            self._state = ServiceState.UNLOADED
        if locator is not None:
            locator.clear_cache()
        del locator
        gc.collect()
        _free_accelerator_memory()

    def update_settings(self, settings: ServiceSettings) -> None:
        with self._cond:
            self._settings = settings
            if not settings.continuous:
                self._track = self._tracker = None
            self._cond.notify_all()

    def _take_queue(self) -> list:
        """Empty the queue and stop following (under the lock)."""
        pending = list(self._jobs)
        self._jobs.clear()
        self._track = self._tracker = None
        self._cond.notify_all()
        return pending

    # ------------------------------------------------------------------ input
    def put_frame(self, header: object, decode: Callable[[], np.ndarray], *,
                  context: object = None, received: Optional[float] = None) -> Frame:
        """Put a frame in the slot (replacing the last); ``decode`` runs on first use.

        ``context`` travels with the frame (the ROS layer keeps its depth pairing there).
        """
        now = time.monotonic() if received is None else received
        with self._cond:
            if self._frame is not None and not self._frame.used:
                self.stats.add("frames_replaced_unused")
            self._seq += 1
            frame = Frame(self._seq, header, now, decode, context=context)
            self._frame = frame
            self._cond.notify_all()
        return frame

    def admit_goal(self) -> Optional[str]:
        """Why a new goal is refused now, or None to accept it."""
        with self._cond:
            if self._state is not ServiceState.ACTIVE:
                return f"the locator is {self._state.value}"
            if len(self._jobs) >= self.queue_size:
                return f"queue full ({len(self._jobs)} commands and goals waiting)"
        return None

    def submit(self, job: Job) -> None:
        """Queue ``job``; a goal was admitted before (:meth:`admit_goal`). When the queue is
        full, the oldest queued topic command is dropped, or this command when the queue
        holds only goals."""
        dropped: Optional[Job] = None
        with self._cond:
            active = self._state is ServiceState.ACTIVE
            if active:
                if len(self._jobs) >= self.queue_size and not job.is_goal:
                    dropped = next((j for j in self._jobs if not j.is_goal), job)
                    if dropped is not job:
                        self._jobs.remove(dropped)
                if dropped is not job:
                    self._jobs.append(job)
                self._cond.notify_all()
        if not active:
            self._end(job, Outcome.ABORTED, f"node is {self._state.value}")
        elif dropped is not None:
            why = ("superseded by newer commands" if dropped is not job
                   else "the queue holds only action goals")
            self._warn(Notice.QUEUE_FULL, f"command queue full: dropping {short(dropped.text)}")
            self._drop(dropped, f"dropped: command queue full, {why}")

    def cancel(self, job: Job) -> None:
        """Cancel ``job``: at once while queued, else at its next stage or while it waits
        for a frame (ends CANCELED, nothing published). Ignored once it ended."""
        job.request_cancel()
        with self._cond:
            queued = job in self._jobs
            if queued:
                self._jobs.remove(job)
            self._cond.notify_all()
        if queued:
            self._end(job, Outcome.CANCELED, "canceled")

    # ------------------------------------------------------------------ worker
    def _tracking_due(self) -> bool:
        return (self._track is not None and self._frame is not None
                and self._frame.seq > self._track_seq)

    def _has_work(self) -> bool:
        return bool(self._state is ServiceState.STOPPING or self._jobs or self._tracking_due())

    def _work(self) -> None:
        """Answer queued jobs in order; in continuous mode follow the target on new frames."""
        while True:
            with self._cond:
                idle = not self._has_work()
            if idle and self._trim_due:
                self._trim_due = False
                release_freed_memory()
            with self._cond:
                while not self._has_work():
                    self._cond.wait()
                if self._state is ServiceState.STOPPING:
                    return
                job = self._jobs.popleft() if self._jobs else None
                frame: Optional[Frame] = None
                track: Optional[str] = None
                tracker = self._tracker
                if job is None:
                    frame, track = self._frame, self._track
                    assert frame is not None and track is not None
                    self._track_seq = frame.seq
            if job is not None:
                self._run_job(job)
                continue
            assert frame is not None and track is not None
            try:
                if tracker is not None:
                    self._follow(frame, tracker)
                else:
                    self._locate(frame, track, None, None)
            except JobCanceled:
                pass  # deactivated or stopping: following ends quietly
            except Exception as e:  # noqa: BLE001 - one bad frame must not stop the worker
                self._error(f"worker: {type(e).__name__}: {e}")

    def _run_job(self, job: Job) -> None:
        """Answer ``job`` exactly once, whatever happens."""
        try:
            job.on_start(job)
            self._check(job)
            self._answer(job)
        except JobCanceled as e:
            self._end(job, e.outcome, e.reason)
        except Exception as e:  # noqa: BLE001 - one bad job must not stop the worker
            reason = f"internal error: {type(e).__name__}: {e}"
            self._error(f"command {short(job.text)}: {reason}")
            if not job.done.is_set():
                try:
                    self._reply(Reply(job.text, job, self._frame, reason=reason))
                except JobCanceled as canceled:
                    self._end(job, canceled.outcome, canceled.reason)
        finally:
            if not job.done.is_set():
                self._end(job, Outcome.ABORTED, "node shutting down")

    def _check(self, job: Optional[Job]) -> None:
        """Raise JobCanceled when the job's client canceled or the service stops answering."""
        state = self._state
        if state is ServiceState.STOPPING:
            raise JobCanceled("node shutting down", Outcome.ABORTED)
        if state is not ServiceState.ACTIVE:
            raise JobCanceled("node deactivated", Outcome.ABORTED)
        if job is not None and job.cancel_requested:
            raise JobCanceled("canceled")

    def _answer(self, job: Job) -> None:
        text = job.text
        job.report(Stage.WAITING, 0.0)
        if not job.is_goal and (not text.strip() or is_stop_command(text)):
            with self._cond:
                track, self._track, self._tracker = self._track, None, None
            if track is not None:
                self._log.info(f"stopped following {short(track)}")
        parsed = parse_referring(text)
        target = parsed.targets[0].phrase if parsed.targets else None
        if target is None:
            reason = parsed.reason or "no target in command"
            self._warn(Notice.NOT_ACTIONABLE, f"command {short(text)} not actionable: {reason}")
            self._reply(Reply(text, job, self._frame, reason=reason))
            return
        self._log.info(f"{'goal' if job.is_goal else 'command'} {short(text)} "
                       f"-> target {target!r}")
        frame, why = self._wait_for_frame(job)
        if frame is None:
            self._warn(Notice.NO_FRAME, f"command {short(text)}: {why}")
            self._reply(Reply(text, job, self._frame, target, reason=why))
            return
        result = self._locate(frame, parsed, target, job)
        with self._cond:
            if self._settings.continuous and not job.is_goal:
                self._track = text
                self._track_seq = frame.seq
                self._tracker = self._start_tracker(text, result, frame)

    def _wait_for_frame(self, job: Job) -> Tuple[Optional[Frame], str]:
        """The newest frame within max_image_age, waiting up to command_wait_timeout.

        A job that arrived before the last query finished (it waited while that query
        ran) is answered on that query's frame instead, from the core's cache: a backlog
        then drains in milliseconds after one inference instead of one inference per
        job, and no answer uses a frame older than max_image_age plus one inference.
        """
        settings = self._settings
        deadline = time.monotonic() + settings.command_wait_timeout
        with self._cond:
            last = self._last_query
            if last is not None and job.received <= last.answered:
                return last.frame, ""
            while True:
                frame, now = self._frame, time.monotonic()
                max_age = self._settings.max_image_age
                if frame is not None and (max_age <= 0 or now - frame.received <= max_age):
                    return frame, ""
                self._check(job)
                if now >= deadline:
                    break
                self._cond.wait(deadline - now)  # woken by frames, cancels and stops
        wait = f"command_wait_timeout={settings.command_wait_timeout:g} s"
        if frame is None:
            return None, f"no image received on '{self._source}' (waited {wait})"
        return None, (f"latest image on '{self._source}' is {now - frame.received:.1f} s old "
                      f"(max_image_age={max_age:g} s) and no newer one arrived within {wait}")

    def _locate(self, frame: Frame, command: Union[str, ReferringCommand],
                target: Optional[str], job: Optional[Job]) -> Optional["LocateResult"]:
        """Run the core on ``frame`` and publish the answer (not-found if the core raises).

        ``command``: the text, or what ``parse_referring`` made of it (not parsed again).
        ``job``: answer that job (with feedback and cancel between stages); None for a
        continuous-mode frame. Returns the core's result (None when it failed).
        """
        text = command if isinstance(command, str) else command.command

        def on_stage(name: str, progress: float) -> None:
            self._check(job)
            if job is not None:
                try:
                    stage = Stage(name)
                except ValueError:  # a stage the action does not report
                    return
                job.report(stage, progress)

        locator = self._locator
        assert locator is not None
        frame.used = True
        self._trim_due = True
        try:
            rgb = frame.rgb
            result = locator.locate(rgb, command, on_stage=on_stage, frame_key=frame.seq)
        except JobCanceled:
            raise
        except Exception as e:  # noqa: BLE001 - answered not-found; the service keeps serving
            reason = f"inference failed: {type(e).__name__}: {e}"
            self._error(f"command {short(text)}: {reason}")
            self._reply(Reply(text, job, frame, target, reason=reason,
                              random_weights=locator.random_weights))
            return None
        with self._cond:
            self._last_query = _LastQuery(frame, time.monotonic())
        self._check(job)
        self.stats.set_timings(result.timings_ms or {})
        self._reply(Reply(text, job, frame, result.target, result,
                          random_weights=locator.random_weights))
        total = (result.timings_ms or {}).get("total", float("nan"))
        if result.found and result.detections:
            best = result.detections[0]
            box = ", ".join(f"{v:.0f}" for v in best.box_xyxy)
            line = (f"{result.target!r}: score {best.score:.2f} box [{box}] "
                    f"({len(result.detections)} detections, {total:.0f} ms)")
        else:
            line = f"{result.target!r} not found: {result.reason} ({total:.0f} ms)"
        # Continuous mode answers every frame: keep those at debug level.
        if job is not None:
            self._log.info(line)
        else:
            self._log.debug(line)
        return result

    # ------------------------------------------------------------------ tracking
    def _start_tracker(self, text: str, result: Optional["LocateResult"],
                       frame: Frame) -> Optional["Tracker"]:
        """Continuous mode with tracking: follow what ``result`` found on ``frame``."""
        settings = self._settings
        if not settings.tracking or result is None:
            return None
        from vlm_grasp_locator.pipeline.tracking import Tracker, TrackSettings

        tracker = Tracker(self._locator, text, TrackSettings(
            min_score=settings.track_min_score,
            max_area_ratio=settings.track_max_area_ratio,
            min_iou=settings.track_min_iou,
            reacquire_window_s=settings.track_reacquire_window))
        self._note_track(tracker.start(result, stamp_s=frame.received))
        return tracker

    def _follow(self, frame: Frame, tracker: "Tracker") -> None:
        """One continuous-mode frame with a tracker: a box prompt and a crop score, or a
        full query when the track is lost; answered like any other frame."""
        from vlm_grasp_locator.pipeline.locator import LocateResult

        locator = self._locator
        assert locator is not None
        frame.used = True
        self._trim_due = True
        try:
            rgb = frame.rgb
            step = tracker.step(rgb, stamp_s=frame.received, frame_key=frame.seq)
        except Exception as e:  # noqa: BLE001 - answered not-found; following goes on
            reason = f"inference failed: {type(e).__name__}: {e}"
            self._error(f"following {short(tracker.command)}: {reason}")
            self._reply(Reply(tracker.command, None, frame, reason=reason,
                              random_weights=locator.random_weights))
            return
        with self._cond:
            self._last_query = _LastQuery(frame, time.monotonic())
        self._note_track(step)
        self.stats.set_timings(step.timings_ms)
        height, width = rgb.shape[:2]
        located = step.located
        target = located.target if located is not None else (
            step.state.phrase if step.state is not None else None)
        found = step.detection is not None
        result = LocateResult(
            tracker.command, target, found, "" if found else step.reason, (width, height),
            [step.detection] if found else [], dict(step.timings_ms),
            explanation=step.reason if found else "")
        info = TrackInfo(step.track_id or "", step.status.value, step.event.value)
        self._reply(Reply(tracker.command, None, frame, target, result,
                          random_weights=locator.random_weights, track=info))
        self._log.debug(f"{target!r}: track {info.track_id or '-'} {info.event}"
                        f"{': ' + step.reason if step.reason else ''}")

    def _note_track(self, step: "TrackResult") -> None:
        stats = self.stats
        with stats.lock:
            stats.tracking_state = step.status.value
            stats.track_id = step.track_id or ""
            if step.event.value == TRACKED:
                stats.frames_tracked += 1
            elif step.event.value == REACQUIRED:
                stats.reacquisitions += 1

    # ------------------------------------------------------------------ output
    def _publish(self, rendered: object) -> None:
        with self._output_lock:
            self._check(None)
            self._outputs.publish(rendered)

    def _reply(self, reply: Reply) -> None:
        """Render and publish ``reply``; its job ends SUCCEEDED."""
        job = reply.job
        rendered = self._outputs.render(reply)
        if job is not None:
            job.report(Stage.DONE, 1.0)
        self._publish(rendered)
        if job is not None:
            self.stats.add("commands_answered")
            job.finish(Outcome.SUCCEEDED, answer=rendered)

    def _drop(self, job: Job, reason: str) -> None:
        """Answer a command pushed out of the queue not-found (ends DROPPED)."""
        try:
            rendered = self._outputs.render(Reply(job.text, None, self._frame, reason=reason))
            self._publish(rendered)
        except JobCanceled as e:
            self._end(job, e.outcome, e.reason)
            return
        self.stats.add("commands_answered")
        job.finish(Outcome.DROPPED, reason=reason, answer=rendered)

    def _end(self, job: Job, outcome: Outcome, reason: str) -> None:
        """End ``job`` without an answer on the outputs."""
        if job.finish(outcome, reason=reason) and job.is_goal:
            self._log.info(f"goal {short(job.text)} ended: {reason}")

    def _warn(self, notice: Notice, text: str) -> None:
        now = time.monotonic()
        with self._cond:
            last = self._noticed.get(notice)
            if last is not None and now - last < self._throttle_s:
                return
            self._noticed[notice] = now
        self._log.warning(text)

    def _error(self, text: str) -> None:
        self.stats.error(text)
        now = time.monotonic()
        with self._cond:
            last = self._noticed.get(Notice.ERROR)
            if last is not None and now - last < self._throttle_s:
                return
            self._noticed[Notice.ERROR] = now
        self._log.error(text)
