"""Pair each colour frame with its depth frame and camera_info, without ROS.

The pairing is made when a colour frame *arrives* (:meth:`FramePairer.open`) and lives
with that frame, so a query whose inference takes seconds still finds the depth frame
taken with its image, however many frames a 30 Hz camera sent in the meantime:

* A colour frame is paired with the depth frame whose stamp is closest to its own, within
  ``max_dt`` (a tie goes to the later one): from the depth frames buffered when it arrives
  (depth first) and from those arriving while its pairing is open (depth after colour).
  A pairing is *settled* once a depth frame stamped at or after the colour frame has
  arrived (none closer can follow); :meth:`FramePairer.resolve` waits, up to a deadline,
  for an unsettled pairing.
* Each depth frame carries its own camera_info: the one whose stamp is closest to the
  depth stamp within ``max_dt`` (drivers stamp both alike), else the camera_info in force
  when the depth frame arrived (publishers that send it once or with a zero stamp).
  A zoom or resolution change therefore applies from the frame it was stamped with.
* Stamps that go back by more than ``max_dt`` on a stream (a bag replayed with
  ``--loop``, a simulation reset) start a new timeline: everything that arrived before
  the first stream jumped back, or is stamped after the jump target (stragglers of the
  old pass), is dropped and those pairings stop improving. A new colour frame never takes
  a depth frame of the abandoned timeline, and pairing carries on in the new one, also
  when the streams jump back one after the other.

Memory stays bounded: ``capacity`` buffered depth frames and camera_infos, at most
``open_capacity`` open pairings (the oldest stops improving when more open), and a
pairing holds one depth message, referenced, never copied or converted here.

Subscription callbacks call ``add_depth`` / ``add_camera_info`` / ``open``; the worker
calls ``resolve``. All methods are thread-safe.
"""
from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, Optional, Set

# Seconds after a colour frame's arrival that a query waits for its depth frame (and
# camera_info) when the inference ended before they came: "depth slightly after colour".
DEPTH_WAIT_S = 0.25
# A depth frame stamped this far (or max_dt, if larger) after a colour frame settles its
# pairing; one even later (a straggler of a replay's previous pass) does not.
SETTLE_HORIZON_S = 1.0
# A camera_info stamped within this of the newest depth frame marks a stamped camera_info
# stream (worth waiting for); stamps further off are a static (latched, zero) publisher's.
STAMPED_INFO_WINDOW_S = 1.0


def stamp_to_seconds(stamp: Any) -> float:
    """Seconds from a builtin_interfaces/Time-like object (``sec`` + ``nanosec``) or a number."""
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return float(stamp)
    try:
        return float(stamp.sec) + float(stamp.nanosec) * 1e-9
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"not a time stamp (needs sec and nanosec): {stamp!r}") from e


@dataclass(frozen=True)
class StampedFrame:
    stamp: float  # seconds
    payload: Any


@dataclass(frozen=True)
class _Info:
    frame: StampedFrame
    seq: int  # arrival order (all streams)


@dataclass
class _Depth:
    """A buffered depth frame and its camera_info (guarded by the pairer's lock)."""

    frame: StampedFrame
    seq: int  # arrival order (all streams)
    info: Optional[StampedFrame] = None  # closest-stamped camera_info within max_dt
    info_in_force: Optional[StampedFrame] = None  # the latest one when the frame arrived


@dataclass(eq=False)
class Pairing:
    """One colour frame's pairing. Fields are guarded by the pairer's lock: read them
    through :meth:`FramePairer.resolve`."""

    color_stamp: float
    seq: int = 0  # arrival order (all streams)
    depth: Optional[_Depth] = None
    dt: float = math.inf  # |depth stamp - colour stamp|
    settled: bool = False  # a depth frame stamped at/after the colour frame arrived
    open: bool = True  # still offered new depth frames


@dataclass(frozen=True)
class DepthMatch:
    """What :meth:`FramePairer.resolve` found for a colour frame."""

    color_stamp: float
    depth: Optional[StampedFrame]  # None: no depth frame within max_dt
    camera_info: Any  # the depth frame's camera_info; None when none has been received
    info_by_stamp: bool  # camera_info matched by stamp, not "in force at arrival"
    settled: bool  # False: the deadline passed before a later depth frame came
    buffered: int  # depth frames buffered now (for messages)


class FramePairer:
    """Pairs colour frames with depth frames and camera_infos by stamp (see the module)."""

    def __init__(self, max_dt: float = 0.05, capacity: int = 10,
                 open_capacity: int = 32) -> None:
        if not (max_dt >= 0.0 and math.isfinite(max_dt)):
            raise ValueError(f"max_dt must be a finite number >= 0, got {max_dt}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if open_capacity < 1:
            raise ValueError(f"open_capacity must be >= 1, got {open_capacity}")
        self.max_dt = float(max_dt)
        self._depths: Deque[_Depth] = deque(maxlen=capacity)
        self._infos: Deque[_Info] = deque(maxlen=capacity)
        self._open: Deque[Pairing] = deque()
        self._open_capacity = open_capacity
        self._latest_info: Optional[StampedFrame] = None
        self._latest: Dict[str, float] = {}  # newest stamp per stream, for jump detection
        self._seq = 0  # arrivals so far, all streams
        self._timeline_seq = 0  # arrivals before this are of an abandoned timeline
        self._jumped: Set[str] = set()  # streams that jumped back into the current timeline
        self._info_stamped = False
        self._depth_seen = False
        self.jumps = 0  # backward time jumps seen (new timelines, not per stream)
        self._cond = threading.Condition()

    # ------------------------------------------------------------------ input
    def open(self, color_stamp: float) -> Pairing:
        """Pair a colour frame as it arrives; the pairing improves while depth arrives."""
        stamp = _finite(color_stamp)
        with self._cond:
            self._check_jump("color", stamp)
            pairing = Pairing(stamp, self._next_seq())
            for depth in self._depths:
                self._offer_depth(pairing, depth)
            if not pairing.settled:
                self._open.append(pairing)
                while len(self._open) > self._open_capacity:
                    self._open.popleft().open = False
            else:
                pairing.open = False
            self._cond.notify_all()
        return pairing

    def pair_buffered(self, color_stamp: float) -> Pairing:
        """A closed pairing from what is buffered now, for a colour frame that was not
        paired on arrival (it is not an arrival: no jump check, nothing registered)."""
        stamp = _finite(color_stamp)
        with self._cond:
            pairing = Pairing(stamp, self._seq, open=False)
            for depth in self._depths:
                self._offer_depth(pairing, depth)
        return pairing

    def add_depth(self, stamp: float, payload: Any) -> None:
        """Buffer a depth frame (the oldest drops out) and offer it to open pairings."""
        stamp = _finite(stamp)
        with self._cond:
            self._check_jump("depth", stamp)
            depth = _Depth(StampedFrame(stamp, payload), self._next_seq(),
                           info_in_force=self._latest_info)
            for info in self._infos:
                self._offer_info(depth, info.frame)
            if self._latest_info is not None:  # kept when a time jump cleared the buffer
                self._offer_info(depth, self._latest_info)
            self._depths.append(depth)
            self._depth_seen = True
            still_open: Deque[Pairing] = deque()
            for pairing in self._open:
                self._offer_depth(pairing, depth)
                if pairing.settled:
                    pairing.open = False
                else:
                    still_open.append(pairing)
            self._open = still_open
            self._cond.notify_all()

    def add_camera_info(self, stamp: float, info: Any) -> None:
        """Buffer a camera_info and give it to the depth frames it is stamped with."""
        stamp = _finite(stamp)
        with self._cond:
            self._check_jump("info", stamp)
            frame = StampedFrame(stamp, info)
            self._infos.append(_Info(frame, self._next_seq()))
            self._latest_info = frame
            newest_depth = self._latest.get("depth")
            self._info_stamped = (newest_depth is not None
                                  and abs(stamp - newest_depth) <= STAMPED_INFO_WINDOW_S)
            for depth in self._depths:
                self._offer_info(depth, frame)
            for pairing in self._open:
                if pairing.depth is not None:
                    self._offer_info(pairing.depth, frame)
            self._cond.notify_all()

    # ------------------------------------------------------------------ output
    def resolve(self, pairing: Pairing, wait_until: Optional[float] = None) -> DepthMatch:
        """The pairing's depth frame and camera_info.

        ``wait_until`` (a ``time.monotonic()`` time): until then, wait for a pairing that
        is not settled yet (its depth frame, or a stamped camera_info, may still come).
        No wait before the first depth frame: without a depth stream nothing will come.
        """
        with self._cond:
            while wait_until is not None and self._depth_seen and not self._complete(pairing):
                remaining = wait_until - time.monotonic()
                if remaining <= 0.0:
                    break
                self._cond.wait(remaining)
            depth = pairing.depth
            if depth is None:
                info = self._latest_info
                return DepthMatch(pairing.color_stamp, None,
                                  info.payload if info is not None else None, False,
                                  pairing.settled, len(self._depths))
            info = depth.info or depth.info_in_force or self._latest_info
            return DepthMatch(pairing.color_stamp, depth.frame,
                              info.payload if info is not None else None,
                              depth.info is not None, pairing.settled, len(self._depths))

    def __len__(self) -> int:
        """Depth frames buffered."""
        with self._cond:
            return len(self._depths)

    @property
    def open_pairings(self) -> int:
        with self._cond:
            return len(self._open)

    def clear(self) -> None:
        """Forget buffered depth frames and camera_infos; open pairings stop improving."""
        with self._cond:
            self._depths.clear()
            self._infos.clear()
            for pairing in self._open:
                pairing.open = False
            self._open.clear()
            self._latest_info = None
            self._latest.clear()
            self._jumped.clear()
            self._timeline_seq = self._seq
            self._info_stamped = False
            self._depth_seen = False
            self._cond.notify_all()

    # ------------------------------------------------------------------ internals (locked)
    def _offer_depth(self, pairing: Pairing, depth: _Depth) -> None:
        stamp = depth.frame.stamp
        dt = abs(stamp - pairing.color_stamp)
        if dt <= self.max_dt and (
                pairing.depth is None or dt < pairing.dt
                or (dt == pairing.dt and stamp > pairing.depth.frame.stamp)):
            pairing.depth, pairing.dt = depth, dt
        if 0.0 <= stamp - pairing.color_stamp <= max(self.max_dt, SETTLE_HORIZON_S):
            pairing.settled = True

    def _offer_info(self, depth: _Depth, info: StampedFrame) -> None:
        dt = abs(info.stamp - depth.frame.stamp)
        if dt > self.max_dt:
            return
        current = depth.info
        if current is None:
            depth.info = info
            return
        current_dt = abs(current.stamp - depth.frame.stamp)
        if dt < current_dt or (dt == current_dt and info.stamp >= current.stamp):
            depth.info = info

    def _complete(self, pairing: Pairing) -> bool:
        if pairing.open and not pairing.settled:
            return False
        depth = pairing.depth
        return depth is None or depth.info is not None or not self._info_stamped

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _check_jump(self, stream: str, stamp: float) -> None:
        """A stamp further back than max_dt on ``stream``: drop the old timeline."""
        newest = self._latest.get(stream)
        if newest is not None and stamp < newest - max(self.max_dt, 1e-3):
            self._jumped_back(stream, stamp)
        self._latest[stream] = stamp

    def _jumped_back(self, stream: str, stamp: float) -> None:
        if stream in self._jumped or not self._jumped:
            self.jumps += 1
            # The first stream to jump: what arrived so far is of the old timeline.
            # (A stream jumping again: the timeline it jumped into is abandoned too.)
            self._timeline_seq = self._seq + 1
            self._jumped = {stream}
        else:  # another stream following it: keep what arrived in the new timeline
            self._jumped.add(stream)
        limit = stamp + max(self.max_dt, 1e-3)

        def current(seq: int, frame_stamp: float) -> bool:
            return seq >= self._timeline_seq and frame_stamp <= limit

        self._depths = deque((d for d in self._depths if current(d.seq, d.frame.stamp)),
                             maxlen=self._depths.maxlen)
        self._infos = deque((i for i in self._infos if current(i.seq, i.frame.stamp)),
                            maxlen=self._infos.maxlen)
        still_open: Deque[Pairing] = deque()
        for pairing in self._open:
            if current(pairing.seq, pairing.color_stamp):
                still_open.append(pairing)
            else:  # of the abandoned timeline
                pairing.open = False
        self._open = still_open
        # Kept unless stamped after the jump: a camera_info sent once (or with a zero
        # stamp) still holds in the new timeline.
        if self._latest_info is not None and self._latest_info.stamp > limit:
            self._latest_info = None
        self._info_stamped = False
        self._cond.notify_all()


class PairingsByFrame:
    """Each colour frame's :class:`Pairing`, kept exactly as long as the frame object.

    Keyed by identity (a frame need not be hashable); a finaliser drops the entry when
    the frame is collected, so the node keeps the depth of the frame in its slot, of the
    query running and of the last query answered, and of nothing else.
    """

    def __init__(self) -> None:
        self._pairings: Dict[int, Pairing] = {}
        self._lock = threading.RLock()  # a finaliser may run in any thread, even re-entrantly

    def attach(self, frame: object, pairing: Pairing) -> None:
        key = id(frame)
        with self._lock:
            self._pairings[key] = pairing
        weakref.finalize(frame, self._drop, key, pairing)

    def get(self, frame: object) -> Optional[Pairing]:
        with self._lock:
            return self._pairings.get(id(frame))

    def _drop(self, key: int, pairing: Pairing) -> None:
        with self._lock:
            if self._pairings.get(key) is pairing:
                del self._pairings[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._pairings)


def _finite(stamp: float) -> float:
    value = float(stamp)
    if not math.isfinite(value):
        raise ValueError(f"stamp must be finite, got {stamp!r}")
    return value
