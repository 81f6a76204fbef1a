"""The node's work items and counters: frames, jobs (topic commands and action goals), stats.

No ROS imports: the node fills these in and the diagnostics read them.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np

# Feedback stages of the Locate action, in order ("proposing" is skipped on a cached
# frame, "3d" runs only with use_depth). "proposing"/"scoring" come from the core.
STAGE_WAITING = "waiting_for_image"
STAGE_3D = "3d"
STAGE_DONE = "done"
PROGRESS_3D = 0.95

# How a job ended.
SUCCEEDED = "succeeded"
CANCELED = "canceled"
ABORTED = "aborted"

Feedback = Callable[[str, float], None]


class JobCanceled(Exception):
    """Raised inside a query (between stages) to stop it; nothing is published for it."""

    def __init__(self, reason: str, outcome: str = CANCELED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


@dataclass
class Frame:
    """The newest usable camera frame."""

    seq: int
    header: Any
    rgb: np.ndarray
    received: float  # time.monotonic() at arrival
    used: bool = False  # a query ran on it


@dataclass(eq=False)  # identity: a job is found in the queue by itself, not by its text
class Job:
    """One command to answer once: from the ``command`` topic, or an action goal.

    For a goal, ``cancel_requested`` tells whether the client asked to cancel and
    ``feedback`` publishes a stage; the action glue waits on ``done`` for the answer.
    """

    text: str
    received: float
    is_goal: bool = False
    cancel_requested: Callable[[], bool] = lambda: False
    feedback: Feedback = lambda stage, progress: None
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str = ""
    target_msg: Any = None  # the GraspTarget answering the job
    _progress: float = 0.0

    def report(self, stage: str, progress: float) -> None:
        """Feedback with a progress that never goes backwards."""
        self._progress = max(self._progress, float(progress))
        self.feedback(stage, self._progress)

    def finish(self, outcome: str, target_msg: Any) -> None:
        """Record the answer once; later calls are ignored."""
        if self.done.is_set():
            return
        self.outcome, self.target_msg = outcome, target_msg
        self.done.set()


@dataclass
class NodeStats:
    """Counters and the last query's figures, for /diagnostics (updated under a lock)."""

    frames_received: int = 0
    frames_bad: int = 0
    frames_replaced_unused: int = 0
    commands_answered: int = 0
    goals_rejected: int = 0
    last_timings_ms: Dict[str, float] = field(default_factory=dict)
    last_error: str = ""
    last_error_time: Optional[float] = None  # time.monotonic()
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def error(self, text: str) -> None:
        with self.lock:
            self.last_error, self.last_error_time = text, time.monotonic()

    def add(self, name: str, count: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + count)

    @property
    def frames_dropped(self) -> int:
        return self.frames_bad + self.frames_replaced_unused
