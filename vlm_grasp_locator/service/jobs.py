"""The service's work items and counters: frames, jobs (topic commands and action goals), stats.

No ROS imports: the ROS layer fills these in and the diagnostics read them.
"""
from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np


class Stage(str, enum.Enum):
    """Feedback stages of a job, in order; the values are the Locate action's wire strings.

    PROPOSING is skipped on a cached frame, POSE runs only with depth; PROPOSING and
    SCORING come from the core's stage callback.
    """

    WAITING = "waiting_for_image"
    PROPOSING = "proposing"
    SCORING = "scoring"
    POSE = "3d"
    DONE = "done"


PROGRESS_POSE = 0.95


class Outcome(enum.Enum):
    """How a job ended."""

    SUCCEEDED = "succeeded"  # answered (found or not) and published
    CANCELED = "canceled"  # its client canceled it; nothing published
    ABORTED = "aborted"  # the service was deactivated or stopped; nothing published
    DROPPED = "dropped"  # a topic command pushed out of a full queue; answered not-found


class JobKind(enum.Enum):
    COMMAND = "command"  # from the command topic: answered on the topics only
    GOAL = "goal"  # a locate action goal: also gets a result


class JobCanceled(Exception):
    """Raised inside a query (between stages) to stop it; nothing is published for it."""

    def __init__(self, reason: str, outcome: Outcome = Outcome.CANCELED) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


class Frame:
    """One camera frame in the slot; its RGB array is decoded on first use, at most once.

    ``header`` is the source message's header (opaque here; the answers carry it).
    ``seq`` is the frame's number, unique for the service's life: the frame's identity.
    ``context`` is whatever the caller keeps with the frame (the ROS layer: its depth
    pairing), alive exactly as long as the frame.
    """

    def __init__(self, seq: int, header: object, received: float,
                 decode: Callable[[], np.ndarray], context: object = None) -> None:
        self.seq = seq
        self.header = header
        self.received = received  # time.monotonic() at arrival
        self.context = context
        self.used = False  # a query ran on it
        self._decode: Optional[Callable[[], np.ndarray]] = decode
        self._rgb: Optional[np.ndarray] = None
        self._lock = threading.Lock()

    @property
    def rgb(self) -> np.ndarray:
        """HxWx3 uint8 RGB; decoded now if no query needed it before (ValueError if bad)."""
        with self._lock:
            if self._rgb is None:
                assert self._decode is not None
                self._rgb = self._decode()
                self._decode = None  # let the source message go
            return self._rgb

    @property
    def decoded(self) -> bool:
        return self._rgb is not None

    def __repr__(self) -> str:
        return f"Frame(seq={self.seq}, received={self.received:.3f}, used={self.used})"


Feedback = Callable[[Stage, float], None]
JobHook = Callable[["Job"], None]


def _no_feedback(stage: Stage, progress: float) -> None:
    return None


def _no_hook(job: "Job") -> None:
    return None


@dataclass(eq=False)  # identity: a job is found in the queue by itself, not by its text
class Job:
    """One command to answer exactly once: from the ``command`` topic, or an action goal.

    ``feedback`` hears the stages; ``on_start`` runs in the worker when it takes the job,
    ``on_finish`` once when the job ended (both outside the service's lock). ``answer``
    is what the outputs rendered for a SUCCEEDED or DROPPED job (opaque to the service).
    """

    text: str
    kind: JobKind = JobKind.COMMAND
    received: float = field(default_factory=time.monotonic)
    feedback: Feedback = _no_feedback
    on_start: JobHook = _no_hook
    on_finish: JobHook = _no_hook
    outcome: Optional[Outcome] = None
    reason: str = ""  # why it ended without an answer (CANCELED, ABORTED)
    answer: object = None
    done: threading.Event = field(default_factory=threading.Event)
    _cancel: threading.Event = field(default_factory=threading.Event)
    _progress: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def is_goal(self) -> bool:
        return self.kind is JobKind.GOAL

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def request_cancel(self) -> None:
        self._cancel.set()

    def report(self, stage: Stage, progress: float) -> None:
        """Feedback with a progress that never goes backwards."""
        self._progress = max(self._progress, float(progress))
        self.feedback(stage, self._progress)

    def finish(self, outcome: Outcome, *, reason: str = "", answer: object = None) -> bool:
        """Record how the job ended, once (later calls are ignored: False); runs on_finish."""
        with self._lock:
            if self.done.is_set():
                return False
            self.outcome, self.reason, self.answer = outcome, reason, answer
            self.done.set()
        self.on_finish(self)
        return True

    def wait(self, timeout_s: Optional[float] = None) -> bool:
        return self.done.wait(timeout_s)


@dataclass
class NodeStats:
    """Counters and the last query's figures, for /diagnostics (updated under a lock)."""

    frames_received: int = 0
    frames_bad: int = 0
    frames_replaced_unused: int = 0
    commands_answered: int = 0
    goals_rejected: int = 0
    tracking_state: str = "idle"  # continuous mode: idle, tracking or lost
    track_id: str = ""
    frames_tracked: int = 0  # frames followed by a box prompt (all tracks)
    reacquisitions: int = 0  # lost tracks found again with their id (all tracks)
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

    def set_timings(self, timings_ms: Dict[str, float]) -> None:
        with self.lock:
            self.last_timings_ms = dict(timings_ms)

    @property
    def frames_dropped(self) -> int:
        return self.frames_bad + self.frames_replaced_unused
